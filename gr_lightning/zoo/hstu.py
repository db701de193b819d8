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
from gr_lightning.ops.jagged import seq_index
from gr_lightning.ops.pytorch.hstu_attention import next_timestamps
from gr_lightning.serving.cache import KVCache
from gr_lightning.zoo import Backbone


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
        H, d_qk, d_v = self.num_heads, self.attention_dim, self.linear_dim
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        uvqk = F.silu(self.uvqk(normed))  # (sum_N, H * (2 d_v + 2 d_qk))
        u, v, q, k = uvqk.split([H * d_v, H * d_v, H * d_qk, H * d_qk], dim=-1)
        attn = ops.hstu_attention(
            q.reshape(-1, H, d_qk),  # (sum_N, H, d_qk)
            k.reshape(-1, H, d_qk),  # (sum_N, H, d_qk)
            v.reshape(-1, H, d_v),  # (sum_N, H, d_v)
            offsets,
            max_len,
            kernel=self.kernel,
            alpha=self.alpha,
            scale_len=self.max_seq_len,
            pos_bias=self.pos_bias,
            time_bias=self.time_bias,
            timestamps=timestamps if self.time_bias is not None else None,
            query_times=query_times if self.time_bias is not None else None,
            next_ts=next_ts if self.time_bias is not None else None,
            num_targets=num_targets,
            num_contextual=num_contextual,
        ).reshape(-1, H * d_v)  # (sum_N, H * d_v)
        gated = ops.norm_mul_dropout(attn, u, self.eps, self.dropout, self.training, kernel=self.kernel)
        return x + self.out(gated)

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
            next_ts: ``(sum_M,)`` with a cache, the new rows' next timestamps if already computed (they are
                the same in every block), else None.

        Returns:
            The output ``(sum_M, D)``, keys ``(sum_M, H, d_qk)`` and values ``(sum_M, H, d_v)``.

        """
        H, d_qk, d_v = self.num_heads, self.attention_dim, self.linear_dim
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        uvqk = F.silu(self.uvqk(normed))  # (sum_M, H * (2 d_v + 2 d_qk))
        u, v, q, k = uvqk.split([H * d_v, H * d_v, H * d_qk, H * d_qk], dim=-1)
        q = q.reshape(-1, H, d_qk)  # (sum_M, H, d_qk)
        k = k.reshape(-1, H, d_qk)  # (sum_M, H, d_qk)
        v = v.reshape(-1, H, d_v)  # (sum_M, H, d_v)
        timed = self.time_bias is not None
        common = dict(kernel=self.kernel, alpha=self.alpha, scale_len=self.max_seq_len, pos_bias=self.pos_bias,
                      time_bias=self.time_bias, timestamps=timestamps if timed else None,
                      query_times=query_times if timed else None, num_targets=num_targets)
        if cache_keys is None:
            attn = ops.hstu_attention(q, k, v, offsets, max_len, num_contextual=num_contextual, **common)
        else:
            if num_contextual:
                raise ValueError("rows behind a KV cache cannot form a contextual prefix (it is at the start)")
            attn = ops.cached_hstu_attention(q, k, v, offsets, max_len, cache_keys, cache_values, cache_lengths,
                                             cache_timestamps=cache_timestamps if timed else None,
                                             next_ts=next_ts if timed else None, **common)
        attn = attn.reshape(-1, H * d_v)  # (sum_M, H * d_v)
        gated = ops.norm_mul_dropout(attn, u, self.eps, self.dropout, self.training, kernel=self.kernel)
        return x + self.out(gated), k, v


class HSTU(Backbone):
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

    def forward(self, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor,
                query_times: Tensor | None = None, *, num_targets: Tensor | None = None,
                num_contextual: int = 0) -> Tensor:
        """Run every block; see :meth:`Backbone.forward` (target-aware and contextual-prefix masks supported)."""
        if num_targets is not None:
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

    # --- incremental inference: a KV cache per user (Sec. 3.4, M-FALCON; see gr_lightning.serving) ---------

    @property
    def uses_time_bias(self) -> bool:
        """Whether any block learns the temporal bias (then the cache depends on event times)."""
        return any(block.time_bias is not None for block in self.blocks)

    def _check_inference(self, x: Tensor, offsets: Tensor, timestamps: Tensor, what: str,
                         cache: KVCache | None = None) -> None:
        if self.training:
            raise RuntimeError("incremental inference needs eval mode (call .eval()): dropout would make the cached "
                               "and the full outputs differ")
        if offsets.ndim != 1 or offsets.numel() < 1:
            raise ValueError(f"{what}: offsets must be a 1-D tensor of length B+1, got shape {tuple(offsets.shape)}")
        total = int(offsets[-1])
        if x.ndim != 2 or x.shape != (total, self.dim):
            raise ValueError(f"{what}: x must be (offsets[-1], dim) = ({total}, {self.dim}), got {tuple(x.shape)}")
        if timestamps.shape != (total,):
            raise ValueError(f"{what}: timestamps must be ({total},), got {tuple(timestamps.shape)}")
        if cache is not None:
            cache.check_batch(offsets.numel() - 1, f"the offsets of the {what}")
            if len(cache.keys) != len(self.blocks):
                raise ValueError(f"the cache has {len(cache.keys)} layers, the backbone {len(self.blocks)} blocks")
            if x.dtype != cache.keys[0].dtype or x.device != cache.keys[0].device:
                raise ValueError(f"{what}: x is {x.dtype} on {x.device}, the cache {cache.keys[0].dtype} on "
                                 f"{cache.keys[0].device}")

    @staticmethod
    def _check_query_times(query_times: Tensor | None, batch: int) -> None:
        if query_times is not None and query_times.shape != (batch,):
            raise ValueError(f"query_times must be ({batch},), got {tuple(query_times.shape)}")

    @staticmethod
    def _check_capacity(cache: KVCache, need: Tensor) -> None:
        over = torch.nonzero(need > cache.capacity).flatten()
        if over.numel():
            b = int(over[0])
            raise ValueError(f"sequence {b} would hold {int(need[b])} history rows, beyond the cache's capacity "
                             f"{cache.capacity}; prefill with a larger capacity")

    def _run(self, cache: KVCache, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor, *,
             query_times: Tensor | None, num_targets: Tensor | None, keep: Tensor | None = None,
             attend_cache: bool = True, num_contextual: int = 0) -> Tensor:
        """Run jagged new rows through every block behind the cached ones; cache the rows where ``keep``.

        Kept rows are written at positions ``cache.lengths[b] + m`` (their own positions), after the blocks
        read the cache, so a kept row is never seen as a cached row by the rows it was computed with.
        """
        if keep is not None:
            seq, pos = seq_index(offsets, x.shape[0])  # (sum_M,) each
            dest_b, dest_r = seq[keep], (cache.lengths[seq] + pos)[keep]  # (kept,) each
            cache.timestamps[dest_b, dest_r] = timestamps[keep].to(cache.timestamps.dtype)
        next_ts = None
        if attend_cache and self.uses_time_bias:
            next_ts = next_timestamps(timestamps, offsets, query_times)  # (sum_M,) once for all blocks
        for layer, block in enumerate(self.blocks):
            cached = {}
            if attend_cache:
                cached = dict(cache_keys=cache.keys[layer], cache_values=cache.values[layer],
                              cache_lengths=cache.lengths, cache_timestamps=cache.timestamps, next_ts=next_ts)
            out, k, v = block.incremental_forward(x, offsets, max_len, timestamps, query_times=query_times,
                                                  num_targets=num_targets, num_contextual=num_contextual, **cached)
            if keep is not None:
                cache.keys[layer][dest_b, dest_r] = k[keep]
                cache.values[layer][dest_b, dest_r] = v[keep]
            x = out
        if keep is not None:
            cache.lengths += torch.bincount(dest_b, minlength=cache.batch_size)
        return x

    @staticmethod
    def _with_pending(cache: KVCache, x: Tensor, offsets: Tensor, timestamps: Tensor) -> tuple[Tensor, Tensor,
                                                                                                Tensor, Tensor]:
        """Put each sequence's pending row before its new rows: rows, offsets, timestamps, new rows' places."""
        batch = cache.batch_size
        seq, _ = seq_index(offsets, x.shape[0])  # (sum_N,)
        dest = torch.arange(x.shape[0], device=x.device) + seq + 1  # (sum_N,) place of each new row
        row_offsets = offsets + torch.arange(batch + 1, device=offsets.device)  # (B+1,)
        rows = x.new_empty(x.shape[0] + batch, x.shape[1])  # (sum_N + B, D)
        rows[row_offsets[:-1]] = cache.pending
        rows[dest] = x
        ts = timestamps.new_empty(x.shape[0] + batch)  # (sum_N + B,)
        ts[row_offsets[:-1]] = cache.pending_timestamps.to(ts.dtype)
        ts[dest] = timestamps
        return rows, row_offsets, ts, dest

    @torch.no_grad()
    def prefill(self, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor, *, num_contextual: int = 0,
                request_times: Tensor | None = None, capacity: int | None = None) -> KVCache:
        """Encode jagged histories into a new :class:`~gr_lightning.serving.KVCache`.

        Without a contextual prefix every row but the last is cached and the last is kept pending (see
        :mod:`gr_lightning.serving.cache`), so candidates with any timestamps can be scored and events
        appended exactly. With one, every row is cached for one request time and appends are refused.

        Args:
            x: ``(sum_N, D)`` position-encoded history tokens.
            offsets: ``(B+1,)``; every history needs at least one row (and the contextual ones).
            max_len: Longest history.
            timestamps: ``(sum_N,)`` event times.
            num_contextual: Contextual-prefix rows at the start of every history.
            request_times: ``(B,)`` with a contextual prefix and the temporal bias, the time after each
                history (the first candidate's: the last row's next timestamp); required then.
            capacity: Longest history the cache can grow to (default ``max_seq_len``).

        Returns:
            The cache (buffers in the dtype and on the device of ``x``).

        """
        self._check_inference(x, offsets, timestamps, "history")
        batch = offsets.numel() - 1
        self._check_query_times(request_times, batch)
        lengths = offsets[1:] - offsets[:-1]  # (B,)
        short = torch.nonzero(lengths < max(1, num_contextual)).flatten()
        if short.numel():
            b = int(short[0])
            raise ValueError(f"history {b} has {int(lengths[b])} rows; a cache needs at least one history row "
                             f"besides the {num_contextual} contextual rows")
        if num_contextual and self.uses_time_bias and request_times is None:
            raise ValueError("with a contextual prefix every history row is cached at once, so the time after the "
                             "history must be known: pass request_times (the first candidate's timestamp)")
        first = self.blocks[0]
        cache = KVCache.empty(len(self.blocks), batch, self.max_seq_len if capacity is None else capacity,
                              first.num_heads, first.attention_dim, first.linear_dim, dtype=x.dtype, device=x.device,
                              ts_dtype=timestamps.dtype, num_contextual=num_contextual)
        self._check_capacity(cache, lengths)
        seq, pos = seq_index(offsets, x.shape[0])  # (sum_N,) each
        if num_contextual:
            cache.request_times = request_times
            keep = torch.ones_like(pos, dtype=torch.bool)
        else:
            keep = pos < (lengths - 1)[seq]
        self._run(cache, x, offsets, max_len, timestamps, query_times=request_times if num_contextual else None,
                  num_targets=None, keep=keep, attend_cache=False, num_contextual=num_contextual)
        if not num_contextual:
            last = offsets[1:] - 1  # (B,)
            cache.pending, cache.pending_timestamps = x[last].clone(), timestamps[last].clone()
        return cache

    @torch.no_grad()
    def score_candidates(self, cache: KVCache, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor,
                         query_times: Tensor | None = None) -> Tensor:
        """Outputs at candidate rows behind the cached histories, as :meth:`forward` with ``num_targets`` gives.

        The candidates attend to the history and themselves only, so all of a user's are scored in one pass;
        the cache is left unchanged.

        Args:
            cache: From :meth:`prefill`.
            x: ``(sum_K, D)`` position-encoded candidate tokens (positions continue the history).
            offsets: ``(B+1,)`` candidate boundaries.
            max_len: Most candidates of any sequence.
            timestamps: ``(sum_K,)`` candidate times.
            query_times: ``(B,)`` request time after each sequence's last candidate, as in :meth:`forward`.

        Returns:
            ``(sum_K, D)``.

        """
        self._check_inference(x, offsets, timestamps, "candidates", cache)
        self._check_query_times(query_times, cache.batch_size)
        num_targets = offsets[1:] - offsets[:-1]  # (B,)
        if cache.pending is None:
            self._check_request_times(cache, offsets, timestamps)
            return self._run(cache, x, offsets, max_len, timestamps, query_times=query_times, num_targets=num_targets)
        rows, row_offsets, row_ts, dest = self._with_pending(cache, x, offsets, timestamps)
        out = self._run(cache, rows, row_offsets, max_len + 1, row_ts, query_times=query_times,
                        num_targets=num_targets)  # (sum_K + B, D)
        return out[dest]

    def _check_request_times(self, cache: KVCache, offsets: Tensor, timestamps: Tensor) -> None:
        """A contextual-prefix cache is exact only for candidates that start at its request time."""
        if cache.request_times is None or not self.uses_time_bias or timestamps.numel() == 0:
            return
        has = offsets[1:] > offsets[:-1]  # (B,)
        first = timestamps[offsets[:-1].clamp(max=timestamps.numel() - 1)]  # (B,)
        bad = torch.nonzero(has & (first != cache.request_times.to(first.dtype))).flatten()
        if bad.numel():
            b = int(bad[0])
            raise ValueError(f"sequence {b}: the first candidate's time {first[b].item()} differs from the request "
                             f"time {cache.request_times[b].item()} the cache was built for; with a contextual prefix "
                             "every cached row depends on it, so prefill again for this request")

    @torch.no_grad()
    def append(self, cache: KVCache, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor,
               query_times: Tensor | None = None) -> Tensor:
        """Extend the cached histories by new events (in place); return each history's last output.

        The pending row and every new event but the last are cached (the pending row's next timestamp is
        now known); the last new event becomes the pending row. A sequence may get no events.

        Args:
            cache: From :meth:`prefill`, without a contextual prefix.
            x: ``(sum_N, D)`` position-encoded new event tokens (positions continue the history).
            offsets: ``(B+1,)`` boundaries of the new events.
            max_len: Most new events of any sequence.
            timestamps: ``(sum_N,)`` their times.
            query_times: ``(B,)`` request time after each extended history (for the returned outputs).

        Returns:
            ``(B, D)`` the output at each history's last row, as :meth:`forward` on the whole history gives.

        """
        self._check_inference(x, offsets, timestamps, "new events", cache)
        self._check_query_times(query_times, cache.batch_size)
        if cache.pending is None:
            raise ValueError(f"this cache has a contextual prefix of {cache.num_contextual} rows, which see the whole "
                             "history: appending events would change every cached row; prefill again with the "
                             "longer history")
        counts = offsets[1:] - offsets[:-1]  # (B,)
        self._check_capacity(cache, cache.lengths + counts + 1)
        rows, row_offsets, row_ts, _ = self._with_pending(cache, x, offsets, timestamps)
        seq, pos = seq_index(row_offsets, rows.shape[0])  # (sum_N + B,) each
        out = self._run(cache, rows, row_offsets, max_len + 1, row_ts, query_times=query_times, num_targets=None,
                        keep=pos < counts[seq])
        last = row_offsets[1:] - 1  # (B,)
        cache.pending, cache.pending_timestamps = rows[last], row_ts[last]
        return out[last]

    @torch.no_grad()
    def last_output(self, cache: KVCache, query_times: Tensor | None = None) -> Tensor:
        """``(B, D)`` output at each cached history's last row for request times ``query_times``."""
        if cache.pending is None:
            raise ValueError("a cache with a contextual prefix has no pending last row; its last output was fixed "
                             "at prefill")
        self._check_query_times(query_times, cache.batch_size)
        offsets = torch.arange(cache.batch_size + 1, device=cache.lengths.device)  # (B+1,) one row each
        return self._run(cache, cache.pending, offsets, 1, cache.pending_timestamps, query_times=query_times,
                         num_targets=None)
