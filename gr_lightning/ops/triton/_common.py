"""Element-wise pieces shared by the Triton HSTU kernels (Zhai et al. 2024, Eq. 2).

The SiLU's sigmoid, the relative-bias table rows and the dot product live here once, so that full and
cached attention compute the same numbers on the same inputs.
"""

from __future__ import annotations

import math
import os
import struct
from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch import Tensor

from gr_lightning.ops.pytorch.hstu_attention import TIME_BUCKET_SCALE, TIME_BUCKET_WIDTH

#: Buckets per unit of log-seconds (the reference's ``TIME_BUCKET_SCALE``).
_TIME_BUCKET_SCALE: tl.constexpr = tl.constexpr(TIME_BUCKET_SCALE)


def interpreting() -> bool:
    """Whether Triton runs on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fast_log(dtype: torch.dtype) -> bool:
    """Whether kernels on inputs of ``dtype`` take the temporal bucket's approximate logarithm (``time_code``).

    Not for fp32: fp32 results are compared with the reference at 1e-4, where one pair in another bucket
    shows. Not on the interpreter, which has no inline PTX.
    """
    return dtype != torch.float32 and not interpreting()


def next_pow2(x: int) -> int:
    """Smallest power of two >= ``x`` (1 for ``x <= 1``)."""
    return 1 << max(int(x) - 1, 0).bit_length()


@triton.jit
def _tanh_approx(x):
    """``tanh(x)`` by one ``tanh.approx.f32`` (one MUFU op; ~5e-4 relative error)."""
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def silu_half(h, FAST: tl.constexpr):
    """``SiLU(s)`` of a score ``s`` given as its half ``h = s / 2`` (Eq. 2's ``phi``).

    ``sigmoid(s) = (1 + tanh(s / 2)) / 2``, so ``SiLU(s) = h * tanh(h) + h``: with FAST one ``tanh.approx``
    and one FMA, instead of ex2 + rcp with range fix-ups. The kernels fold the half into ``alpha`` and
    into the bias terms they add (halving is exact), which saves two multiplies per pair. They take FAST
    for bf16 and fp16 inputs, forward and backward alike: the ~5e-4 relative error is below their
    rounding. (A packed ``tanh.approx.bf16x2`` measured no faster on the H100 at 32x4096; see
    benchmarks/NOTES-kernels.md.) Without FAST: the exact ``s * sigmoid(s)``.
    """
    if FAST:
        return h * _tanh_approx(h) + h
    else:
        s = 2.0 * h
        return s * tl.sigmoid(s)


@triton.jit
def silu(s, FAST: tl.constexpr):
    """``SiLU(s)`` (see ``silu_half``)."""
    return silu_half(0.5 * s, FAST)


@triton.jit
def silu_half_grad2(da, h, FAST: tl.constexpr):
    """Twice the score gradient, ``2 dS = 2 dA SiLU'(s)``, for ``h = s / 2`` (see ``silu_half``).

    ``SiLU'(s) = sigmoid(s) (1 + s (1 - sigmoid(s))) = (1 + t) (1 + h (1 - t)) / 2`` with ``t = tanh(h)``;
    FAST computes ``d (h - h t) + d`` with ``d = dA (1 + t)``: one MUFU op and four FP instructions. Callers
    fold the half into the scale they apply once per output tile.
    """
    if FAST:
        t = _tanh_approx(h)
        d = da * (1.0 + t)
        return d * (h - h * t) + d
    else:
        s = 2.0 * h
        sig = tl.sigmoid(s)
        return 2.0 * da * sig * (1.0 + s * (1.0 - sig))


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


#: A temporal bucket ``b`` travels as the int32 code ``TIME_CODE0 + b``: the bits of the float ``2**23 + b``.
#: Floats in ``[2**23, 2**24)`` are spaced by one, so an fma rounded toward minus infinity lands on the
#: code of ``floor(x)`` directly (``time_code``), and ``time_slot`` folds the offset into a table's base.
TIME_CODE0: tl.constexpr = tl.constexpr(0x4B000000)

#: Relative times are clamped to ``+-2**67`` s before gaps are taken, so no bucket exceeds 156
#: (``ln(2**68) / 0.301``) and the lookup table (``time_lookup_table``) covers every bucket a kernel can
#: compute: no per-pair clamp.
TIME_LIMIT: tl.constexpr = tl.constexpr(2.0**67)
_TIME_TABLE_MIN_ROWS = 160


@lru_cache(maxsize=16)
def _time_table_rows(num_buckets: int, device: torch.device) -> Tensor:
    """Row of the temporal table behind each row of its lookup table."""
    rows = max(num_buckets + 2, _TIME_TABLE_MIN_ROWS)
    return (torch.arange(rows, device=device) - 1).clamp(0, num_buckets)


def time_lookup_table(time_bias: Tensor) -> Tensor:
    """The temporal table as the kernels read it: bucket ``b`` at row ``b + 1``, fp32.

    Row 0 repeats bucket 0 (``lg2.approx(1)`` may land a hair below zero, bucket -1), and the last bucket
    repeats up to the largest bucket a gap can reach: the reference's clamp, paid once per call instead
    of twice per pair. fp32 because every pair gathers from it.
    """
    w = time_bias.reshape(-1).float()
    return w[_time_table_rows(w.numel() - 1, w.device)]


def fold_time_grad(grad: Tensor, num_buckets: int) -> Tensor:
    """Gradient of the temporal table from that of its lookup table (``time_lookup_table``)."""
    rows = _time_table_rows(num_buckets, grad.device)
    return torch.zeros(num_buckets + 1, dtype=grad.dtype, device=grad.device).index_add_(0, rows, grad)


def _f32_hex(x: float) -> str:
    """PTX spelling of a float32 immediate."""
    return f"0f{struct.unpack('<I', struct.pack('<f', x))[0]:08X}"


#: ``fma.rm(lg2(g), ln 2 / width, 2**23)``: the code of ``floor(ln(g) / width)`` in two instructions.
_LOG_FLOOR_ASM: tl.constexpr = tl.constexpr(
    "{ .reg .f32 t; lg2.approx.ftz.f32 t, $1; "
    f"fma.rm.f32 $0, t, {_f32_hex(math.log(2.0) / TIME_BUCKET_WIDTH)}, {_f32_hex(2.0**23)}; }}"
)


@triton.jit
def time_code(gap, FAST: tl.constexpr):
    """Code (``TIME_CODE0 + b``) of the temporal bucket ``b = floor(ln(max(|gap|, 1)) / 0.301)``.

    ``gap`` is a float time difference of at most ``2 * TIME_LIMIT``; the reference's upper clamp lives in
    the lookup table. FAST takes the logarithm with one ``lg2.approx`` and floors it with one ``fma.rm``
    (``_LOG_FLOOR_ASM``): no float-to-int conversion, which runs on the same quarter-rate pipe as the
    logarithm and the SiLU. Near a boundary it then differs from the reference by one bucket on about
    1e-5 of the gaps (``benchmarks/bucket_agreement.py``), which is inside bf16's noise; without FAST
    (fp32 inputs, and the interpreter) it computes the reference's float32 ``log(g) * (1 / 0.301)``
    (libdevice ``logf`` on the GPU, as torch's CUDA ``log``) and agrees with it exactly.
    """
    g = tl.maximum(tl.abs(gap), 1.0)
    if FAST:
        return tl.inline_asm_elementwise(_LOG_FLOOR_ASM, "=r,r", [g], dtype=tl.int32, is_pure=True, pack=1)
    else:
        return (tl.log(g) * _TIME_BUCKET_SCALE).to(tl.int32) + TIME_CODE0  # log(g) >= 0: truncation floors


@triton.jit
def time_slot(Table, code):
    """Address of the bucket with ``code`` in a lookup table (the offsets fold into the base once)."""
    return (Table + 1 - TIME_CODE0) + code


@triton.jit
def time_index(next_ts, ts, FAST: tl.constexpr):
    """Bucket code of the pair (request time ``next_ts``, event time ``ts``): see ``time_code``.

    ``next_ts`` and ``ts`` are relative to the sequence's first event (int32 for integer seconds), so the
    gap is exact before its conversion to float.
    """
    return time_code(tl.minimum(tl.abs((next_ts - ts).to(tl.float32)), 2 * TIME_LIMIT), FAST)


#: ``ld.global.nc`` of the fp32 at ``base + 4 * code`` (one ``mad.wide`` for the address).
_GATHER_ASM: tl.constexpr = tl.constexpr("{ .reg .u64 a; mad.wide.s32 a, $1, 4, $2; ld.global.nc.f32 $0, [a]; }")


@triton.jit
def time_gather(Table, codes, FAST: tl.constexpr):
    """Entries of an fp32 lookup table at bucket ``codes`` (see ``time_slot``).

    FAST gathers in inline PTX. That keeps the values in the layout of ``codes`` (the MMA layout of the
    scores they are added to): ``tl.load`` of a gather gets a blocked layout from Triton's coalescing pass,
    and converting a 128x128 fp32 tile back costs a shared-memory round trip and two barriers per tile.
    """
    if FAST:
        base = (Table + 1 - TIME_CODE0).to(tl.int64)
        return tl.inline_asm_elementwise(_GATHER_ASM, "=r,r,l", [codes, base], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return tl.load(time_slot(Table, codes))


#: At a run end (``$3`` non-zero): ``red.global.add.f32`` of ``$4`` at code ``$1`` and of ``-$4`` at code ``$2``
#: (``base`` ``$5``), a negative code adding zero to bucket 0 instead. Both atomics sit behind one branch:
#: ptxas turns a predicated global atomic into a branch around it anyway (a convergence region per element).
_RUN_END_ADD_ASM: tl.constexpr = tl.constexpr(
    "{ .reg .pred p, q; .reg .u64 a; .reg .b32 c; .reg .f32 w; "
    "setp.eq.s32 p, $3, 0; @p bra SKIP; "
    f"setp.lt.s32 q, $1, 0; selp.b32 c, {TIME_CODE0.value}, $1, q; selp.f32 w, 0f00000000, $4, q; "
    "mad.wide.s32 a, c, 4, $5; red.global.add.f32 [a], w; "
    f"setp.lt.s32 q, $2, 0; selp.b32 c, {TIME_CODE0.value}, $2, q; neg.f32 w, $4; selp.f32 w, 0f00000000, w, q; "
    "mad.wide.s32 a, c, 4, $5; red.global.add.f32 [a], w; "
    "SKIP: mov.u32 $0, 0; }"
)


@triton.jit
def time_run_end_add(Table, label, next_label, values, end, FAST: tl.constexpr):
    """Where ``end``: add ``values`` at bucket ``label`` and subtract them at ``next_label`` (see ``time_slot``).

    The two atomics of a run boundary in the temporal gradient's telescoping sums; a negative label (a
    masked pair) receives nothing. FAST adds in inline PTX (``_RUN_END_ADD_ASM``): each address is formed
    next to its atomic from the 32-bit code, and only where some lane of the warp ends a run.
    """
    if FAST:
        base = (Table + 1 - TIME_CODE0).to(tl.int64)
        tl.inline_asm_elementwise(_RUN_END_ADD_ASM, "=r,r,r,r,r,l", [label, next_label, end.to(tl.int32), values, base],
                                  dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.atomic_add(time_slot(Table, label), values, mask=end & (label >= 0), sem="relaxed")
        tl.atomic_add(time_slot(Table, next_label), -values, mask=end & (next_label >= 0), sem="relaxed")


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

