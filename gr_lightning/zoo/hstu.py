"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al. 2024, arXiv 2402.17152, Section 3.1).

One block, on jagged input ``X`` of shape ``(sum_N, D)`` (Eq. 1-3):

    U, V, Q, K = split(SiLU(LayerNorm(X) W1 + b1))
    A_h(i, j)  = SiLU(alpha * Q_h(i) . K_h(j) + rab_p(i - j) + rab_t(i, j)) / n     (allowed pairs, else 0)
    Y          = U * LayerNorm(concat_h A_h V_h)
    out        = X + Dropout(Y) W2 + b2

``n`` is the configured ``max_seq_len``, a constant, so no output depends on the other sequences of a
batch. ``rab_p`` is a learned scalar per relative position, ``rab_t`` a learned scalar per log-scaled
time bucket of ``t_{i+1} - t_j``; each block owns its two tables. Attention runs through the kernel
dispatch in :mod:`gr_lightning.ops`, so ``kernel`` changes the implementation but not the parameters:
a checkpoint trained with one kernel loads into the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr_lightning import ops
from gr_lightning.ops.pytorch.hstu_attention import next_timestamps
from gr_lightning.serving.graphs import capturing
from gr_lightning.zoo import Backbone
from gr_lightning.zoo._hstu_incremental import IncrementalHSTU


class HSTUBlock(nn.Module):
    """One HSTU layer (Eq. 1-3) with its own relative attention bias tables.

    Args:
        dim: Model width D.
        max_seq_len: The constant ``n``: divides the attention weights and sizes the positional table.
        num_heads: Attention heads H.
        attention_dim: Per-head query/key width d_qk.
        linear_dim: Per-head value/gate width d_v.
        dropout: Dropout on the gated attention output before W2.
        alpha: Scale of ``q . k``; the reference trainer that produced the paper's numbers uses 1.
        num_time_buckets: Largest temporal bucket index (the table has one more row).
        position_bias: Learn ``rab_p``.
        time_bias: Learn ``rab_t``.
        eps: LayerNorm epsilon.
        kernel: ``pytorch``, ``triton`` or ``auto`` (see :func:`gr_lightning.ops.resolve_kernel`).

    """

    def __init__(
        self,
        dim: int,
        max_seq_len: int,
        num_heads: int,
        attention_dim: int,
        linear_dim: int,
        dropout: float,
        alpha: float,
        num_time_buckets: int,
        position_bias: bool,
        time_bias: bool,
        eps: float,
        kernel: str,
    ) -> None:
        super().__init__()
        self.num_heads, self.attention_dim, self.linear_dim = num_heads, attention_dim, linear_dim
        self.max_seq_len, self.dropout, self.alpha, self.eps, self.kernel = max_seq_len, dropout, alpha, eps, kernel
        self.uvqk = nn.Linear(dim, num_heads * (2 * linear_dim + 2 * attention_dim))
        self.out = nn.Linear(num_heads * linear_dim, dim)
        self.pos_bias = nn.Parameter(torch.empty(2 * max_seq_len - 1)) if position_bias else None
        self.time_bias = nn.Parameter(torch.empty(num_time_buckets + 1)) if time_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the reference implementation does (small normal projections, Xavier output)."""
        nn.init.normal_(self.uvqk.weight, std=0.02)
        nn.init.zeros_(self.uvqk.bias)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        for table in (self.pos_bias, self.time_bias):
            if table is not None:
                nn.init.normal_(table, std=0.02)

    def forward(self, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor,
                query_times: Tensor | None = None, num_targets: Tensor | None = None,
                num_contextual: int = 0, next_ts: Tensor | None = None) -> Tensor:
        """Apply the block to jagged ``x`` of shape ``(sum_N, D)``; returns the same shape.

        ``next_ts`` (``(sum_N,)``) is ``next_timestamps(timestamps, offsets, query_times)`` when the caller
        has it (the stack computes it once per batch); None computes it in the attention.
        """
        u, q, k, v = self._project(x)
        attn = ops.hstu_attention(q, k, v, offsets, max_len, num_contextual=num_contextual,
                                  **self._attention_args(timestamps, query_times, num_targets, next_ts))
        return self._output(x, attn, u)

    def incremental_forward(self, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor, *,
                            cache_keys: Tensor | None = None, cache_values: Tensor | None = None,
                            cache_lengths: Tensor | None = None, cache_timestamps: Tensor | None = None,
                            query_times: Tensor | None = None, num_targets: Tensor | None = None,
                            num_contextual: int = 0, next_ts: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The block on jagged rows that continue cached ones; also returns the rows' keys and values.

        Without a cache the rows are whole sequences and the output is :meth:`forward`'s. With one, row ``m``
        of sequence ``b`` sits at position ``cache_lengths[b] + m`` behind the cached rows, which it sees
        (see :func:`gr_lightning.ops.pytorch.cached_attention.cached_hstu_attention`).

        Args:
            x: ``(sum_M, D)`` layer input of the new rows.
            offsets: ``(B+1,)`` boundaries of the new rows.
            max_len: Most new rows of any sequence.
            timestamps: ``(sum_M,)`` event times of the new rows.
            cache_keys: ``(B, C, H, d_qk)`` this block's cached keys, or None.
            cache_values: ``(B, C, H, d_v)`` this block's cached values.
            cache_lengths: ``(B,)`` cached rows per sequence.
            cache_timestamps: ``(B, C)`` event times of the cached rows.
            query_times: ``(B,)`` request time after each sequence's last new row.
            num_targets: ``(B,)`` candidates among the new rows (target-aware mask), or None.
            num_contextual: Contextual prefix (only without a cache: cached rows never include new prefix rows).
            next_ts: ``(sum_M,)`` the new rows' next timestamps if already computed (they are the same in
                every block), else None.

        Returns:
            The output ``(sum_M, D)``, keys ``(sum_M, H, d_qk)`` and values ``(sum_M, H, d_v)``.

        """
        u, q, k, v = self._project(x)
        common = self._attention_args(timestamps, query_times, num_targets, next_ts)
        if cache_keys is None:
            attn = ops.hstu_attention(q, k, v, offsets, max_len, num_contextual=num_contextual, **common)
        else:
            if num_contextual:
                raise ValueError("rows behind a KV cache cannot form a contextual prefix (it is at the start)")
            timed = self.time_bias is not None
            attn = ops.cached_hstu_attention(q, k, v, offsets, max_len, cache_keys, cache_values, cache_lengths,
                                             cache_timestamps=cache_timestamps if timed else None, **common)
        return self._output(x, attn, u), k, v

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Eq. 1: ``U, Q, K, V`` of jagged ``x``, the last three split into heads."""
        H, d_qk, d_v = self.num_heads, self.attention_dim, self.linear_dim
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        # SiLU of (sum_N, H * (2 d_v + 2 d_qk)), split into U, V, Q, K
        u, v, q, k = ops.silu_split(self.uvqk(normed), [H * d_v, H * d_v, H * d_qk, H * d_qk], kernel=self.kernel)
        q = q.reshape(-1, H, d_qk)  # (sum_N, H, d_qk)
        k = k.reshape(-1, H, d_qk)  # (sum_N, H, d_qk)
        v = v.reshape(-1, H, d_v)  # (sum_N, H, d_v)
        return u, q, k, v

    def _attention_args(self, timestamps: Tensor, query_times: Tensor | None, num_targets: Tensor | None,
                        next_ts: Tensor | None) -> dict:
        """Keyword arguments of the attention ops common to full and cached attention (Eq. 2)."""
        timed = self.time_bias is not None
        return dict(kernel=self.kernel, alpha=self.alpha, scale_len=self.max_seq_len, pos_bias=self.pos_bias,
                    time_bias=self.time_bias, timestamps=timestamps if timed else None,
                    query_times=query_times if timed else None, next_ts=next_ts if timed else None,
                    num_targets=num_targets)

    def _output(self, x: Tensor, attn: Tensor, u: Tensor) -> Tensor:
        """Eq. 3: ``x + Dropout(U * Norm(attn)) W2 + b2`` for ``attn`` of shape ``(sum_N, H, d_v)``."""
        attn = attn.reshape(-1, self.num_heads * self.linear_dim)  # (sum_N, H * d_v)
        gated = ops.norm_mul_dropout(attn, u, self.eps, self.dropout, self.training, kernel=self.kernel)
        return x + self.out(gated)


class HSTU(IncrementalHSTU, Backbone):
    """A stack of HSTU blocks (the paper's backbone, both for retrieval and ranking).

    Args:
        dim: Model width D (supplied by the model).
        max_seq_len: Longest sequence, the attention normaliser ``n`` (linked from the DataModule).
        num_blocks: Number of stacked blocks.
        num_heads: Attention heads per block.
        attention_dim: Per-head query/key width d_qk.
        linear_dim: Per-head value/gate width d_v.
        dropout: Dropout inside each block (the paper's recipes use 0.2 on MovieLens, 0.5 on Books).
        alpha: Scale of ``q . k``; 1 reproduces the reference trainer.
        num_time_buckets: Largest temporal bucket index (128 in the paper).
        position_bias: Learn the positional relative attention bias.
        time_bias: Learn the temporal relative attention bias.
        eps: LayerNorm epsilon.
        kernel: ``pytorch`` (reference), ``triton`` (fused) or ``auto`` (triton on CUDA).

    """

    description = "HSTU (Zhai et al. 2024): pointwise SiLU attention with relative position/time bias"

    def __init__(
        self,
        dim: int,
        max_seq_len: int,
        num_blocks: int = 2,
        num_heads: int = 1,
        attention_dim: int = 50,
        linear_dim: int = 50,
        dropout: float = 0.2,
        alpha: float = 1.0,
        num_time_buckets: int = 128,
        position_bias: bool = True,
        time_bias: bool = True,
        eps: float = 1e-6,
        kernel: str = "pytorch",
    ) -> None:
        super().__init__(dim, max_seq_len)
        if kernel not in ops.KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(ops.KERNELS)}")
        self.blocks = nn.ModuleList(
            HSTUBlock(dim, max_seq_len, num_heads, attention_dim, linear_dim, dropout, alpha, num_time_buckets,
                      position_bias, time_bias, eps, kernel)
            for _ in range(num_blocks)
        )

    @property
    def kernel(self) -> str:
        """The attention backend every block uses."""
        return self.blocks[0].kernel if len(self.blocks) else "pytorch"

    @kernel.setter
    def kernel(self, value: str) -> None:
        if value not in ops.KERNELS:
            raise ValueError(f"unknown kernel {value!r}; choose one of {', '.join(ops.KERNELS)}")
        for block in self.blocks:
            block.kernel = value

    @property
    def uses_time_bias(self) -> bool:
        """Whether any block learns the temporal bias (then the cache depends on event times)."""
        return any(block.time_bias is not None for block in self.blocks)

    def forward(self, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor,
                query_times: Tensor | None = None, *, num_targets: Tensor | None = None,
                num_contextual: int = 0) -> Tensor:
        """Run every block; see :meth:`Backbone.forward` (target-aware and contextual-prefix masks supported)."""
        if num_targets is not None and not capturing():  # the check reads the device: not while capturing a graph
            lengths = offsets[1:] - offsets[:-1]
            too_long = torch.nonzero(num_targets + num_contextual > lengths).flatten()
            if too_long.numel():
                b = int(too_long[0])
                raise ValueError(f"sequence {b} has {int(num_targets[b])} candidate rows and {num_contextual} "
                                 f"contextual rows but only {int(lengths[b])} rows in all: the candidates are "
                                 "longer than the sequence")
        # Every block's temporal bias reads the same next-event times: compute them once per batch.
        next_ts = next_timestamps(timestamps, offsets, query_times) if self.uses_time_bias else None  # (sum_N,)
        for block in self.blocks:
            x = block(x, offsets, max_len, timestamps, query_times, num_targets, num_contextual, next_ts)
        return x
