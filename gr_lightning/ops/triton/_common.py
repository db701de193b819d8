"""Element-wise pieces shared by the Triton HSTU kernels (Zhai et al. 2024, Eq. 2).

The SiLU's sigmoid, the relative-bias table rows and the dot product live here once, so that full and
cached attention compute the same numbers on the same inputs.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from gr_lightning.ops.pytorch.hstu_attention import TIME_BUCKET_WIDTH

#: Width of one temporal bucket in log-seconds (the reference's ``TIME_BUCKET_WIDTH``).
_TIME_BUCKET_WIDTH: tl.constexpr = tl.constexpr(TIME_BUCKET_WIDTH)


def interpreting() -> bool:
    """Whether Triton runs on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(x: int) -> int:
    """Smallest power of two >= ``x`` (1 for ``x <= 1``)."""
    return 1 << max(int(x) - 1, 0).bit_length()


@triton.jit
def sigmoid(s, FAST: tl.constexpr):
    """``sigmoid(s)``; FAST uses one ``tanh.approx`` (one MUFU op instead of ex2 + rcp).

    (A packed ``tanh.approx.bf16x2``, one MUFU op per two elements, measured no faster on the H100 at
    32x4096: the forward is not MUFU-bound. See benchmarks/NOTES-kernels.md.)
    """
    if FAST:
        t = tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=r,r", [s * 0.5], dtype=tl.float32, is_pure=True, pack=1
        )
        return 0.5 * t + 0.5
    else:
        return tl.sigmoid(s)


@triton.jit
def dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Return ``a @ b`` with fp32 accumulation; UPCAST works around the CPU interpreter's broken bf16 dot."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def pos_index(i, j, scale_len):
    """Row of the positional table: ``clamp(i - j, -(n-1), n-1) + n - 1``."""
    rel = tl.minimum(tl.maximum(i - j, 1 - scale_len), scale_len - 1)
    return rel + scale_len - 1


@triton.jit
def bucket_of_gap(gap, num_buckets, FAST: tl.constexpr):
    """Temporal bucket of a non-negative time gap: ``clamp(floor(ln(max(gap, 1)) / 0.301), 0, num_buckets)``.

    FAST takes the logarithm with one ``lg2.approx`` (MUFU) instead of libdevice's ``logf``. Clamping
    before the integer conversion makes the truncation a floor (the value is non-negative), so no
    ``floor`` instruction is needed.
    """
    gap = tl.maximum(gap, 1).to(tl.float32)
    if FAST:
        lg2 = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [gap], dtype=tl.float32,
                                        is_pure=True, pack=1)
        bucket = lg2 * (0.6931471805599453 / _TIME_BUCKET_WIDTH)
    else:
        bucket = tl.log(gap) / _TIME_BUCKET_WIDTH
    bucket = tl.minimum(tl.maximum(bucket, 0.0), num_buckets * 1.0)
    return bucket.to(tl.int32)


@triton.jit
def time_index(next_ts, ts, num_buckets, FAST: tl.constexpr):
    """Temporal bucket of the pair (request time ``next_ts``, event time ``ts``): see ``bucket_of_gap``.

    ``next_ts`` and ``ts`` are relative to the sequence's first event (int32 for integer seconds), so the
    gap is exact.
    """
    return bucket_of_gap(tl.abs(next_ts - ts), num_buckets, FAST)


@triton.jit
def uniform_bucket(next_lo, next_hi, ts_lo, ts_hi, num_buckets, FAST: tl.constexpr):
    """Whether every pair of a tile falls in one temporal bucket, and that bucket.

    The tile's request times lie in ``[next_lo, next_hi]`` and its event times in ``[ts_lo, ts_hi]``, so
    its gaps ``|next - ts|`` lie in ``[g_lo, g_hi]`` (``g_lo = 0`` when the signed range crosses zero). The
    bucket is non-decreasing in the gap, so the tile is uniform when both ends share a bucket. Far from
    the diagonal, a tile's gaps differ by less than a bucket's width (a factor of 1.35), and its bias
    becomes one scalar instead of a per-element logarithm and table gather.
    """
    d_lo = next_lo - ts_hi
    d_hi = next_hi - ts_lo
    g_hi = tl.maximum(tl.abs(d_lo), tl.abs(d_hi))
    g_lo = tl.where((d_lo <= 0) & (d_hi >= 0), 0, tl.minimum(tl.abs(d_lo), tl.abs(d_hi)))
    ends = bucket_of_gap(tl.where(tl.arange(0, 2) == 0, g_lo, g_hi), num_buckets, FAST)  # (2,)
    lo = tl.min(ends, axis=0)
    return lo == tl.max(ends, axis=0), lo


@triton.jit
def valid_range(x, valid, fallback):
    """``(min, max)`` of ``x`` over the ``valid`` entries; ``fallback`` must be one of them."""
    return tl.min(tl.where(valid, x, fallback), axis=0), tl.max(tl.where(valid, x, fallback), axis=0)


@triton.jit
def load_kv_tile(K, V, rows, valid, stride_kn, stride_vn, offs_dqk, offs_dv, D_QK: tl.constexpr,
                 D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, BOUND: tl.constexpr):
    """Key and value rows ``rows`` (int64) of one head; BOUND zero-fills rows where ``valid`` is False.

    An unbounded tile (every row inside the sequence) loads without row masks, and without column masks
    when the head width is a power of two.
    """
    k_ptrs = K + rows[:, None] * stride_kn + offs_dqk[None, :]
    v_ptrs = V + rows[:, None] * stride_vn + offs_dv[None, :]
    if BOUND:
        k = tl.load(k_ptrs, mask=valid[:, None] & (offs_dqk[None, :] < D_QK), other=0.0)
        v = tl.load(v_ptrs, mask=valid[:, None] & (offs_dv[None, :] < D_V), other=0.0)
    else:
        if BLOCK_DQK == D_QK:
            k = tl.load(k_ptrs)
        else:
            k = tl.load(k_ptrs, mask=offs_dqk[None, :] < D_QK, other=0.0)
        if BLOCK_DV == D_V:
            v = tl.load(v_ptrs)
        else:
            v = tl.load(v_ptrs, mask=offs_dv[None, :] < D_V, other=0.0)
    return k, v

