"""Reference HSTU attention of new rows against a KV cache (incremental inference, M-FALCON style).

HSTU paper (Zhai et al. 2024), Sec. 3.4 (M-FALCON): the keys and values of a user's history are computed
once and kept per layer; scoring candidates, or extending the history, runs only the new rows, which attend
to the cached rows and to each other. The weights are those of Eq. 2 evaluated at the rows' absolute
positions in the whole sequence ``cached rows ++ new rows``:

    A_h(i, j) = SiLU(alpha * q_i . k_j + rab_p(i - j) + rab_t(i, j)) / n

for query ``i`` among the new rows and every key ``j`` it may see: all cached rows (they are history, and
earlier), the new history rows causally, and for a candidate (the last ``num_targets[b]`` new rows) the
new history rows and itself. So the result equals rows ``P_b ..`` of
:func:`gr_lightning.ops.pytorch.hstu_attention` on the concatenated sequence, where ``P_b`` is the cache
length; the relative positions ``i - j``, the temporal gaps ``t_{i+1} - t_j`` and the ``1/n`` scaling are
those of the full sequence. Padded per batch for clarity; the fused kernel is tested against this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gr_lightning.ops.jagged import jagged_to_padded, padded_to_jagged
from gr_lightning.ops.pytorch.hstu_attention import (
    _lookup,
    attention_mask,
    next_timestamps,
    relative_position_index,
    time_buckets,
)


def check_cache_inputs(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, k_cache: Tensor, v_cache: Tensor,
                       cache_lengths: Tensor, time_bias: Tensor | None, timestamps: Tensor | None,
                       cache_timestamps: Tensor | None) -> None:
    """Raise ValueError naming the first inconsistency between new rows and cache (shared by both kernels)."""
    batch = offsets.numel() - 1
    if k_cache.ndim != 4 or v_cache.ndim != 4:
        raise ValueError(f"k_cache and v_cache must be (B, C, H, d), got {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    if k_cache.shape[0] != batch or v_cache.shape[0] != batch or cache_lengths.shape != (batch,):
        raise ValueError(f"the cache holds {k_cache.shape[0]} sequences (cache_lengths {tuple(cache_lengths.shape)}) "
                         f"but offsets describe {batch}")
    if k_cache.shape[1] != v_cache.shape[1]:
        raise ValueError(f"k_cache has {k_cache.shape[1]} rows per sequence, v_cache {v_cache.shape[1]}")
    if k_cache.shape[2:] != k.shape[1:] or v_cache.shape[2:] != v.shape[1:] or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"head shapes differ: q {tuple(q.shape[1:])}, k {tuple(k.shape[1:])}, v {tuple(v.shape[1:])}, "
                         f"k_cache {tuple(k_cache.shape[2:])}, v_cache {tuple(v_cache.shape[2:])}")
    if time_bias is not None and (timestamps is None or cache_timestamps is None):
        raise ValueError("time_bias needs timestamps (new rows) and cache_timestamps")
    if cache_timestamps is not None and cache_timestamps.shape != k_cache.shape[:2]:
        raise ValueError(f"cache_timestamps must be (B, C) = {tuple(k_cache.shape[:2])}, got "
                         f"{tuple(cache_timestamps.shape)}")


def cached_hstu_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    max_len: int,
    k_cache: Tensor,
    v_cache: Tensor,
    cache_lengths: Tensor,
    *,
    alpha: float,
    scale_len: int,
    num_targets: Tensor | None = None,
    pos_bias: Tensor | None = None,
    time_bias: Tensor | None = None,
    timestamps: Tensor | None = None,
    cache_timestamps: Tensor | None = None,
    query_times: Tensor | None = None,
    next_ts: Tensor | None = None,
) -> Tensor:
    """HSTU attention of jagged new rows against per-sequence cached keys and values.

    Args:
        q: ``(sum_M, H, d_qk)`` queries of the new rows.
        k: ``(sum_M, H, d_qk)`` keys of the new rows.
        v: ``(sum_M, H, d_v)`` values of the new rows.
        offsets: ``(B+1,)`` boundaries of the new rows.
        max_len: Most new rows of any sequence.
        k_cache: ``(B, C, H, d_qk)`` cached keys; rows ``>= cache_lengths[b]`` are ignored.
        v_cache: ``(B, C, H, d_v)`` cached values.
        cache_lengths: ``(B,)`` cached rows per sequence: the absolute position of its first new row.
        alpha: Scale of ``q . k``.
        scale_len: The constant ``n`` dividing the weights; the positional table has ``2n - 1`` rows.
        num_targets: ``(B,)`` candidates among each sequence's new rows (its tail), or None for none.
        pos_bias: ``(2 * scale_len - 1,)`` positional bias table, or None.
        time_bias: ``(num_buckets + 1,)`` temporal bias table, or None.
        timestamps: ``(sum_M,)`` event times of the new rows; required with ``time_bias``.
        cache_timestamps: ``(B, C)`` event times of the cached rows; required with ``time_bias``.
        query_times: ``(B,)`` request time after each sequence's last new row (see ``next_timestamps``).
        next_ts: ``(sum_M,)`` the new rows' ``next_timestamps(timestamps, offsets, query_times)``, when the
            caller has it already (it is the same in every layer); ``query_times`` is then not used.

    Returns:
        ``(sum_M, H, d_v)``.

    """
    check_cache_inputs(q, k, v, offsets, k_cache, v_cache, cache_lengths, time_bias, timestamps, cache_timestamps)
    total = q.shape[0]
    if total == 0:
        return v.new_zeros(v.shape)
    n = scale_len
    capacity = k_cache.shape[1]
    lengths = offsets[1:] - offsets[:-1]  # (B,)
    qp = jagged_to_padded(q, offsets, max_len)  # (B, M, H, d_qk)
    kp = jagged_to_padded(k, offsets, max_len)  # (B, M, H, d_qk)
    vp = jagged_to_padded(v, offsets, max_len)  # (B, M, H, d_v)
    rows = torch.arange(max_len, device=q.device)  # (M,)
    slots = torch.arange(capacity, device=q.device)  # (C,)
    query_pos = cache_lengths.view(-1, 1) + rows  # (B, M) absolute position of each new row
    s_cache = torch.einsum("bihd,bjhd->bhij", qp, k_cache.to(qp.dtype)) * alpha  # (B, H, M, C)
    s_new = torch.einsum("bihd,bjhd->bhij", qp, kp) * alpha  # (B, H, M, M)
    if pos_bias is not None:
        rel = (query_pos.unsqueeze(2) - slots).clamp(-(n - 1), n - 1) + n - 1  # (B, M, C)
        s_cache = s_cache + _lookup(pos_bias, rel).unsqueeze(1).to(s_cache.dtype)
        s_new = s_new + _lookup(pos_bias, relative_position_index(max_len, n, q.device)).to(s_new.dtype)
    if time_bias is not None:
        buckets = time_bias.numel() - 1
        if next_ts is None:
            next_ts = next_timestamps(timestamps, offsets, query_times)  # (sum_M,)
        nxt = jagged_to_padded(next_ts, offsets, max_len)  # (B, M)
        ts_new = jagged_to_padded(timestamps, offsets, max_len)  # (B, M)
        cache_buckets = time_buckets(nxt.unsqueeze(2), cache_timestamps.unsqueeze(1), buckets)  # (B, M, C)
        new_buckets = time_buckets(nxt.unsqueeze(2), ts_new.unsqueeze(1), buckets)  # (B, M, M)
        s_cache = s_cache + _lookup(time_bias, cache_buckets).unsqueeze(1).to(s_cache.dtype)
        s_new = s_new + _lookup(time_bias, new_buckets).unsqueeze(1).to(s_new.dtype)
    valid_query = rows < lengths.view(-1, 1)  # (B, M)
    cache_mask = valid_query.unsqueeze(2) & (slots < cache_lengths.view(-1, 1)).unsqueeze(1)  # (B, M, C)
    new_mask = attention_mask(lengths, max_len, num_targets)  # (B, M, M): the same rule, shifted by P_b
    w_cache = F.silu(s_cache) / n * cache_mask.unsqueeze(1)  # (B, H, M, C)
    w_new = F.silu(s_new) / n * new_mask.unsqueeze(1)  # (B, H, M, M)
    out = torch.einsum("bhij,bjhd->bihd", w_cache, v_cache.to(vp.dtype))  # (B, M, H, d_v)
    out = out + torch.einsum("bhij,bjhd->bihd", w_new, vp)  # (B, M, H, d_v)
    return padded_to_jagged(out, offsets, total)


__all__ = ["cached_hstu_attention", "check_cache_inputs"]
