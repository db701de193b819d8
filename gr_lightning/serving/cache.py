"""The per-user KV cache of an HSTU backbone (incremental inference, HSTU paper Sec. 3.4, M-FALCON).

A cached row is one whose outputs at every layer can no longer change: under the causal mask a history row
sees only earlier rows, but through the temporal bias (``rab_t(i, j)`` compares ``t_{i+1}``, the *next*
row's time, with ``t_j``) the last history row depends on what follows it: the next appended event, the
first candidate, or the request time. Its layer-0 input is therefore kept as the *pending* row and run
again, through every layer, by each call; once an event is appended behind it, it is final and cached.

With a contextual prefix (rows that see the whole history) no history row is final while the history
grows, so such a cache is built once for one request time (its rows' next-event time) and refuses appends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Keys and values of each sequence's final history rows, per layer, padded to a fixed capacity.

    Attributes:
        keys: Per block, ``(B, C, H, d_qk)``; rows ``>= lengths[b]`` are unused.
        values: Per block, ``(B, C, H, d_v)``.
        timestamps: ``(B, C)`` event time of every cached row.
        lengths: ``(B,)`` cached rows per sequence (the absolute position of the next row).
        pending: ``(B, D)`` layer-0 input of each sequence's last history row, or None (contextual prefix:
            every row is cached).
        pending_timestamps: ``(B,)`` event time of the pending rows, or None.
        num_contextual: Contextual-prefix rows at the start of every sequence (0: none).
        request_times: ``(B,)`` the request time the cached rows were computed for, when they depend on one
            (contextual prefix with the temporal bias: the time after the history, i.e. the first candidate's;
            the ranking scorer also records the contextual tokens' time here), else None.

    """

    keys: list[Tensor]
    values: list[Tensor]
    timestamps: Tensor
    lengths: Tensor
    pending: Tensor | None
    pending_timestamps: Tensor | None
    num_contextual: int = 0
    request_times: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Number of sequences."""
        return self.lengths.numel()

    @property
    def capacity(self) -> int:
        """Longest history (cached plus pending rows) the buffers hold."""
        return self.timestamps.shape[1]

    @property
    def history_lengths(self) -> Tensor:
        """``(B,)`` history rows per sequence, the pending row included."""
        return self.lengths + (1 if self.pending is not None else 0)

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        tensors = [*self.keys, *self.values, self.timestamps, self.lengths]
        tensors += [t for t in (self.pending, self.pending_timestamps, self.request_times) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def check_batch(self, batch: int, what: str) -> None:
        """Raise ValueError unless ``what`` describes as many sequences as the cache holds."""
        if batch != self.batch_size:
            raise ValueError(f"{what} describe {batch} sequences but the cache holds {self.batch_size}")

    @staticmethod
    def empty(num_layers: int, batch: int, capacity: int, heads: int, d_qk: int, d_v: int, *, dtype: torch.dtype,
              device: torch.device, ts_dtype: torch.dtype = torch.int64, num_contextual: int = 0) -> KVCache:
        """A cache of ``batch`` empty sequences (no pending row yet)."""
        keys = [torch.zeros(batch, capacity, heads, d_qk, dtype=dtype, device=device) for _ in range(num_layers)]
        values = [torch.zeros(batch, capacity, heads, d_v, dtype=dtype, device=device) for _ in range(num_layers)]
        return KVCache(keys, values, torch.zeros(batch, capacity, dtype=ts_dtype, device=device),
                       torch.zeros(batch, dtype=torch.int64, device=device), None, None, num_contextual)


__all__ = ["KVCache"]
