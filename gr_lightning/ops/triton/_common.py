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
def time_index(next_ts, ts, num_buckets, FAST: tl.constexpr):
    """Temporal bucket: ``clamp(floor(ln(max(|next_ts - ts|, 1)) / 0.301), 0, num_buckets)``.

    ``next_ts`` and ``ts`` are relative to the sequence's first event (int32 for integer seconds), so the
    gap is exact; FAST takes the logarithm with one ``lg2.approx`` (MUFU) instead of libdevice's ``logf``.
    """
    gap = tl.maximum(tl.abs(next_ts - ts), 1).to(tl.float32)
    if FAST:
        lg2 = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [gap], dtype=tl.float32,
                                        is_pure=True, pack=1)
        bucket = tl.floor(lg2 * (0.6931471805599453 / _TIME_BUCKET_WIDTH))
    else:
        bucket = tl.floor(tl.log(gap) / _TIME_BUCKET_WIDTH)
    bucket = tl.minimum(tl.maximum(bucket, 0.0), num_buckets * 1.0)
    return bucket.to(tl.int32)


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

