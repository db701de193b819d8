"""SASRec (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation"): the softmax baseline.

Pre-LayerNorm causal multi-head self-attention and a ReLU feed-forward of width D per block, a final
LayerNorm, as in the baselines of the HSTU paper (Section 4.1.1). Sequences are right-padded to the
batch maximum for ``scaled_dot_product_attention``; with right padding the causal mask alone keeps
every real row from seeing padding, and padded rows are dropped on the way back to jagged layout.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gr_lightning.ops import jagged_to_padded, padded_to_jagged
from gr_lightning.zoo import Backbone


class _SASRecBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, N, self.num_heads, D // self.num_heads).transpose(1, 2) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, N, D/H)
        x = x + F.dropout(self.proj(attn.transpose(1, 2).reshape(B, N, D)), self.dropout, self.training)
        return x + F.dropout(self.ffn(self.ffn_norm(x)), self.dropout, self.training)


class SASRec(Backbone):
    """Causal softmax transformer baseline.

    Args:
        dim: Model width D (supplied by the model).
        max_seq_len: Longest sequence (linked from the DataModule; unused by the attention itself).
        num_blocks: Number of blocks (2 on ML-1M, 4 elsewhere in the paper's baselines).
        num_heads: Attention heads.
        dropout: Dropout on attention weights, residual branches and inside the feed-forward.

    """

    description = "SASRec (Kang & McAuley 2018): causal softmax self-attention baseline"

    def __init__(self, dim: int, max_seq_len: int, num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__(dim, max_seq_len)
        self.blocks = nn.ModuleList(_SASRecBlock(dim, num_heads, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor,
                query_times: Tensor | None = None, *, num_targets: Tensor | None = None,
                num_contextual: int = 0) -> Tensor:
        """Encode jagged sequences; see :meth:`Backbone.forward` (timestamps are not used).

        Raises:
            NotImplementedError: ``num_targets`` or ``num_contextual`` is set: SASRec is causal only, so it
                cannot serve as a ranking backbone with candidates or a contextual prefix.

        """
        if num_targets is not None or num_contextual:
            raise NotImplementedError("SASRec supports only the causal mask; ranking with candidates "
                                      "(num_targets) or a contextual prefix needs a backbone such as HSTU")
        total = x.shape[0]
        h = jagged_to_padded(x, offsets, max_len)  # (B, N, D)
        for block in self.blocks:
            h = block(h)
        return padded_to_jagged(self.final_norm(h), offsets, total)  # (sum_N, D)
