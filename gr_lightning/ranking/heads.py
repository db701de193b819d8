"""Multi-task prediction head of generative ranking (HSTU paper, Sec. 4.2): an MLP with one output per task."""

from __future__ import annotations

from torch import Tensor, nn


class MultiTaskHead(nn.Module):
    """``LayerNorm -> [Linear -> SiLU -> Dropout]* -> Linear(num_tasks)``.

    Args:
        dim: Input width (the backbone's).
        num_tasks: Outputs (one logit or regression value per task).
        hidden_dims: Widths of the hidden layers.
        dropout: Dropout after each hidden layer.

    """

    def __init__(self, dim: int, num_tasks: int, hidden_dims: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(dim)]
        width = dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.SiLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_tasks))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(M, dim)`` -> ``(M, num_tasks)``."""
        return self.mlp(x)
