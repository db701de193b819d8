"""Input encoding of item tokens: ``x0 = E[id] * sqrt(D) + P[pos]``, then dropout (HSTU paper, Sec. 4.1)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from gr_lightning.ops import seq_index


class PositionalInputEncoder(nn.Module):
    """Scale token embeddings and add a learned absolute position embedding.

    Positions count from the oldest kept event of each sequence (0-based), as in the reference trainer.

    Args:
        dim: Embedding width D.
        max_seq_len: Number of learned positions.
        dropout: Dropout on the encoded input.

    """

    def __init__(self, dim: int, max_seq_len: int, dropout: float) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        self.max_seq_len = max_seq_len
        self.position = nn.Embedding(max_seq_len, dim)
        self.dropout = dropout
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, embeddings: Tensor, offsets: Tensor) -> Tensor:
        """Encode jagged ``embeddings`` ``(sum_N, D)`` given ``offsets`` ``(B+1,)``."""
        _, pos = seq_index(offsets, embeddings.shape[0])  # (sum_N,)
        x = embeddings * self.scale + self.position(pos.clamp(max=self.max_seq_len - 1))
        return F.dropout(x, self.dropout, self.training)
