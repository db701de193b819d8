"""Incremental HSTU inference over a per-user KV cache (Zhai et al. 2024, Sec. 3.4, M-FALCON).

:class:`IncrementalHSTU` gives :class:`~gr_lightning.zoo.hstu.HSTU` its ``prefill``, ``score_candidates``,
``append`` and ``last_output``: history rows run through every block once and leave their keys and values
in a :class:`~gr_lightning.serving.KVCache`; later requests run only their new rows, which attend to the
cached ones (target-aware for candidates). Results equal :meth:`HSTU.forward` on the whole sequence (see
:mod:`gr_lightning.serving.cache` for why the last history row stays pending).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gr_lightning.ops.jagged import seq_index
from gr_lightning.ops.pytorch.hstu_attention import next_timestamps
from gr_lightning.serving.cache import KVCache
from gr_lightning.serving.graphs import capturing


class IncrementalHSTU:
    """Cache-backed inference methods of the HSTU stack (mixed into :class:`~gr_lightning.zoo.hstu.HSTU`)."""


    def _check_inference(self, x: Tensor, offsets: Tensor, timestamps: Tensor, what: str,
                         cache: KVCache | None = None) -> None:
        if self.training:
            raise RuntimeError("incremental inference needs eval mode (call .eval()): dropout would make the cached "
                               "and the full outputs differ")
        if offsets.ndim != 1 or offsets.numel() < 1:
            raise ValueError(f"{what}: offsets must be a 1-D tensor of length B+1, got shape {tuple(offsets.shape)}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what}: x must be (rows, dim = {self.dim}), got {tuple(x.shape)}")
        total = x.shape[0]
        if timestamps.shape != (total,):
            raise ValueError(f"{what}: timestamps must be ({total},) like x's rows, got {tuple(timestamps.shape)}")
        # Reading offsets[-1] waits for the device, which a CUDA-graph capture forbids: a captured call is
        # checked by its graph (serving.graphs), which fixes the row count.
        if not capturing() and int(offsets[-1]) != total:
            raise ValueError(f"{what}: offsets[-1] = {int(offsets[-1])} but x has {total} rows")
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
        """A contextual-prefix cache is exact only for candidates that start at its request time.

        Not checked while a CUDA graph is captured (it reads the device); check the request eagerly first.
        """
        if cache.request_times is None or not self.uses_time_bias or timestamps.numel() == 0 or capturing():
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
        # In place: a captured scoring graph (serving.graphs) reads these very buffers on its next replay.
        cache.pending.copy_(rows[last])
        cache.pending_timestamps.copy_(row_ts[last])
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
