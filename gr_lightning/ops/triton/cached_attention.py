"""Fused HSTU attention of new rows against a KV cache, in Triton (forward only: inference).

Same contract as :func:`gr_lightning.ops.pytorch.cached_attention.cached_hstu_attention` (HSTU paper,
Eq. 2 at absolute positions; Sec. 3.4, M-FALCON): one program takes a tile of ``BLOCK_M`` new rows of one
sequence and head and adds, without any softmax state, the contributions

1. of the cached keys, all visible, in blocks of ``BLOCK_N`` (no mask but the last block's bound). With few
   query tiles (one user, a few hundred candidates) the cached range is split over ``NSPLIT`` programs
   whose fp32 partial sums are added afterwards: without a softmax, partial sums are final;
2. of the new history rows (a pending history row, appended events), causal for history queries and all
   visible to candidate queries;
3. of a candidate's own key, the only other candidate it may see: a row-wise ``q_i . k_i`` instead of a
   mostly masked ``BLOCK_M x BLOCK_N`` tile.

Timestamps are taken relative to the sequence's first new row (int32 for integer seconds, so gaps are
exact), and the temporal bucket uses the reference's formula.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from gr_lightning.ops.pytorch.cached_attention import check_cache_inputs
from gr_lightning.ops.pytorch.hstu_attention import next_timestamps
from gr_lightning.ops.triton._common import dot as _dot
from gr_lightning.ops.triton._common import fast_log as _fast_log
from gr_lightning.ops.triton._common import interpreting as _interpreting
from gr_lightning.ops.triton._common import load_kv_tile as _load_kv_tile
from gr_lightning.ops.triton._common import next_pow2 as _next_pow2
from gr_lightning.ops.triton._common import pos_index as _pos_index
from gr_lightning.ops.triton._common import silu as _silu
from gr_lightning.ops.triton._common import time_index as _time_index
from gr_lightning.ops.triton._common import time_lookup_table as _time_lookup_table
from gr_lightning.ops.triton._common import time_slot as _time_slot

#: Tests set ``(BLOCK_M, BLOCK_N)`` of the interpreter's tiles.
_INTERPRET_BLOCKS: tuple[int, int] = (16, 16)

#: Tests (and benchmarks) set this to force the number of programs sharing one tile's cached keys.
_SPLIT: int | None = None

#: Tests set this to a float (NaN) so that outputs start poisoned and unwritten elements show.
_POISON: float | None = None

#: Cached keys one split covers at least (in rows): fewer makes the partial-sum reduction dominate.
_MIN_SPLIT_ROWS = 256


@triton.jit
def _key_tile(acc, q, Kp, Vp, TsK, stride_kn, stride_vn, start_n, n_valid, key_pos0, q_pos, next_ts, is_cand,
              ts_base, PosBias, TimeBias, alpha, inv_scale, scale_len, offs_dqk, offs_dv,
              D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
              BLOCK_N: tl.constexpr, BOUND: tl.constexpr, CAUSAL: tl.constexpr, HAS_POS: tl.constexpr,
              HAS_TIME: tl.constexpr, FAST: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
              REL_TS: tl.constexpr, FAST_LOG: tl.constexpr):
    """Add one block of keys ``start_n ..`` of one source (cache or new rows) to ``acc`` ``(BLOCK_M, BLOCK_DV)``.

    BOUND masks keys ``>= n_valid``; CAUSAL lets history queries see only keys at or before them.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    rows = offs_n.to(tl.int64)
    k, v = _load_kv_tile(Kp, Vp, rows, offs_n < n_valid, stride_kn, stride_vn, offs_dqk, offs_dv, D_QK, D_V,
                         BLOCK_DQK, BLOCK_DV, BOUND)
    s = _dot(q, tl.trans(k), PREC, UPCAST) * alpha  # (BLOCK_M, BLOCK_N)
    key_pos = key_pos0 + offs_n  # absolute positions of the keys
    if HAS_POS:
        s += tl.load(PosBias + _pos_index(q_pos[:, None], key_pos[None, :], scale_len)).to(tl.float32)
    if HAS_TIME:
        if BOUND:
            ts = tl.load(TsK + rows, mask=offs_n < n_valid, other=0)
        else:
            ts = tl.load(TsK + rows)
        ts = (ts - ts_base).to(REL_TS)
        time_idx = _time_index(next_ts[:, None], ts[None, :], FAST_LOG)  # (BLOCK_M, BLOCK_N)
        s += tl.load(_time_slot(TimeBias, time_idx)).to(tl.float32)
    a = _silu(s, FAST) * inv_scale
    if BOUND:
        ok = offs_n[None, :] < n_valid
        if CAUSAL:
            ok = ok & ((key_pos[None, :] <= q_pos[:, None]) | is_cand[:, None])
        a = tl.where(ok, a, 0.0)
    acc += _dot(a.to(v.dtype), v, PREC, UPCAST)
    return acc


@triton.jit
def _cached_fwd_kernel(
    Q, K, V, KC, VC, Out, Offsets, CacheLens, NumTargets, PosBias, TimeBias, Ts, CacheTs, NextTs,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
    stride_kcb, stride_kcn, stride_kch, stride_vcb, stride_vcn, stride_vch, stride_tcb,
    stride_os, stride_on, stride_oh,
    alpha, inv_scale, scale_len, H, NSPLIT, MAX_NEW_BUCKET, MAX_CACHE_BUCKET,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_TARGETS: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, FAST: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, REL_TS: tl.constexpr, FAST_LOG: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    new_start = tl.load(Offsets + b)
    num_new = (tl.load(Offsets + b + 1) - new_start).to(tl.int32)
    start_m = pid_m * BLOCK_M
    if start_m >= num_new:
        return
    num_cached = tl.load(CacheLens + b).to(tl.int32)
    hist_new = num_new  # new rows before the candidates
    if HAS_TARGETS:
        hist_new = num_new - tl.load(NumTargets + b).to(tl.int32)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_rows = new_start + offs_m.to(tl.int64)
    row_ok = offs_m < num_new
    q = tl.load(Q + h * stride_qh + q_rows[:, None] * stride_qn + offs_dqk[None, :],
                mask=row_ok[:, None] & (offs_dqk[None, :] < D_QK), other=0.0)
    q_pos = num_cached + offs_m
    is_cand = offs_m >= hist_new
    ts_base = 0
    next_ts = tl.zeros([BLOCK_M], dtype=tl.int32)
    if HAS_TIME:
        ts_base = tl.load(Ts + new_start)
        next_ts = (tl.load(NextTs + q_rows, mask=row_ok, other=0) - ts_base).to(REL_TS)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    # 1. This program's share of the cached keys: every one is visible.
    Kc = KC + b * stride_kcb + h * stride_kch
    Vc = VC + b * stride_vcb + h * stride_vch
    Tc = CacheTs + b * stride_tcb
    chunk = tl.cdiv(tl.cdiv(num_cached, NSPLIT), BLOCK_N) * BLOCK_N
    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, num_cached)
    full = lo + (tl.maximum(hi - lo, 0) // BLOCK_N) * BLOCK_N
    for start_n in range(lo, full, BLOCK_N):
        acc = _key_tile(acc, q, Kc, Vc, Tc, stride_kcn, stride_vcn, start_n, num_cached, 0, q_pos, next_ts,
                        is_cand, ts_base, PosBias, TimeBias, alpha, inv_scale, scale_len, offs_dqk,
                        offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV, BLOCK_N, False, False, HAS_POS, HAS_TIME, FAST,
                        PREC, UPCAST, REL_TS, FAST_LOG)
    if full < hi:
        acc = _key_tile(acc, q, Kc, Vc, Tc, stride_kcn, stride_vcn, full, num_cached, 0, q_pos, next_ts,
                        is_cand, ts_base, PosBias, TimeBias, alpha, inv_scale, scale_len, offs_dqk,
                        offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV, BLOCK_N, True, False, HAS_POS, HAS_TIME, FAST,
                        PREC, UPCAST, REL_TS, FAST_LOG)

    if pid_s == 0:
        # 2. New history rows: blocks wholly before the tile are visible to all its rows.
        Kn = K + h * stride_kh + new_start * stride_kn
        Vn = V + h * stride_vh + new_start * stride_vn
        Tn = Ts + new_start
        new_hi = tl.minimum(hist_new, start_m + BLOCK_M)
        new_full = (tl.minimum(start_m, hist_new) // BLOCK_N) * BLOCK_N
        for start_n in range(0, new_full, BLOCK_N):
            acc = _key_tile(acc, q, Kn, Vn, Tn, stride_kn, stride_vn, start_n, hist_new, num_cached, q_pos,
                            next_ts, is_cand, ts_base, PosBias, TimeBias, alpha, inv_scale, scale_len,
                            offs_dqk, offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV, BLOCK_N, False, False, HAS_POS,
                            HAS_TIME, FAST, PREC, UPCAST, REL_TS, FAST_LOG)
        for start_n in range(new_full, new_hi, BLOCK_N):
            acc = _key_tile(acc, q, Kn, Vn, Tn, stride_kn, stride_vn, start_n, hist_new, num_cached, q_pos,
                            next_ts, is_cand, ts_base, PosBias, TimeBias, alpha, inv_scale, scale_len,
                            offs_dqk, offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV, BLOCK_N, True, True, HAS_POS,
                            HAS_TIME, FAST, PREC, UPCAST, REL_TS, FAST_LOG)
        # 3. A candidate's own key, row by row.
        if HAS_TARGETS:  # noqa: SIM102 (a constexpr guard around a run-time test)
            if start_m + BLOCK_M > hist_new:
                own = is_cand & row_ok
                k_own = tl.load(K + h * stride_kh + q_rows[:, None] * stride_kn + offs_dqk[None, :],
                                mask=own[:, None] & (offs_dqk[None, :] < D_QK), other=0.0)
                v_own = tl.load(V + h * stride_vh + q_rows[:, None] * stride_vn + offs_dv[None, :],
                                mask=own[:, None] & (offs_dv[None, :] < D_V), other=0.0)
                s_own = tl.sum(q.to(tl.float32) * k_own.to(tl.float32), axis=1) * alpha  # (BLOCK_M,)
                if HAS_POS:
                    s_own += tl.load(PosBias + scale_len - 1).to(tl.float32)
                if HAS_TIME:
                    ts_own = (tl.load(Ts + q_rows, mask=row_ok, other=0) - ts_base).to(REL_TS)
                    own_idx = _time_index(next_ts, ts_own, FAST_LOG)  # (BLOCK_M,)
                    s_own += tl.load(_time_slot(TimeBias, own_idx)).to(tl.float32)
                a_own = tl.where(own, _silu(s_own, FAST) * inv_scale, 0.0)
                acc += a_own[:, None] * v_own.to(tl.float32)

    o_ptrs = Out + pid_s * stride_os + h * stride_oh + q_rows[:, None] * stride_on + offs_dv[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < D_V))


# Configs that need more shared memory than the GPU has (wide heads, fp32) fail to compile and are skipped
# by the autotuner; the single-stage ones fit d = 256 in fp32.
_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 4, 3), (128, 64, 8, 2), (32, 64, 4, 2),
                         (64, 128, 8, 2), (64, 32, 4, 1), (32, 32, 4, 1)]
]
_KEY = ["MAX_NEW_BUCKET", "MAX_CACHE_BUCKET", "NSPLIT", "D_QK", "D_V", "HAS_TARGETS", "HAS_POS", "HAS_TIME"]
_tuned = triton.autotune(configs=_CONFIGS, key=_KEY)(_cached_fwd_kernel)


def _num_splits(device: torch.device, programs: int, max_cached: int) -> int:
    """Programs sharing one query tile's cached keys, so that about two waves of programs fill the GPU."""
    if _SPLIT is not None:
        return _SPLIT
    if _interpreting() or max_cached == 0:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, max(programs, 1)), max_cached // _MIN_SPLIT_ROWS))


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
    """Fused cached HSTU attention; arguments as in the PyTorch reference (forward only).

    Args:
        q: ``(sum_M, H, d_qk)`` queries of the new rows; the last dimension contiguous.
        k: ``(sum_M, H, d_qk)``.
        v: ``(sum_M, H, d_v)``.
        offsets: ``(B+1,)`` integer boundaries of the new rows on the same device.
        max_len: Most new rows of any sequence (a Python int: the grid size).
        k_cache: ``(B, C, H, d_qk)``; the last dimension contiguous.
        v_cache: ``(B, C, H, d_v)``.
        cache_lengths: ``(B,)`` cached rows per sequence.
        alpha: Scale of ``q . k``.
        scale_len: The constant ``n``; the positional table has ``2n - 1`` rows.
        num_targets: ``(B,)`` candidates among the new rows, or None.
        pos_bias: ``(2 * scale_len - 1,)`` or None.
        time_bias: ``(num_buckets + 1,)`` or None.
        timestamps: ``(sum_M,)`` event times of the new rows; required with ``time_bias``.
        cache_timestamps: ``(B, C)`` event times of the cached rows; required with ``time_bias``.
        query_times: ``(B,)`` request time after each sequence's last new row.
        next_ts: ``(sum_M,)`` precomputed ``next_timestamps(timestamps, offsets, query_times)``, or None.

    Returns:
        ``(sum_M, H, d_v)`` in the dtype of ``v``.

    """
    check_cache_inputs(q, k, v, offsets, k_cache, v_cache, cache_lengths, time_bias, timestamps, cache_timestamps)
    if pos_bias is not None and pos_bias.numel() != 2 * scale_len - 1:
        raise ValueError(f"pos_bias needs 2 * scale_len - 1 rows, not {pos_bias.numel()}")
    total, num_heads, d_qk = q.shape
    d_v = v.shape[2]
    batch = offsets.numel() - 1
    if total == 0 or batch == 0 or max_len == 0:
        return v.new_zeros(v.shape)
    q, k, v, k_cache, v_cache = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v, k_cache, v_cache))
    offsets, cache_lengths = offsets.contiguous(), cache_lengths.contiguous()
    ts = cache_ts = None
    if time_bias is not None:
        ts = timestamps.contiguous()
        cache_ts = cache_timestamps if cache_timestamps.stride(-1) == 1 else cache_timestamps.contiguous()
        next_ts = (next_timestamps(ts, offsets, query_times) if next_ts is None else next_ts).contiguous()  # (sum_M,)
    max_cached = k_cache.shape[1]
    split = _num_splits(q.device, batch * num_heads * triton.cdiv(max_len, 64), max_cached)
    if split == 1:
        out = torch.empty_like(v) if _POISON is None else torch.full_like(v, _POISON)  # (sum_M, H, d_v)
        parts, stride_os = out, 0
    else:
        parts = torch.empty((split, *v.shape), dtype=torch.float32, device=v.device)  # (S, sum_M, H, d_v)
        if _POISON is not None:
            parts.fill_(_POISON)
        stride_os = parts.stride(0)
    dummy = offsets
    args = [
        q, k, v, k_cache, v_cache, parts, offsets, cache_lengths,
        num_targets if num_targets is not None else dummy,
        pos_bias.reshape(-1) if pos_bias is not None else dummy,
        _time_lookup_table(time_bias) if time_bias is not None else dummy,
        ts if ts is not None else dummy,
        cache_ts if cache_ts is not None else dummy,
        next_ts if next_ts is not None else dummy,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), cache_ts.stride(0) if cache_ts is not None else 0,
        stride_os, parts.stride(-3), parts.stride(-2),
        float(alpha), 1.0 / scale_len, int(scale_len),
        num_heads, split, _next_pow2(max_len), _next_pow2(max_cached),
    ]
    meta = dict(
        D_QK=d_qk, D_V=d_v, BLOCK_DQK=max(16, _next_pow2(d_qk)), BLOCK_DV=max(16, _next_pow2(d_v)),
        HAS_TARGETS=num_targets is not None, HAS_POS=pos_bias is not None, HAS_TIME=time_bias is not None,
        FAST=(q.dtype != torch.float32 and not _interpreting()),
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=(q.dtype == torch.bfloat16 and _interpreting()),
        REL_TS=tl.float32 if ts is not None and ts.dtype.is_floating_point else tl.int32,
        FAST_LOG=_fast_log(q.dtype),  # the full kernel's bucketing, so cached and full rows agree
    )

    def grid(m):
        return (batch * num_heads, triton.cdiv(max_len, m["BLOCK_M"]), split)

    if _interpreting():
        bm, bn = _INTERPRET_BLOCKS
        _cached_fwd_kernel[grid({"BLOCK_M": bm})](*args, **meta, BLOCK_M=bm, BLOCK_N=bn)
    else:
        _tuned[grid](*args, **meta)
    return parts if split == 1 else parts.sum(0).to(v.dtype)


__all__ = ["cached_hstu_attention"]
