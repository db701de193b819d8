"""Fused jagged HSTU attention in Triton (Zhai et al. 2024, Eq. 2), forward and backward.

``A(i, j) = SiLU(alpha * q_i . k_j + rab_p(i - j) + rab_t(i, j)) / n`` for allowed ``(i, j)``, else 0,
``out_i = sum_j A(i, j) v_j``. There is no softmax, so a query tile needs no running maximum: each key
tile's contribution is final once it is added. Fully masked tiles are never visited (causal: the lower
triangle; with a window: the band plus the contextual columns and the candidate rows).

The kernels compute half scores ``S / 2``, whose SiLU is one ``tanh`` and one FMA (``silu_half``), and load
the streamed operands of unmasked tiles by TMA on Hopper (``_head_descriptors``).

The backward recomputes ``S = alpha * Q K^T + bias`` per tile and iterates over query tiles for a fixed
key tile (accumulating dK, dV in registers; dQ by fp32 atomics). Wide heads (d = 256) split it into a
dV pass, a dK pass and a dQ pass over query tiles, each holding one accumulator (``_backward_passes``).
The bias-table gradients come from a second kernel that sums ``dS`` over heads per (query tile, key
tile), walking the tiles of one diagonal (``start_m - start_n`` fixed) per program: the temporal gradient
is reduced per tile, the positional one summed in registers and reduced once per diagonal. This keeps
those reductions' registers out of the dK/dV kernel. Semantics match
:func:`gr_lightning.ops.pytorch.hstu_attention` exactly.
"""

from __future__ import annotations

from functools import lru_cache, partial

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from gr_lightning.ops.pytorch.hstu_attention import next_timestamps
from gr_lightning.ops.triton._common import TIME_LIMIT as _TIME_LIMIT
from gr_lightning.ops.triton._common import dot as _dot
from gr_lightning.ops.triton._common import fast_log as _fast_log
from gr_lightning.ops.triton._common import fold_time_grad as _fold_time_grad
from gr_lightning.ops.triton._common import interpreting as _interpreting
from gr_lightning.ops.triton._common import load_kv_tile as _load_kv_tile
from gr_lightning.ops.triton._common import next_pow2 as _next_pow2
from gr_lightning.ops.triton._common import pos_index as _pos_index
from gr_lightning.ops.triton._common import silu_half as _silu_half
from gr_lightning.ops.triton._common import silu_half_grad2 as _silu_half_grad2
from gr_lightning.ops.triton._common import time_code as _time_code
from gr_lightning.ops.triton._common import time_gather as _time_gather
from gr_lightning.ops.triton._common import time_lookup_table as _time_lookup_table
from gr_lightning.ops.triton._common import time_run_end_add as _time_run_end_add

#: Tests set this to a float (NaN) so that outputs start poisoned and unwritten elements show.
_POISON: float | None = None

#: Tests set this to ``(BLOCK_M, BLOCK_N)`` pairs to force the interpreter's tile shapes.
_INTERPRET_FWD_BLOCKS: tuple[int, int] = (16, 16)
_INTERPRET_BWD_BLOCKS: tuple[int, int] = (16, 16)
_INTERPRET_BIAS_BLOCKS: tuple[int, int] = (16, 16)

#: Columns of the expanded positional table (``_expand_pos_bias``): the widest key tile of any config.
_POS_WIDTH = 128
_POS_W: tl.constexpr = tl.constexpr(_POS_WIDTH)

#: Benchmarks set this to ``{"BLOCK_M": .., "BLOCK_N": .., "num_warps": .., "num_stages": ..}`` to skip
#: autotuning (e.g. for correctness checks on odd shapes); None autotunes on GPU.
_FIXED_CONFIG: dict | None = None


# ----------------------------------------------------------------------------------------------------
# Element-wise helpers
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _allowed(i, j, seq_len, hist_end, num_contextual, window,
             HAS_TARGETS: tl.constexpr, HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Evaluate the reference's ``attention_mask`` at broadcastable query ``i`` and key ``j`` positions."""
    rule = j <= i
    if HAS_TARGETS:
        rule = rule & (j < hist_end)
    if HAS_WINDOW:
        if HAS_CONTEXT:
            rule = rule & ((i - j <= window) | (j < num_contextual))
        else:
            rule = rule & (i - j <= window)
    if HAS_CONTEXT:
        rule = rule | ((i < num_contextual) & (j < hist_end))
    if HAS_TARGETS:
        rule = tl.where(i < hist_end, rule, (j < hist_end) | (j == i))
    return rule & (i < seq_len) & (j < seq_len)


@triton.jit
def _zero_disallowed(x, offs_m, offs_n, seq_len, hist_end, num_contextual, window, MASKED: tl.constexpr,
                     HAS_TARGETS: tl.constexpr, HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """``x`` ``(BLOCK_M, BLOCK_N)`` with the pairs ``_allowed`` rejects set to zero; unchanged unless MASKED."""
    if MASKED:
        ok = _allowed(offs_m[:, None], offs_n[None, :], seq_len, hist_end, num_contextual, window, HAS_TARGETS,
                      HAS_CONTEXT, HAS_WINDOW)
        x = tl.where(ok, x, 0.0)
    return x


@triton.jit
def _rel_times(Ts, seq_start, pos, seq_len, origin, HAS_TIME: tl.constexpr):
    """Times of the sequence's rows ``pos`` relative to ``origin``, as float32 within ``+-TIME_LIMIT``.

    ``origin`` is the event time of a tile's first row, so the gaps between nearby events (under ``2**24``
    s, 194 days, apart) are exact, and a far event's gap is at most an ulp off, as coarse as
    ``lg2.approx``. One float subtraction per pair then gives its gap. Integer (int64) differences
    stay below the limit, so only float times are clamped. Zeros without the temporal bias.
    """
    if HAS_TIME:
        t = tl.load(Ts + seq_start + pos, mask=pos < seq_len, other=0)
        rel = (t - origin).to(tl.float32)
        if t.dtype.is_floating():
            rel = tl.minimum(tl.maximum(rel, -_TIME_LIMIT), _TIME_LIMIT)
        return rel
    else:
        return tl.zeros(pos.shape, tl.float32)


@triton.jit
def _time_origin(Ts, seq_start, start, HAS_TIME: tl.constexpr):
    """The event time of a tile's first row ``start``: the origin of its ``_rel_times``."""
    if HAS_TIME:
        return tl.load(Ts + seq_start + start)
    else:
        return 0


# ----------------------------------------------------------------------------------------------------
# Relative-bias tiles shared by the three kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _pos_tile(PosE, offs_m, start_n, pos_center, BLOCK_N: tl.constexpr, TRANSPOSED: tl.constexpr):
    """The tile's positional bias, one 2-D block of the expanded table (see ``_expand_pos_bias``).

    Row ``x = i - start_n + pos_center`` of the expanded table holds ``w[clamp(i - start_n - c)]`` in
    column ``c``, so a tile is ``BLOCK_M`` consecutive rows: a coalesced load, no per-element index
    arithmetic or gather. Returns ``(BLOCK_M, BLOCK_N)``, or ``(BLOCK_N, BLOCK_M)`` when TRANSPOSED.
    """
    x = offs_m - start_n + pos_center  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_N)
    if TRANSPOSED:
        ptrs = PosE + x[None, :] * _POS_W + cols[:, None]
    else:
        ptrs = PosE + x[:, None] * _POS_W + cols[None, :]
    return tl.load(ptrs).to(tl.float32)


@triton.jit
def _time_tile(TimeBias, next_f, ts_f, FAST_LOG: tl.constexpr, TRANSPOSED: tl.constexpr):
    """A tile's temporal bias and bucket codes from its request and event times (``_rel_times``).

    ``(BLOCK_M, BLOCK_N)``, or ``(BLOCK_N, BLOCK_M)`` when TRANSPOSED. Per pair: a subtraction, a max, the
    two-instruction bucket (``time_code``) and one gather that stays in the MMA layout (``time_gather``).
    """
    if TRANSPOSED:
        codes = _time_code(next_f[None, :] - ts_f[:, None], FAST_LOG)  # (BLOCK_N, BLOCK_M)
    else:
        codes = _time_code(next_f[:, None] - ts_f[None, :], FAST_LOG)  # (BLOCK_M, BLOCK_N)
    return _time_gather(TimeBias, codes, FAST_LOG), codes


@triton.jit
def _key_ranges(start_m, seq_len, hist_end, num_contextual, window, HAS_CONTEXT: tl.constexpr,
                HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tiles a query tile visits.

    ``[0, ctx_hi)``, ``[lo, full_lo)`` and ``[mid, hi)`` need the mask, ``[full_lo, full_hi)`` does not; the
    first two exist only with a window.
    """
    hi = tl.minimum(start_m + BLOCK_M, seq_len)
    if HAS_CONTEXT:  # noqa: SIM102 (a constexpr guard around a run-time test)
        if start_m < num_contextual:
            hi = seq_len
    full_hi = (tl.minimum(start_m, hist_end) // BLOCK_N) * BLOCK_N
    lo = start_m * 0
    full_lo = start_m * 0
    ctx_hi = start_m * 0
    if HAS_WINDOW:
        narrow = start_m + BLOCK_M <= hist_end  # no candidate row: every row is windowed
        if HAS_CONTEXT:
            narrow = narrow & (start_m >= num_contextual)
        if narrow:
            lo = (tl.maximum(start_m - window, 0) // BLOCK_N) * BLOCK_N
            full_lo = tl.cdiv(tl.maximum(start_m + BLOCK_M - 1 - window, 0), BLOCK_N) * BLOCK_N
            full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
            if HAS_CONTEXT:  # contextual key columns stay visible to every history row
                ctx_hi = tl.minimum(tl.cdiv(num_contextual, BLOCK_N) * BLOCK_N, lo)
        else:
            full_lo = full_hi  # mixed rows: every tile is masked
    return ctx_hi, lo, full_lo, full_hi, tl.maximum(full_hi, full_lo), hi


# ----------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _key_tile_scores(q, K, V, KDesc, VDesc, h, Ts, origin, PosE, TimeBias, next_f, offs_m, offs_n, start_n,
                     seq_start, seq_len, stride_kn, stride_vn, half_alpha, pos_center, offs_dqk, offs_dv,
                     D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                     BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
                     PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_LOG: tl.constexpr, KV_TMA: tl.constexpr):
    """A query tile's half scores ``S / 2 = (alpha * Q K^T + bias) / 2`` against the key tile at ``start_n``.

    KV_TMA loads an unmasked tile's K, V rows through the descriptors ``KDesc``, ``VDesc`` (head ``h``'s
    columns of the ``(sum_N, H * d)`` views); masked tiles, which may end past the sequence, load through
    the pointers ``K``, ``V`` (already at head ``h``) with row masks. Returns ``S / 2`` ``(BLOCK_M, BLOCK_N)``
    (see ``silu_half``), ``K`` ``(BLOCK_N, BLOCK_DQK)`` and ``V`` ``(BLOCK_N, BLOCK_DV)``.
    """
    if KV_TMA and not MASKED:
        row0 = (seq_start + start_n).to(tl.int32)
        k = KDesc.load([row0, h * BLOCK_DQK])
        v = VDesc.load([row0, h * BLOCK_DV])
    else:
        rows = (seq_start + offs_n).to(tl.int64)
        k, v = _load_kv_tile(K, V, rows, offs_n < seq_len, stride_kn, stride_vn, offs_dqk, offs_dv, D_QK, D_V,
                             BLOCK_DQK, BLOCK_DV, MASKED)
    hs = _dot(q, tl.trans(k), PREC, UPCAST) * half_alpha  # (BLOCK_M, BLOCK_N)
    if HAS_POS:
        hs += 0.5 * _pos_tile(PosE, offs_m, start_n, pos_center, BLOCK_N, False)
    if HAS_TIME:
        ts_f = _rel_times(Ts, seq_start, offs_n, seq_len, origin, HAS_TIME)  # (BLOCK_N,)
        hs += 0.5 * _time_tile(TimeBias, next_f, ts_f, FAST_LOG, False)[0]
    return hs, k, v


@triton.jit
def _fwd_tile(acc, q, K, V, KDesc, VDesc, h, Ts, origin, PosE, TimeBias, next_f, offs_m, start_n,
              seq_start, seq_len, hist_end, stride_kn, stride_vn, half_alpha, pos_center,
              num_contextual, window, offs_dqk, offs_dv, D_QK: tl.constexpr, D_V: tl.constexpr,
              BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_CONTEXT: tl.constexpr,
              HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, FAST: tl.constexpr,
              PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_LOG: tl.constexpr, KV_TMA: tl.constexpr):
    """Add one key tile's contribution ``SiLU(S) @ V`` to ``acc`` (the caller divides by ``n`` once).

    Unmasked tiles skip every check.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    hs, _k, v = _key_tile_scores(q, K, V, KDesc, VDesc, h, Ts, origin, PosE, TimeBias, next_f, offs_m, offs_n,
                                start_n, seq_start, seq_len, stride_kn, stride_vn, half_alpha, pos_center, offs_dqk,
                                offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV, BLOCK_N, MASKED, HAS_POS, HAS_TIME, PREC,
                                UPCAST, FAST_LOG, KV_TMA)
    a = _zero_disallowed(_silu_half(hs, FAST), offs_m, offs_n, seq_len, hist_end, num_contextual, window, MASKED,
                         HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW)
    acc += _dot(a.to(v.dtype), v, PREC, UPCAST)
    return acc


@triton.jit
def _chained_start(t, start0, count0, start1, count1, start2, count2, start3, BLOCK: tl.constexpr):
    """Start of the ``t``-th tile of up to four tile ranges run back to back in one loop.

    Range ``r`` starts at ``start_r`` and holds ``count_r`` tiles; the loop's bound sets the last one's.
    One loop over all masked ranges compiles the tile body once instead of once per range.
    """
    start = start3 + (t - count0 - count1 - count2) * BLOCK
    start = tl.where(t < count0 + count1 + count2, start2 + (t - count0 - count1) * BLOCK, start)
    start = tl.where(t < count0 + count1, start1 + (t - count0) * BLOCK, start)
    return tl.where(t < count0, start0 + t * BLOCK, start)


@triton.jit
def _masked_key_count(ctx_hi, lo, full_lo, mid, hi, BLOCK_N: tl.constexpr):
    """Key tiles in the masked ranges of ``_key_ranges``: ``[0, ctx_hi)``, ``[lo, full_lo)``, ``[mid, hi)``.

    They run as one loop (``_masked_key_start``), so the masked tile body is compiled once, not thrice.
    """
    n_lo = tl.cdiv(tl.maximum(full_lo - lo, 0), BLOCK_N)
    return tl.cdiv(ctx_hi, BLOCK_N) + n_lo + tl.cdiv(tl.maximum(hi - mid, 0), BLOCK_N)


@triton.jit
def _masked_key_start(t, ctx_hi, lo, full_lo, mid, BLOCK_N: tl.constexpr):
    """First key of the ``t``-th masked key tile (see ``_masked_key_count``)."""
    n_ctx = tl.cdiv(ctx_hi, BLOCK_N)
    n_lo = tl.cdiv(tl.maximum(full_lo - lo, 0), BLOCK_N)
    return _chained_start(t, 0, n_ctx, lo, n_lo, mid, 0, mid, BLOCK_N)  # the last range runs to the loop's end


@triton.jit
def _sequence(Offsets, NumTargets, b, HAS_TARGETS: tl.constexpr):
    """Start, length and history end (first candidate row) of sequence ``b``."""
    seq_start = tl.load(Offsets + b)
    seq_len = (tl.load(Offsets + b + 1) - seq_start).to(tl.int32)
    hist_end = seq_len
    if HAS_TARGETS:
        hist_end = seq_len - tl.load(NumTargets + b).to(tl.int32)
    return seq_start, seq_len, hist_end


@triton.jit
def _query_tile(Offsets, NumTargets, H, HAS_TARGETS: tl.constexpr, TILE_MAJOR: tl.constexpr,
                BLOCK_M: tl.constexpr):
    """This program's head, sequence (start, length, history end) and first query row (``_grid``).

    Longest rows first: query tile m needs ~m key tiles, so the heaviest programs start first. TILE_MAJOR
    puts a (sequence, head)'s tiles side by side, so that they share its K, V in L2.
    """
    if TILE_MAJOR:
        pid_bh = tl.program_id(1)
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        pid_bh = tl.program_id(0)
        pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    seq_start, seq_len, hist_end = _sequence(Offsets, NumTargets, pid_bh // H, HAS_TARGETS)
    return pid_bh % H, seq_start, seq_len, hist_end, pid_m * BLOCK_M


@triton.jit
def _hstu_fwd_kernel(
    Q, K, V, Out, Offsets, NumTargets, PosE, TimeBias, Ts, NextTs, KDesc, VDesc,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    alpha, inv_scale, pos_center, num_contextual, window, time_rows, H, MAX_LEN_BUCKET,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_TARGETS: tl.constexpr, HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, FAST: tl.constexpr, PREC: tl.constexpr,
    UPCAST: tl.constexpr, FAST_LOG: tl.constexpr, KV_TMA: tl.constexpr,
    TILE_MAJOR: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    h, seq_start, seq_len, hist_end, start_m = _query_tile(Offsets, NumTargets, H, HAS_TARGETS, TILE_MAJOR, BLOCK_M)
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    origin = _time_origin(Ts, seq_start, start_m, HAS_TIME)
    next_f = _rel_times(NextTs, seq_start, offs_m, seq_len, origin, HAS_TIME)  # (BLOCK_M,) request times
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_rows = (seq_start + offs_m).to(tl.int64)
    q = tl.load(Q + h * stride_qh + q_rows[:, None] * stride_qn + offs_dqk[None, :],
                mask=(offs_m[:, None] < seq_len) & (offs_dqk[None, :] < D_QK), other=0.0)
    Kh = K + h * stride_kh
    Vh = V + h * stride_vh
    half_alpha = alpha * 0.5  # the tiles compute S / 2 (see silu_half)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    ctx_hi, lo, full_lo, full_hi, mid, hi = _key_ranges(start_m, seq_len, hist_end, num_contextual, window,
                                                         HAS_CONTEXT, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(full_lo, full_hi, BLOCK_N):
        acc = _fwd_tile(acc, q, Kh, Vh, KDesc, VDesc, h, Ts, origin, PosE, TimeBias, next_f, offs_m, start_n,
                        seq_start, seq_len, hist_end, stride_kn, stride_vn, half_alpha, pos_center,
                        num_contextual, window, offs_dqk, offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV,
                        BLOCK_M, BLOCK_N, False, HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW, HAS_POS, HAS_TIME, FAST,
                        PREC, UPCAST, FAST_LOG, KV_TMA)
    for t in range(0, _masked_key_count(ctx_hi, lo, full_lo, mid, hi, BLOCK_N)):
        start_n = _masked_key_start(t, ctx_hi, lo, full_lo, mid, BLOCK_N)
        acc = _fwd_tile(acc, q, Kh, Vh, KDesc, VDesc, h, Ts, origin, PosE, TimeBias, next_f, offs_m, start_n,
                        seq_start, seq_len, hist_end, stride_kn, stride_vn, half_alpha, pos_center,
                        num_contextual, window, offs_dqk, offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV,
                        BLOCK_M, BLOCK_N, True, HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW, HAS_POS, HAS_TIME, FAST,
                        PREC, UPCAST, FAST_LOG, KV_TMA)

    o_ptrs = Out + h * stride_oh + q_rows[:, None] * stride_on + offs_dv[None, :]
    o_mask = (offs_m[:, None] < seq_len) & (offs_dv[None, :] < D_V)
    tl.store(o_ptrs, (acc * inv_scale).to(Out.dtype.element_ty), mask=o_mask)


# ----------------------------------------------------------------------------------------------------
# Backward of q, k, v: one program per (sequence, head, key tile); dK, dV in registers, dQ by atomics
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _query_ranges(start_n, seq_len, hist_end, num_contextual, window, HAS_TARGETS: tl.constexpr,
                  HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """Query tiles that see a key tile.

    ``[0, ctx_hi)``: contextual rows above the diagonal; ``[m_lo, m_diag)``: straddling the diagonal;
    ``[m_diag, m_hi)``: below it (masked only when ``below_masked``); with a window, ``[m_cand, seq_len)``:
    candidate rows past the band. All but the third always need the mask.
    """
    m_lo = (start_n // BLOCK_M) * BLOCK_M
    m_diag = m_lo + tl.cdiv(tl.minimum(start_n + BLOCK_N, seq_len) - m_lo, BLOCK_M) * BLOCK_M
    m_hi = seq_len
    key_is_history = start_n < hist_end
    if HAS_TARGETS:  # noqa: SIM102
        if start_n >= hist_end:
            m_hi = m_diag  # candidate keys are seen by their own row only
    m_cand = seq_len
    if HAS_WINDOW:
        windowed = key_is_history
        if HAS_CONTEXT:
            windowed = windowed & (start_n >= num_contextual)
        if windowed:
            band_hi = tl.minimum(start_n + BLOCK_N + window, m_hi)
            m_hi = tl.maximum(m_lo + tl.cdiv(band_hi - m_lo, BLOCK_M) * BLOCK_M, m_diag)
            if HAS_TARGETS:
                m_cand = tl.maximum((hist_end // BLOCK_M) * BLOCK_M, m_hi)
    ctx_hi = start_n * 0
    if HAS_CONTEXT:  # noqa: SIM102
        if key_is_history:  # contextual rows see every history key, also keys above the diagonal
            ctx_hi = tl.minimum(tl.cdiv(num_contextual, BLOCK_M) * BLOCK_M, m_lo)
    below_masked = HAS_WINDOW
    if HAS_TARGETS:
        below_masked = below_masked | (start_n + BLOCK_N > hist_end)
    return ctx_hi, m_lo, m_diag, m_hi, m_cand, below_masked


@triton.jit
def _scores_t(k, q, PosE, TimeBias, next_f, ts_f, offs_m, start_n, half_alpha, pos_center, HAS_POS: tl.constexpr,
              HAS_TIME: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_LOG: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """Half scores ``S^T / 2 = (alpha * K Q^T + bias^T) / 2``, ``(BLOCK_N, BLOCK_M)`` (see ``silu_half``)."""
    hs = _dot(k, tl.trans(q), PREC, UPCAST) * half_alpha  # (BLOCK_N, BLOCK_M)
    if HAS_POS:
        hs += 0.5 * _pos_tile(PosE, offs_m, start_n, pos_center, BLOCK_N, True)
    if HAS_TIME:
        hs += 0.5 * _time_tile(TimeBias, next_f, ts_f, FAST_LOG, True)[0]
    return hs


@triton.jit
def _bwd_tile(dk, dv, k, v, Q, DO, DQ, DQDesc, QDesc, DODesc, h, NextTs, origin, ts_f, PosE, TimeBias, offs_n, start_n,
              start_m, seq_start, seq_len, hist_end, stride_qn, stride_don, stride_dqn,
              half_alpha, inv_scale, pos_center, num_contextual, window, offs_dqk, offs_dv,
              D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
              HAS_TARGETS: tl.constexpr, HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr,
              HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
              FAST: tl.constexpr, FAST_LOG: tl.constexpr, DQ_TMA: tl.constexpr, WITH_DK: tl.constexpr,
              WITH_DV: tl.constexpr, WITH_DQ: tl.constexpr, QO_TMA: tl.constexpr, BLOCK_N: tl.constexpr):
    """One query tile against the program's key tile, in the transposed orientation ``(BLOCK_N, BLOCK_M)``.

    WITH_DV adds to dV, WITH_DK to dK; WITH_DQ (with WITH_DK) sends this tile's dQ out by atomics: with
    DQ_TMA one bulk tensor reduction of the whole tile (its rows past the sequence are zero, so they may
    land on the next sequence's rows), else one atomic per element. QO_TMA loads an unmasked tile's Q, dO
    rows (all inside the sequence) through the descriptors ``QDesc``, ``DODesc`` (head ``h``'s columns).
    """
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < seq_len
    rows = (seq_start + offs_m).to(tl.int64)
    if QO_TMA and not MASKED:
        row0 = (seq_start + start_m).to(tl.int32)
        q = QDesc.load([row0, h * D_QK])
        do = DODesc.load([row0, h * D_V])
    else:
        q = tl.load(Q + rows[:, None] * stride_qn + offs_dqk[None, :],
                    mask=row_ok[:, None] & (offs_dqk[None, :] < D_QK), other=0.0)
        do = tl.load(DO + rows[:, None] * stride_don + offs_dv[None, :],
                     mask=row_ok[:, None] & (offs_dv[None, :] < D_V), other=0.0)
    next_f = _rel_times(NextTs, seq_start, offs_m, seq_len, origin, HAS_TIME)  # (BLOCK_M,)
    hs = _scores_t(k, q, PosE, TimeBias, next_f, ts_f, offs_m, start_n, half_alpha, pos_center, HAS_POS, HAS_TIME,
                   PREC, UPCAST, FAST_LOG, BLOCK_N)
    # ds is 2 dS (silu_half_grad2). The 1 / n of A and dS, and the 1 / 2 of ds, are applied once to dK, dV and
    # each dQ tile. dA's dot is issued before dV's, as in the fused kernel measured at 4.72 ms (32x4096, no
    # bias, attention_h100_inv_scale.json); with dV's dot first it measured 5.27 ms
    # (attention_h100_session7.json).
    if WITH_DV:
        a = _silu_half(hs, FAST)
    if WITH_DK:
        da = _dot(v, tl.trans(do), PREC, UPCAST)  # (BLOCK_N, BLOCK_M) = dA^T
        ds = _silu_half_grad2(da, hs, FAST)
    if MASKED:
        ok = _allowed(offs_m[None, :], offs_n[:, None], seq_len, hist_end, num_contextual, window, HAS_TARGETS,
                      HAS_CONTEXT, HAS_WINDOW)
        if WITH_DV:
            a = tl.where(ok, a, 0.0)
        if WITH_DK:
            ds = tl.where(ok, ds, 0.0)
    if WITH_DV:
        dv += _dot(a.to(do.dtype), do, PREC, UPCAST)
    if WITH_DK:
        ds_lp = ds.to(q.dtype)
        dk += _dot(ds_lp, q, PREC, UPCAST)
        if WITH_DQ:
            dq = _dot(tl.trans(ds_lp), k, PREC, UPCAST) * (half_alpha * inv_scale)  # (BLOCK_M, BLOCK_DQK)
            if DQ_TMA:
                DQDesc.atomic_add([(seq_start + start_m).to(tl.int32), h * D_QK], dq)
            else:
                tl.atomic_add(DQ + rows[:, None] * stride_dqn + offs_dqk[None, :], dq,
                              mask=row_ok[:, None] & (offs_dqk[None, :] < D_QK), sem="relaxed")
    return dk, dv


@triton.jit
def _hstu_bwd_kernel(
    Q, K, V, DO, DQ, DQDesc, QDesc, DODesc, DK, DV, Offsets, NumTargets, PosE, TimeBias, Ts, NextTs,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_don, stride_doh,
    stride_dqn, stride_dqh, stride_dkn, stride_dkh, stride_dvn, stride_dvh,
    alpha, inv_scale, pos_center, num_contextual, window, time_rows, H, MAX_LEN_BUCKET,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_TARGETS: tl.constexpr, HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    FAST: tl.constexpr, FAST_LOG: tl.constexpr, DQ_TMA: tl.constexpr, WITH_DK: tl.constexpr,
    WITH_DV: tl.constexpr, WITH_DQ: tl.constexpr, QO_TMA: tl.constexpr, TILE_MAJOR: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Key tile n sees ~(N - n) query tiles: natural order is longest first.
    if TILE_MAJOR:  # a (sequence, head)'s tiles run side by side and share its Q, dO and dQ in L2
        pid_bh = tl.program_id(1)
        pid_n = tl.program_id(0)
    else:
        pid_bh = tl.program_id(0)
        pid_n = tl.program_id(1)
    h = pid_bh % H
    seq_start, seq_len, hist_end = _sequence(Offsets, NumTargets, pid_bh // H, HAS_TARGETS)
    start_n = pid_n * BLOCK_N
    if start_n >= seq_len:
        return

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k_rows = (seq_start + offs_n).to(tl.int64)
    k = tl.load(K + h * stride_kh + k_rows[:, None] * stride_kn + offs_dqk[None, :],
                mask=(offs_n[:, None] < seq_len) & (offs_dqk[None, :] < D_QK), other=0.0)
    v = tl.load(V + h * stride_vh + k_rows[:, None] * stride_vn + offs_dv[None, :],
                mask=(offs_n[:, None] < seq_len) & (offs_dv[None, :] < D_V), other=0.0)
    origin = _time_origin(Ts, seq_start, start_n, HAS_TIME)
    ts_f = _rel_times(Ts, seq_start, offs_n, seq_len, origin, HAS_TIME)  # (BLOCK_N,) event times of the keys
    Qh = Q + h * stride_qh
    DOh = DO + h * stride_doh
    DQh = DQ + h * stride_dqh
    half_alpha = alpha * 0.5  # the tiles compute S / 2 and 2 dS (see silu_half)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    ctx_hi, m_lo, m_diag, m_hi, m_cand, below_masked = _query_ranges(
        start_n, seq_len, hist_end, num_contextual, window, HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW, BLOCK_M, BLOCK_N)
    # Below the diagonal the tiles skip the mask unless below_masked. With QO_TMA the last, partial one
    # joins the masked loop: a TMA tile would read the next sequence's rows.
    free_hi = m_hi
    if QO_TMA:
        free_hi = tl.maximum(tl.minimum(m_hi, (seq_len // BLOCK_M) * BLOCK_M), m_diag)
    if below_masked:
        free_hi = m_diag
    n_below = tl.cdiv(tl.maximum(m_hi - free_hi, 0), BLOCK_M)
    for start_m in range(m_diag, free_hi, BLOCK_M):
        dk, dv = _bwd_tile(dk, dv, k, v, Qh, DOh, DQh, DQDesc, QDesc, DODesc, h, NextTs, origin, ts_f, PosE, TimeBias,
                           offs_n, start_n, start_m, seq_start, seq_len, hist_end, stride_qn, stride_don,
                           stride_dqn, half_alpha, inv_scale, pos_center, num_contextual, window, offs_dqk,
                           offs_dv, D_QK, D_V, BLOCK_M, False, HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW, HAS_POS,
                           HAS_TIME, PREC, UPCAST, FAST, FAST_LOG, DQ_TMA, WITH_DK, WITH_DV,
                           WITH_DQ, QO_TMA, BLOCK_N)
    # The masked ranges in one loop, so that this large tile body is compiled twice, not four times.
    n_ctx = tl.cdiv(ctx_hi, BLOCK_M)
    n_diag = tl.cdiv(m_diag - m_lo, BLOCK_M)
    n_cand = tl.cdiv(tl.maximum(seq_len - m_cand, 0), BLOCK_M)
    for t in range(0, n_ctx + n_diag + n_below + n_cand):
        start_m = _chained_start(t, 0, n_ctx, m_lo, n_diag, free_hi, n_below, m_cand, BLOCK_M)
        dk, dv = _bwd_tile(dk, dv, k, v, Qh, DOh, DQh, DQDesc, QDesc, DODesc, h, NextTs, origin, ts_f, PosE, TimeBias,
                           offs_n, start_n, start_m, seq_start, seq_len, hist_end, stride_qn, stride_don,
                           stride_dqn, half_alpha, inv_scale, pos_center, num_contextual, window, offs_dqk,
                           offs_dv, D_QK, D_V, BLOCK_M, True, HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW, HAS_POS,
                           HAS_TIME, PREC, UPCAST, FAST, FAST_LOG, DQ_TMA, WITH_DK, WITH_DV,
                           WITH_DQ, QO_TMA, BLOCK_N)

    key_ok = offs_n[:, None] < seq_len
    if WITH_DK:
        tl.store(DK + h * stride_dkh + k_rows[:, None] * stride_dkn + offs_dqk[None, :],
                 (dk * (half_alpha * inv_scale)).to(DK.dtype.element_ty), mask=key_ok & (offs_dqk[None, :] < D_QK))
    if WITH_DV:
        tl.store(DV + h * stride_dvh + k_rows[:, None] * stride_dvn + offs_dv[None, :],
                 (dv * inv_scale).to(DV.dtype.element_ty), mask=key_ok & (offs_dv[None, :] < D_V))


# ----------------------------------------------------------------------------------------------------
# Backward of q alone (wide heads): one program per (sequence, head, query tile), dQ in registers
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _dq_tile(dq, q, do, K, V, KDesc, VDesc, h, Ts, origin, PosE, TimeBias, next_f, offs_m, start_n, seq_start,
             seq_len, hist_end, stride_kn, stride_vn, half_alpha, pos_center, num_contextual, window, offs_dqk, offs_dv,
             D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_TARGETS: tl.constexpr,
             HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
             FAST: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, FAST_LOG: tl.constexpr,
             KV_TMA: tl.constexpr):
    """Add one key tile's ``2 dS @ K`` to ``dq`` (the caller applies ``alpha / (2 n)`` once)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    hs, k, v = _key_tile_scores(q, K, V, KDesc, VDesc, h, Ts, origin, PosE, TimeBias, next_f, offs_m, offs_n,
                                start_n, seq_start, seq_len, stride_kn, stride_vn, half_alpha, pos_center, offs_dqk,
                                offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV, BLOCK_N, MASKED, HAS_POS, HAS_TIME, PREC,
                                UPCAST, FAST_LOG, KV_TMA)
    da = _dot(do, tl.trans(v), PREC, UPCAST)  # (BLOCK_M, BLOCK_N) = dA
    ds = _zero_disallowed(_silu_half_grad2(da, hs, FAST), offs_m, offs_n, seq_len, hist_end, num_contextual,
                          window, MASKED, HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW)  # 2 dS
    dq += _dot(ds.to(k.dtype), k, PREC, UPCAST)
    return dq


@triton.jit
def _hstu_dq_kernel(
    Q, K, V, DO, DQ, Offsets, NumTargets, PosE, TimeBias, Ts, NextTs, KDesc, VDesc,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_don, stride_doh,
    stride_dqn, stride_dqh, alpha, inv_scale, pos_center, num_contextual, window, time_rows, H, MAX_LEN_BUCKET,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_TARGETS: tl.constexpr, HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, FAST: tl.constexpr, PREC: tl.constexpr,
    UPCAST: tl.constexpr, FAST_LOG: tl.constexpr, KV_TMA: tl.constexpr,
    TILE_MAJOR: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # The forward's walk over key tiles (same order, grid and masks), with dS @ K in place of A @ V: no
    # atomics.
    h, seq_start, seq_len, hist_end, start_m = _query_tile(Offsets, NumTargets, H, HAS_TARGETS, TILE_MAJOR, BLOCK_M)
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    origin = _time_origin(Ts, seq_start, start_m, HAS_TIME)
    next_f = _rel_times(NextTs, seq_start, offs_m, seq_len, origin, HAS_TIME)  # (BLOCK_M,) request times
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_rows = (seq_start + offs_m).to(tl.int64)
    row_ok = offs_m[:, None] < seq_len
    q = tl.load(Q + h * stride_qh + q_rows[:, None] * stride_qn + offs_dqk[None, :],
                mask=row_ok & (offs_dqk[None, :] < D_QK), other=0.0)
    do = tl.load(DO + h * stride_doh + q_rows[:, None] * stride_don + offs_dv[None, :],
                 mask=row_ok & (offs_dv[None, :] < D_V), other=0.0)
    Kh = K + h * stride_kh
    Vh = V + h * stride_vh
    half_alpha = alpha * 0.5  # the tiles compute S / 2 and 2 dS (see silu_half)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    ctx_hi, lo, full_lo, full_hi, mid, hi = _key_ranges(start_m, seq_len, hist_end, num_contextual, window,
                                                         HAS_CONTEXT, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(full_lo, full_hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, Kh, Vh, KDesc, VDesc, h, Ts, origin, PosE, TimeBias, next_f, offs_m, start_n,
                      seq_start, seq_len, hist_end, stride_kn, stride_vn, half_alpha, pos_center, num_contextual,
                      window, offs_dqk, offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV, BLOCK_M, BLOCK_N, False,
                      HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW, HAS_POS, HAS_TIME, FAST, PREC, UPCAST, FAST_LOG, KV_TMA)
    for t in range(0, _masked_key_count(ctx_hi, lo, full_lo, mid, hi, BLOCK_N)):
        start_n = _masked_key_start(t, ctx_hi, lo, full_lo, mid, BLOCK_N)
        dq = _dq_tile(dq, q, do, Kh, Vh, KDesc, VDesc, h, Ts, origin, PosE, TimeBias, next_f, offs_m, start_n,
                      seq_start, seq_len, hist_end, stride_kn, stride_vn, half_alpha, pos_center, num_contextual,
                      window, offs_dqk, offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV, BLOCK_M, BLOCK_N, True,
                      HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW, HAS_POS, HAS_TIME, FAST, PREC, UPCAST, FAST_LOG, KV_TMA)
    tl.store(DQ + h * stride_dqh + q_rows[:, None] * stride_dqn + offs_dqk[None, :],
             (dq * (half_alpha * inv_scale)).to(DQ.dtype.element_ty), mask=row_ok & (offs_dqk[None, :] < D_QK))


# ----------------------------------------------------------------------------------------------------
# Backward of the bias tables: one program per (sequence, tile diagonal), dS summed over heads
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _time_grad(DTime, ds, codes, ok, next_f, ts_f_next, ok_next, FAST_LOG: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Add the tile's ``dS`` (``(BLOCK_M, BLOCK_N)``, zero where masked) to the temporal-table gradient.

    Along the key axis a query's bucket changes only where the time gap crosses a bucket boundary, so
    each row is a few runs of equal bucket. With ``P`` the row prefix sums of ``dS``, a run ``[s, e]``
    sums to ``P[e] - P[s - 1]``: add ``P`` at each run end to its bucket and subtract it from the next
    run's bucket. This telescopes for any labels (exact whatever the event order); with time-ordered
    events it takes a few atomics per row instead of one per element. In the MMA layout of the tuner's
    configurations a row lies within one warp, so the prefix sum needs no shared memory. Labels are
    bucket codes (``time_code``); masked pairs get the label -1 and no atomics, so a bucket that no
    allowed pair falls in receives exactly zero.
    """
    prefix = tl.cumsum(ds, axis=1)  # (BLOCK_M, BLOCK_N)
    last = (tl.arange(0, BLOCK_N) == BLOCK_N - 1)[None, :]
    label = tl.where(ok, codes, -1)
    next_codes = _time_code(next_f[:, None] - ts_f_next[None, :], FAST_LOG)  # key n + 1
    next_label = tl.where(ok_next & ~last, next_codes, -1)
    end = (label != next_label) | last
    _time_run_end_add(DTime, label, next_label, prefix, end, FAST_LOG)


@triton.jit
def _pos_grad(DPos, acc, rel0, scale_len, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Add a diagonal's summed ``dS`` (``(BLOCK_M, BLOCK_N)``, pair ``(r, c)`` at ``i - j = rel0 + r - c``).

    Skew each row so that a column holds one relative position: ``z[r, k] = acc[r, (r + k) % BLOCK_N]``
    lies at ``i - j = rel0 - k + BLOCK_N * w`` with ``w = (r + k) // BLOCK_N``. Summing the rows per ``w``
    gives one vector of atomics each, with no two lanes on one row. A diagonal that reaches the clamped
    ends of the table adds per element. Runs once per program, not once per tile.
    """
    r = tl.arange(0, BLOCK_M)[:, None]
    k = tl.arange(0, BLOCK_N)[None, :]
    if (rel0 - (BLOCK_N - 1) >= 1 - scale_len) & (rel0 + BLOCK_M - 1 <= scale_len - 1):
        z = tl.gather(acc, (r + k) % BLOCK_N, 1)  # (BLOCK_M, BLOCK_N), each row rotated left by r
        wrap = (r + k) // BLOCK_N
        kk = tl.arange(0, BLOCK_N)
        base = DPos + rel0 + scale_len - 1
        for w in tl.static_range((BLOCK_M + BLOCK_N - 2) // BLOCK_N + 1):
            offset = w * BLOCK_N - kk  # (BLOCK_N,) i - j - rel0
            tl.atomic_add(base + offset, tl.sum(tl.where(wrap == w, z, 0.0), axis=0),
                          mask=(offset > -BLOCK_N) & (offset < BLOCK_M), sem="relaxed")
    else:
        tl.atomic_add(DPos + _pos_index(rel0 + r, k, scale_len), acc, sem="relaxed")


@triton.jit
def _bias_grad_tile(Q, K, V, DO, QDesc, KDesc, VDesc, DODesc, Ts, NextTs, PosE, TimeBias, DTime, start_m, start_n,
                    seq_start, seq_len, hist_end, stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh,
                    stride_don, stride_doh, alpha, inv_scale, pos_center, num_contextual, window, H, offs_dqk, offs_dv,
                    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                    HAS_TARGETS: tl.constexpr, HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr,
                    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, GRAD_TIME: tl.constexpr,
                    PREC: tl.constexpr, UPCAST: tl.constexpr, FAST: tl.constexpr, FAST_LOG: tl.constexpr,
                    TMA: tl.constexpr):
    """One tile's ``dS`` summed over heads, zero where masked, after adding its temporal gradient.

    The bias is the same for every head, so it is computed once per tile and the reductions run once
    per tile rather than once per head. With TMA an unmasked tile loads Q, dO, K, V through the
    descriptors; its key rows lie inside the sequence, and the rows of a last, partial query tile are
    zeroed after the sum. Returns ``(BLOCK_M, BLOCK_N)``.
    """
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    row_ok = offs_m < seq_len
    q_rows = (seq_start + offs_m).to(tl.int64)
    k_rows = (seq_start + offs_n).to(tl.int64)
    origin = _time_origin(Ts, seq_start, start_m, HAS_TIME)  # as the forward's, so the buckets agree
    next_f = _rel_times(NextTs, seq_start, offs_m, seq_len, origin, HAS_TIME)  # (BLOCK_M,) request times
    ts_f = _rel_times(Ts, seq_start, offs_n, seq_len, origin, HAS_TIME)  # (BLOCK_N,) event times
    half_bias = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)  # the tiles compute S / 2 and 2 dS (see silu_half)
    if HAS_POS:
        half_bias += 0.5 * _pos_tile(PosE, offs_m, start_n, pos_center, BLOCK_N, False)
    codes = tl.full((BLOCK_M, BLOCK_N), -1, tl.int32)
    if HAS_TIME:
        time_bias, codes = _time_tile(TimeBias, next_f, ts_f, FAST_LOG, False)
        half_bias += 0.5 * time_bias
    half_alpha = alpha * 0.5
    ds_sum = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for h in range(H):
        if TMA and not MASKED:
            q = QDesc.load([(seq_start + start_m).to(tl.int32), h * D_QK])
            do = DODesc.load([(seq_start + start_m).to(tl.int32), h * D_V])
            k = KDesc.load([(seq_start + start_n).to(tl.int32), h * D_QK])
            v = VDesc.load([(seq_start + start_n).to(tl.int32), h * D_V])
        else:
            q = tl.load(Q + h * stride_qh + q_rows[:, None] * stride_qn + offs_dqk[None, :],
                        mask=row_ok[:, None] & (offs_dqk[None, :] < D_QK), other=0.0)
            do = tl.load(DO + h * stride_doh + q_rows[:, None] * stride_don + offs_dv[None, :],
                         mask=row_ok[:, None] & (offs_dv[None, :] < D_V), other=0.0)
            k, v = _load_kv_tile(K + h * stride_kh, V + h * stride_vh, k_rows, offs_n < seq_len, stride_kn,
                                 stride_vn, offs_dqk, offs_dv, D_QK, D_V, BLOCK_DQK, BLOCK_DV, MASKED)
        hs = _dot(q, tl.trans(k), PREC, UPCAST) * half_alpha + half_bias  # (BLOCK_M, BLOCK_N)
        da = _dot(do, tl.trans(v), PREC, UPCAST)  # (BLOCK_M, BLOCK_N) = dA
        ds_sum += _silu_half_grad2(da, hs, FAST)
    ds_sum *= 0.5 * inv_scale
    i = offs_m[:, None]
    j = offs_n[None, :]
    if MASKED:
        ok = _allowed(i, j, seq_len, hist_end, num_contextual, window, HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW)
        ds_sum = tl.where(ok, ds_sum, 0.0)
    else:
        ok = row_ok[:, None] & (offs_n[None, :] < seq_len)
        if TMA:  # rows past the sequence were loaded from the next one
            ds_sum = tl.where(row_ok[:, None], ds_sum, 0.0)
    if GRAD_TIME:
        if MASKED:
            ok_next = _allowed(i, j + 1, seq_len, hist_end, num_contextual, window, HAS_TARGETS, HAS_CONTEXT,
                               HAS_WINDOW)
        else:
            ok_next = row_ok[:, None] & (offs_n[None, :] + 1 < seq_len)
        ts_f_next = _rel_times(Ts, seq_start, offs_n + 1, seq_len, origin, HAS_TIME)  # for run boundaries
        _time_grad(DTime, ds_sum, codes, ok, next_f, ts_f_next, ok_next, FAST_LOG, BLOCK_N)
    return ds_sum


@triton.jit
def _diagonal_counts(max_len, HAS_CONTEXT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tile diagonals ``rel0 = start_m - start_n`` per sequence: ``(count with rel0 >= 0, count below)``.

    ``rel0`` steps by the smaller tile side. Without contextual rows only the diagonals that cross the
    causal one (``rel0 > -BLOCK_M``) hold allowed pairs. Mirrored by ``_diagonal_grid`` on the host.
    """
    if BLOCK_M < BLOCK_N:
        step: tl.constexpr = BLOCK_M
    else:
        step: tl.constexpr = BLOCK_N
    above = (tl.cdiv(max_len, BLOCK_M) - 1) * (BLOCK_M // step) + 1
    if HAS_CONTEXT:
        below = (tl.cdiv(max_len, BLOCK_N) - 1) * (BLOCK_N // step)
    else:
        below = max_len * 0 + (BLOCK_M - step) // step
    return above, below


@triton.jit
def _hstu_bias_bwd_kernel(
    Q, K, V, DO, Offsets, NumTargets, PosE, TimeBias, Ts, NextTs, DPos, DTime, QDesc, KDesc, VDesc, DODesc,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_don, stride_doh,
    alpha, inv_scale, pos_center, scale_len, num_contextual, window, time_rows, H, MAX_LEN_BUCKET,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_TARGETS: tl.constexpr, HAS_CONTEXT: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr, GRAD_POS: tl.constexpr, GRAD_TIME: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr, FAST: tl.constexpr, FAST_LOG: tl.constexpr,
    GRAD_SLOTS: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Every tile of a diagonal puts its pairs at the same relative positions, so the positional gradient
    # sums in registers along it and is reduced once. Flat grid: a sequence's diagonals side by side
    # (they share its Q, K, V, dO in L2), the longest (rel0 = 0) first.
    above, below = _diagonal_counts(pos_center + 1, HAS_CONTEXT, BLOCK_M, BLOCK_N)  # pos_center + 1: max_len
    pid = tl.program_id(0)
    g = pid % (above + below)
    if BLOCK_M < BLOCK_N:
        step: tl.constexpr = BLOCK_M
        stride: tl.constexpr = BLOCK_N
    else:
        step: tl.constexpr = BLOCK_N
        stride: tl.constexpr = BLOCK_M
    rel0 = tl.where(g < above, g * step, (above - 1 - g) * step)
    # Gradients go to one of GRAD_SLOTS private copies (summed by the wrapper): thousands of programs
    # adding into the same few table rows at once would serialise in L2.
    DPos += (pid % GRAD_SLOTS) * (2 * scale_len - 1)
    DTime += (pid % GRAD_SLOTS) * time_rows
    seq_start, seq_len, hist_end = _sequence(Offsets, NumTargets, pid // (above + below), HAS_TARGETS)
    # First tile: the least aligned start_m >= max(0, rel0) (rows of BLOCK_M) whose start_n is aligned too.
    if BLOCK_M < BLOCK_N:
        start_m0 = tl.cdiv(tl.maximum(-rel0, 0), BLOCK_N) * BLOCK_N + rel0
    else:
        start_m0 = tl.cdiv(tl.maximum(rel0, 0), BLOCK_M) * BLOCK_M
    tiles = tl.cdiv(tl.minimum(seq_len - start_m0, seq_len - start_m0 + rel0), stride)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for t in range(0, tiles):
        start_m = start_m0 + t * stride
        start_n = start_m - rel0
        ctx_hi, lo, full_lo, full_hi, mid, hi = _key_ranges(start_m, seq_len, hist_end, num_contextual, window,
                                                             HAS_CONTEXT, HAS_WINDOW, BLOCK_M, BLOCK_N)
        if (start_n >= full_lo) & (start_n < full_hi):
            acc += _bias_grad_tile(Q, K, V, DO, QDesc, KDesc, VDesc, DODesc, Ts, NextTs, PosE, TimeBias, DTime,
                                   start_m, start_n, seq_start, seq_len, hist_end, stride_qn, stride_qh, stride_kn,
                                   stride_kh, stride_vn, stride_vh, stride_don, stride_doh, alpha, inv_scale,
                                   pos_center, num_contextual, window, H, offs_dqk, offs_dv, D_QK, D_V, BLOCK_DQK,
                                   BLOCK_DV, BLOCK_M, BLOCK_N, False, HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW,
                                   HAS_POS, HAS_TIME, GRAD_TIME, PREC, UPCAST, FAST, FAST_LOG, TMA)
        elif ((start_n < ctx_hi) | ((start_n >= lo) & (start_n < full_lo))
              | ((start_n >= mid) & (start_n < hi))):
            acc += _bias_grad_tile(Q, K, V, DO, QDesc, KDesc, VDesc, DODesc, Ts, NextTs, PosE, TimeBias, DTime,
                                   start_m, start_n, seq_start, seq_len, hist_end, stride_qn, stride_qh, stride_kn,
                                   stride_kh, stride_vn, stride_vh, stride_don, stride_doh, alpha, inv_scale,
                                   pos_center, num_contextual, window, H, offs_dqk, offs_dv, D_QK, D_V, BLOCK_DQK,
                                   BLOCK_DV, BLOCK_M, BLOCK_N, True, HAS_TARGETS, HAS_CONTEXT, HAS_WINDOW,
                                   HAS_POS, HAS_TIME, GRAD_TIME, PREC, UPCAST, FAST, FAST_LOG, TMA)
    if GRAD_POS:  # noqa: SIM102 (a constexpr guard around a run-time test)
        if tiles > 0:
            _pos_grad(DPos, acc, rel0, scale_len, BLOCK_M, BLOCK_N)


# ----------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------

def _descriptor_block_hook(nargs: dict) -> None:
    """Give the TMA descriptors (``DQ_TMA``, ``KV_TMA``, ``QO_TMA``) the tile shapes of the configuration to run."""
    shapes = {"DQDesc": ("BLOCK_M", "BLOCK_DQK"), "KDesc": ("BLOCK_N", "BLOCK_DQK"), "VDesc": ("BLOCK_N", "BLOCK_DV"),
              "QDesc": ("BLOCK_M", "BLOCK_DQK"), "DODesc": ("BLOCK_M", "BLOCK_DV")}
    for name, (rows, cols) in shapes.items():
        if isinstance(nargs.get(name), TensorDescriptor):  # absent, or a plain pointer when TMA is off
            nargs[name].block_shape = [nargs[rows], nargs[cols]]


_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_descriptor_block_hook)
    for bm, bn, w, s in [(128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 4),
                         (128, 64, 8, 2), (128, 64, 8, 4), (128, 128, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2),
                         (32, 32, 4, 2)]
]
_BWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_descriptor_block_hook)
    for bm, bn, w, s in [(64, 128, 8, 2), (64, 128, 8, 3), (64, 128, 8, 4), (128, 64, 8, 2), (64, 64, 4, 2),
                         (128, 128, 8, 2), (32, 64, 4, 2), (64, 64, 8, 1), (64, 64, 8, 2), (32, 32, 4, 2)]
]
_DQ_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_descriptor_block_hook)
    for bm, bn, w, s in [(64, 64, 8, 2), (64, 128, 8, 2), (128, 64, 8, 2), (64, 64, 8, 1), (64, 32, 4, 2),
                         (32, 32, 4, 2)]
]
_BIAS_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=_descriptor_block_hook)
    for bm, bn, w, s in [(128, 64, 8, 2), (64, 128, 8, 2), (64, 64, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2),
                         (32, 32, 4, 2), (128, 64, 8, 1), (64, 64, 4, 1), (64, 64, 8, 1)]
]

#: Private copies of the bias-table gradients that the bias backward spreads its atomics over.
_GRAD_SLOTS = 256

#: Grid order. True: tiles on the fast grid axis, so the programs resident at one time work on a few
#: (sequence, head) pairs and re-read their K, V (forward) or Q, dO, dQ (backward) from L2. False: one
#: tile index across every pair at a time (each resident program streams a different pair from HBM).
#: Benchmarks compare the two; the wrapper falls back to False past CUDA's 65535 limit on grid axis 1.
_TILE_MAJOR = True

#: How the backward adds dQ tiles: True, TMA bulk reductions (one per tile, Hopper and later); False, one
#: fp32 atomic per element; None, TMA with a bias table only. At 32x4096 on the H100 TMA measured 2-4%
#: faster with both tables and 4% slower without a bias (``attention_h100_bias_dq_*.json``,
#: ``attention_h100_dq_*.json``).
_DQ_TMA: bool | None = None

#: Whether unmasked tiles load their streamed operands (K, V in the forward and the dQ pass; Q, dO in the
#: q, k, v backward) by TMA (Hopper and later; see ``_head_descriptors``) instead of per-thread ``cp.async``
#: copies. Fewer instructions and registers per tile: 32x4096 forward, no bias, 1.069 -> 0.991 ms
#: (``attention_h100_silu_half_pointers.json``, ``attention_h100_tma_silu_half.json``).
_HEAD_TMA = True

#: Q, dO by TMA slowed the fused q, k, v backward (d = 128, 32x4096, no bias: 4.55 -> 5.41 ms fwd+bwd,
#: ``attention_h100_tma_silu_half.json`` vs ``attention_h100_tma_qdo.json``), while the wide-head dV and
#: dK passes gained (layer at N=2048: 9.08 -> 8.82 ms, ``layer_h100_tma_silu_half.json`` vs
#: ``layer_h100_tma_qdo.json``); so only the split passes take it.
_QO_TMA_FUSED = False

#: The q, k, v backward runs as three passes, each with one accumulator in registers (dV and dK per key
#: tile, dQ per query tile: ``_hstu_dq_kernel``, no atomics), when ``BLOCK_DQK + BLOCK_DV`` exceeds this.
#: At d = 256 the fused kernel's dK and dV accumulators (64 fp32 registers per thread each, at 64 keys
#: and 8 warps) plus a dQ tile overflow the register file and spill (ncu,
#: ``ncu_bwd_d256_h100_details.csv``). The passes recompute ``S`` and ``dA`` (8 GEMMs per tile, not 5).
#: (dK and dV in one pass without the dQ tile measured 13% slower at 32x2048: ``*_kv_passes_1.json``.)
_SPLIT_BWD_ABOVE = 256

#: Passes of the q, k, v backward: 1 (fused: dK, dV and dQ tiles), 2 (dK and dV, then dQ), 3 (dV, dK, dQ);
#: None: 3 above ``_SPLIT_BWD_ABOVE``, else 1. At d = 128 with both bias tables the fused kernel spills,
#: yet stays fastest: 32x4096 bf16 fwd+bwd 11.02 ms fused, 11.80 ms in 2 passes, 13.73 ms in 3
#: (``attention_h100_bwd_passes_{1,2,3}.json``).
_BWD_PASSES: int | None = None

#: CUDA's limit on grid axes 1 and 2.
_MAX_GRID_Y = 65535

#: Sequences up to this bucket get small tiles only: fewer compiles, and no 128-row tile mostly padding.
_SHORT_BUCKET = 256


#: The only candidates for fp32 inputs in short buckets: compiling fp32 dots is slow (seconds per
#: configuration), and it is the first run's wait. ML-1M's hstu-large (d = 25, bucket 256, fp32) compiled 13
#: attention configurations in a cold run, and every kernel picked the 32x32, 4-warp, 2-stage one
#: (``TRITON_PRINT_AUTOTUNING=1``). With these two candidates per kernel the cold first epoch went from 66 s
#: to 32-38 s on one H100 (``ml1m_half_h100_triton_graphs_solo_cold_*_session11*.json``). Kernels with none
#: of these configurations keep their usual candidates.
_FP32_SHORT_TILES = {(32, 32, 4, 2), (64, 64, 4, 2)}


#: Shared memory the tuner may plan for the operand tiles (the H100 allows 227 KB per block; the rest is
#: left for Triton's layout-conversion scratch).
_SMEM_BUDGET = 200 * 1024


def _smem_estimate(config: triton.Config, d_qk: int, d_v: int, elem: int, kernel: str) -> int:
    """Bytes of operand tiles: the resident tile plus ``num_stages - 1`` buffers of the streamed ones.

    (Triton's rule as measured on the H100: the forward at 128x128, 3 stages, d=256 asked for exactly
    ``(128 * 256 + 2 * 128 * 512) * 2`` bytes.)
    """
    bm, bn, buffers = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], max(config.num_stages - 1, 1)
    if kernel == "bwd":  # resident K, V tile; streamed Q, dO tiles
        return (bn * (d_qk + d_v) + buffers * bm * (d_qk + d_v)) * elem
    if kernel == "bias":  # Q, dO, K and V tiles streamed one head after another: num_stages buffers of each
        return max(config.num_stages, 1) * (bm + bn) * (d_qk + d_v) * elem
    if kernel == "dq":  # resident Q, dO tiles; streamed K, V tiles
        return (bm * (d_qk + d_v) + buffers * bn * (d_qk + d_v)) * elem
    return (bm * d_qk + buffers * bn * (d_qk + d_v)) * elem  # resident Q tile; streamed K, V tiles


def _prune(configs: list, named_args: dict, kernel: str, **kwargs) -> list:
    """Drop tile shapes that do not suit the length bucket or do not fit in shared memory.

    Short buckets get tiles of at most 64 rows and columns (with fp32 inputs only ``_FP32_SHORT_TILES``),
    long ones at least 64; for wide heads (d = 256) only the configurations within ``_SMEM_BUDGET`` stay
    (the smallest one if none fits).
    ``kernel`` is ``fwd``, ``bwd``, ``dq`` or ``bias`` (see ``_smem_estimate``).
    """
    short = named_args["MAX_LEN_BUCKET"] <= _SHORT_BUCKET
    shaped = [c for c in configs if (max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= 64 if short
                                     else min(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) >= 64)]
    elem = named_args["Q"].element_size()
    if kernel == "bias" and elem == 4:  # fp32 dots run on FMA units: large tiles only cost compile time
        shaped = [c for c in shaped if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64] or shaped
    if short and elem == 4:  # see _FP32_SHORT_TILES
        shaped = [c for c in shaped if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                  in _FP32_SHORT_TILES] or shaped
    d_qk, d_v = kwargs["BLOCK_DQK"], kwargs["BLOCK_DV"]
    fits = [c for c in shaped if _smem_estimate(c, d_qk, d_v, elem, kernel) <= _SMEM_BUDGET]
    if kernel == "bias":  # single-buffered tiles only where double buffers do not fit (d = 256)
        deepest = {}
        for c in fits:
            tile = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps)
            deepest[tile] = max(deepest.get(tile, c), c, key=lambda c: c.num_stages)
        fits = list(deepest.values())
    return fits or [min(configs, key=lambda c: _smem_estimate(c, d_qk, d_v, elem, kernel))]


_KEY = ["MAX_LEN_BUCKET", "D_QK", "D_V", "HAS_TARGETS", "HAS_CONTEXT", "HAS_WINDOW", "HAS_POS", "HAS_TIME"]
_fwd_tuned = triton.autotune(configs=_FWD_CONFIGS, key=_KEY,
                             prune_configs_by={"early_config_prune": partial(_prune, kernel="fwd")}
                             )(_hstu_fwd_kernel)
_bwd_tuned = triton.autotune(configs=_BWD_CONFIGS, key=[*_KEY, "WITH_DK", "WITH_DV", "WITH_DQ"],
                             prune_configs_by={"early_config_prune": partial(_prune, kernel="bwd")},
                             reset_to_zero=["DQ"])(_hstu_bwd_kernel)
_dq_tuned = triton.autotune(configs=_DQ_CONFIGS, key=_KEY,
                            prune_configs_by={"early_config_prune": partial(_prune, kernel="dq")})(_hstu_dq_kernel)
_bias_bwd_tuned = triton.autotune(configs=_BIAS_CONFIGS, key=[*_KEY, "GRAD_POS", "GRAD_TIME"],
                                  prune_configs_by={"early_config_prune": partial(_prune, kernel="bias")},
                                  reset_to_zero=["DPos", "DTime"])(_hstu_bias_bwd_kernel)


def _launch(kernel, tuned, blocks: tuple[int, int], grid_fn, args: list, meta: dict) -> None:
    """Run the autotuned kernel on GPU; under the interpreter use the fixed ``blocks`` (no benchmarking)."""
    if _interpreting():
        fixed = {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]}
        _descriptor_block_hook(dict(zip(kernel.arg_names, args, strict=False)) | meta | fixed)
        kernel[grid_fn(fixed)](*args, **meta, **fixed)
    elif _FIXED_CONFIG is not None:
        _descriptor_block_hook(dict(zip(kernel.arg_names, args, strict=False)) | meta | _FIXED_CONFIG)
        kernel[grid_fn(_FIXED_CONFIG)](*args, **meta, **_FIXED_CONFIG)
    else:
        tuned[grid_fn](*args, **meta)


def _tile_major(pairs: int) -> bool:
    """Whether to put tiles on grid axis 0 (see ``_TILE_MAJOR``) for ``pairs`` (sequence, head) pairs."""
    return _TILE_MAJOR and pairs <= _MAX_GRID_Y


def _grid(pairs: int, max_len: int, block: str, tile_major: bool, meta: dict) -> tuple[int, int]:
    """Launch grid: one program per (sequence, head) pair and tile of ``meta[block]`` rows."""
    tiles = triton.cdiv(max_len, meta[block])
    return (tiles, pairs) if tile_major else (pairs, tiles)


def _diagonal_grid(batch: int, max_len: int, has_context: bool, meta: dict) -> tuple[int]:
    """Bias-gradient grid: one program per (sequence, tile diagonal); see ``_diagonal_counts``."""
    bm, bn = meta["BLOCK_M"], meta["BLOCK_N"]
    step = min(bm, bn)
    above = (triton.cdiv(max_len, bm) - 1) * (bm // step) + 1
    below = (triton.cdiv(max_len, bn) - 1) * (bn // step) if has_context else (bm - step) // step
    return (batch * (above + below),)


def _head_descriptors(a: Tensor, b: Tensor, meta: dict) -> tuple:
    """TMA descriptors of ``a`` (``d_qk`` wide: K or Q) and ``b`` (``d_v`` wide: V or dO) for unmasked tiles.

    The forward and the dQ pass read K, V (``KV_TMA``), the q, k, v backward Q, dO (``QO_TMA``). Returns the
    two descriptors and True, or ``a``, ``b`` and False. Each views one tensor ``(sum_N, H, d)`` as
    ``(sum_N, H * d)`` and reads one head's columns: that needs ``_HEAD_TMA``, Hopper or later (or the
    interpreter, which emulates TMA), heads of exactly ``BLOCK_D`` columns side by side, 16-byte aligned
    rows and row counts that fit in int32. The tile shape is set per configuration
    (``_descriptor_block_hook``).
    """
    def usable(x: Tensor, block: int) -> bool:
        d = x.shape[2]
        return (d == block and x.stride(2) == 1 and x.stride(1) == d
                and (x.stride(0) * x.element_size()) % 16 == 0 and x.data_ptr() % 16 == 0 and x.shape[0] < 2**31)

    hopper = _interpreting() or (a.is_cuda and torch.cuda.get_device_capability(a.device)[0] >= 9)
    if not (_HEAD_TMA and hopper and usable(a, meta["BLOCK_DQK"]) and usable(b, meta["BLOCK_DV"])):
        return a, b, False
    descs = [TensorDescriptor(x, [x.shape[0], x.shape[1] * x.shape[2]], [x.stride(0), 1], [16, x.shape[2]])
             for x in (a, b)]  # the hook sets the rows of the tile
    return *descs, True


def _dq_tma(dq32: Tensor, meta: dict) -> bool:
    """Whether the backward adds dQ tiles by TMA bulk reductions (see ``_DQ_TMA``).

    Needs Hopper or later, a tile of exactly one head's columns (``d_qk`` a power of two) and row offsets
    that fit in int32.
    """
    wanted = meta["HAS_POS"] or meta["HAS_TIME"] if _DQ_TMA is None else _DQ_TMA
    return (wanted and not _interpreting() and dq32.is_cuda and torch.cuda.get_device_capability(dq32.device)[0] >= 9
            and meta["D_QK"] == meta["BLOCK_DQK"] and dq32.shape[0] < 2**31)


def _backward_passes(meta: dict) -> int:
    """How many passes the q, k, v backward takes (see ``_BWD_PASSES``)."""
    if _BWD_PASSES is not None:
        if _BWD_PASSES not in (1, 2, 3):
            raise ValueError(f"_BWD_PASSES must be 1, 2, 3 or None, not {_BWD_PASSES!r}")
        return _BWD_PASSES
    return 3 if meta["BLOCK_DQK"] + meta["BLOCK_DV"] > _SPLIT_BWD_ABOVE else 1


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _flags(num_targets, num_contextual, window, pos_bias, time_bias) -> dict:
    return {
        "HAS_TARGETS": num_targets is not None,
        "HAS_CONTEXT": num_contextual > 0,
        "HAS_WINDOW": window is not None,
        "HAS_POS": pos_bias is not None,
        "HAS_TIME": time_bias is not None,
    }


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _alloc(like: Tensor, shape=None) -> Tensor:
    shape = like.shape if shape is None else shape
    if _POISON is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return torch.full(shape, _POISON, dtype=like.dtype, device=like.device)


@lru_cache(maxsize=32)
def _pos_expand_index(max_len: int, scale_len: int, device: torch.device) -> Tensor:
    """Rows of the positional table behind each entry of the expanded table (see ``_expand_pos_bias``)."""
    x = torch.arange(2 * max_len + _POS_WIDTH, device=device)[:, None]
    c = torch.arange(_POS_WIDTH, device=device)[None, :]
    rel = (x - c - (max_len - 1)).clamp(1 - scale_len, scale_len - 1)  # (2 * max_len + 128, 128)
    return rel + scale_len - 1


def _expand_pos_bias(pos_bias: Tensor, max_len: int, scale_len: int) -> Tensor:
    """The positional table laid out so that any tile's bias is a 2-D block: ``E[x, c] = w[clamp(x - c - (L - 1))]``.

    A query ``i`` against the key tile starting at ``j0`` reads row ``x = i - j0 + (L - 1)``, columns
    ``c = j - j0``, with ``L = max_len``. ``(2L + 128) * 128`` entries (2 MB in bf16 at ``L = 4096``),
    rebuilt per call because the table is a trained parameter.
    """
    return pos_bias[_pos_expand_index(max_len, scale_len, pos_bias.device)]


def _tables(offsets, num_targets, pos_exp, time_bias, timestamps, next_ts) -> list[Tensor]:
    """The kernels' table arguments after ``Offsets``; absent ones point at ``offsets`` (never read)."""
    optional = (num_targets, pos_exp, time_bias, timestamps, next_ts)
    return [offsets, *(t if t is not None else offsets for t in optional)]


def _scalars(alpha, scale_len, max_len) -> list:
    """``alpha``, ``inv_scale`` and ``pos_center`` (the expanded positional table's row of offset 0)."""
    return [float(alpha), 1.0 / scale_len, int(max_len) - 1]


def _shape_args(num_contextual, window, time_table, num_heads, max_len) -> list[int]:
    """``num_contextual``, ``window``, ``time_rows``, ``H`` and ``MAX_LEN_BUCKET`` (the autotuning key).

    ``time_rows`` is the temporal lookup table's length; only the bias kernel reads it.
    """
    time_rows = time_table.numel() if time_table is not None else 0
    return [int(num_contextual), int(window or 0), time_rows, num_heads, _next_pow2(max_len)]


def _meta(q: Tensor, v: Tensor, flags: dict) -> dict:
    """Compile-time constants shared by the three kernels."""
    d_qk, d_v = q.shape[2], v.shape[2]
    return dict(
        D_QK=d_qk, D_V=d_v, BLOCK_DQK=max(16, _next_pow2(d_qk)), BLOCK_DV=max(16, _next_pow2(d_v)), **flags,
        PREC=_dot_precision(q.dtype), UPCAST=(q.dtype == torch.bfloat16 and _interpreting()),
        FAST=q.dtype != torch.float32 and not _interpreting(), FAST_LOG=_fast_log(q.dtype),
    )


def _forward(q, k, v, offsets, max_len, alpha, scale_len, num_targets, num_contextual, window,
             pos_exp, time_table, timestamps, next_ts) -> Tensor:
    total, num_heads = q.shape[:2]
    out = _alloc(v)  # (sum_N, H, d_v)
    batch = offsets.numel() - 1
    if total == 0 or batch == 0 or max_len == 0:
        return out
    tables = _tables(offsets, num_targets, pos_exp, time_table, timestamps, next_ts)
    meta = _meta(q, v, _flags(num_targets, num_contextual, window, pos_exp, time_table))
    k_desc, v_desc, meta["KV_TMA"] = _head_descriptors(k, v, meta)
    args = [q, k, v, out, *tables, k_desc, v_desc, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
            v.stride(1), out.stride(0), out.stride(1), *_scalars(alpha, scale_len, max_len),
            *_shape_args(num_contextual, window, time_table, num_heads, max_len)]
    meta["TILE_MAJOR"] = _tile_major(batch * num_heads)
    grid = partial(_grid, batch * num_heads, max_len, "BLOCK_M", meta["TILE_MAJOR"])
    _launch(_hstu_fwd_kernel, _fwd_tuned, _INTERPRET_FWD_BLOCKS, grid, args, meta)
    return out


def _backward(do, q, k, v, offsets, max_len, alpha, scale_len, num_targets, num_contextual, window,
              pos_exp, time_table, timestamps, next_ts, grad_pos: bool, grad_time: bool):
    total, num_heads = q.shape[:2]
    meta = _meta(q, v, _flags(num_targets, num_contextual, window, pos_exp, time_table))
    passes = _backward_passes(meta)
    split = passes > 1
    # (sum_N, H, d_qk): written once by the dQ pass, or accumulated in fp32 by atomics
    dq = _alloc(q) if split else torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk = _alloc(k)  # (sum_N, H, d_qk)
    dv = _alloc(v)  # (sum_N, H, d_v)
    slots = 1 if _interpreting() else _GRAD_SLOTS
    dpos = torch.zeros(slots, 2 * scale_len - 1, dtype=torch.float32, device=q.device) if grad_pos else None
    dtime = torch.zeros(slots, time_table.numel(), dtype=torch.float32, device=q.device) if grad_time else None
    batch = offsets.numel() - 1
    if total > 0 and batch > 0 and max_len > 0:
        tables = _tables(offsets, num_targets, pos_exp, time_table, timestamps, next_ts)
        scalars = _scalars(alpha, scale_len, max_len)
        shape = _shape_args(num_contextual, window, time_table, num_heads, max_len)
        in_strides = [q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                      do.stride(0), do.stride(1)]
        dq_tma = not split and _dq_tma(dq, meta)
        dq_desc = dq_tma and TensorDescriptor(dq, [total, num_heads * meta["D_QK"]], [dq.stride(0), 1],
                                              [_INTERPRET_BWD_BLOCKS[0], meta["BLOCK_DQK"]])
        q_desc, do_desc, qo_ok = _head_descriptors(q, do, meta)
        k_desc, v_desc, kv_ok = _head_descriptors(k, v, meta)
        qo_tma = qo_ok and (split or _QO_TMA_FUSED)
        qo_args = [q_desc, do_desc] if qo_tma else [q, do]
        args = [q, k, v, do, dq, dq_desc or dq, *qo_args, dk, dv, *tables, *in_strides, dq.stride(0), dq.stride(1),
                dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), *scalars, *shape]
        tile_major = _tile_major(batch * num_heads)
        grid = partial(_grid, batch * num_heads, max_len, "BLOCK_N", tile_major)
        bwd_meta = meta | {"TILE_MAJOR": tile_major, "DQ_TMA": dq_tma, "QO_TMA": qo_tma}
        if split:
            parts = ([{"WITH_DK": True, "WITH_DV": True}] if passes == 2
                     else [{"WITH_DK": False, "WITH_DV": True}, {"WITH_DK": True, "WITH_DV": False}])
            for part in parts:
                _launch(_hstu_bwd_kernel, _bwd_tuned, _INTERPRET_BWD_BLOCKS, grid, args,
                        bwd_meta | part | {"WITH_DQ": False})
            dq_args = [q, k, v, do, dq, *tables, k_desc, v_desc, *in_strides, dq.stride(0), dq.stride(1), *scalars,
                       *shape]
            _launch(_hstu_dq_kernel, _dq_tuned, _INTERPRET_FWD_BLOCKS,
                    partial(_grid, batch * num_heads, max_len, "BLOCK_M", tile_major), dq_args,
                    meta | {"TILE_MAJOR": tile_major, "KV_TMA": kv_ok})
        else:
            _launch(_hstu_bwd_kernel, _bwd_tuned, _INTERPRET_BWD_BLOCKS, grid, args,
                    bwd_meta | {"WITH_DK": True, "WITH_DV": True, "WITH_DQ": True})
        if grad_pos or grad_time:
            bias_tma = qo_ok and kv_ok
            descs = [q_desc, k_desc, v_desc, do_desc] if bias_tma else [q, k, v, do]
            args = [q, k, v, do, *tables, dpos if dpos is not None else dq, dtime if dtime is not None else dq,
                    *descs, *in_strides, *scalars, int(scale_len), *shape]
            grid = partial(_diagonal_grid, batch, max_len, meta["HAS_CONTEXT"])
            _launch(_hstu_bias_bwd_kernel, _bias_bwd_tuned, _INTERPRET_BIAS_BLOCKS, grid, args,
                    meta | {"GRAD_POS": grad_pos, "GRAD_TIME": grad_time, "GRAD_SLOTS": slots, "TMA": bias_tma})
    else:
        dq.zero_()
        dk.zero_()
        dv.zero_()
    dpos = dpos.sum(0) if dpos is not None else None  # (2n - 1,)
    dtime = dtime.sum(0) if dtime is not None else None  # (time_rows,): the lookup table's gradient
    return dq.to(q.dtype), dk, dv, dpos, dtime


class _HSTUAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, offsets, max_len, alpha, scale_len, num_targets, num_contextual, window,
                pos_bias, time_bias, timestamps, next_ts):
        pos_exp = _expand_pos_bias(pos_bias, max_len, scale_len) if pos_bias is not None else None
        ctx.time_dtype = time_bias.dtype if time_bias is not None else None
        ctx.num_buckets = time_bias.numel() - 1 if time_bias is not None else 0
        time_table = _time_lookup_table(time_bias) if time_bias is not None else None
        out = _forward(q, k, v, offsets, max_len, alpha, scale_len, num_targets, num_contextual, window,
                       pos_exp, time_table, timestamps, next_ts)
        ctx.save_for_backward(q, k, v, offsets, num_targets, pos_exp, time_table, timestamps, next_ts)
        ctx.args = (max_len, alpha, scale_len, num_contextual, window)
        ctx.pos_dtype = pos_bias.dtype if pos_bias is not None else None
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, offsets, num_targets, pos_exp, time_table, timestamps, next_ts = ctx.saved_tensors
        max_len, alpha, scale_len, num_contextual, window = ctx.args
        grad_pos = pos_exp is not None and ctx.needs_input_grad[10]
        grad_time = time_table is not None and ctx.needs_input_grad[11]
        dq, dk, dv, dpos, dtime = _backward(
            _last_dim_contiguous(do), q, k, v, offsets, max_len, alpha, scale_len, num_targets,
            num_contextual, window, pos_exp, time_table, timestamps, next_ts, grad_pos, grad_time,
        )
        dpos = dpos.to(ctx.pos_dtype) if dpos is not None else None
        dtime = _fold_time_grad(dtime, ctx.num_buckets).to(ctx.time_dtype) if dtime is not None else None
        return dq, dk, dv, None, None, None, None, None, None, None, dpos, dtime, None, None


def hstu_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    max_len: int,
    *,
    alpha: float,
    scale_len: int,
    num_targets: Tensor | None = None,
    num_contextual: int = 0,
    window: int | None = None,
    pos_bias: Tensor | None = None,
    time_bias: Tensor | None = None,
    timestamps: Tensor | None = None,
    query_times: Tensor | None = None,
    next_ts: Tensor | None = None,
) -> Tensor:
    """HSTU attention on jagged inputs, fused in Triton; same contract as the PyTorch reference.

    Args:
        q: ``(sum_N, H, d_qk)``; the last dimension contiguous (other strides are honoured).
        k: ``(sum_N, H, d_qk)``.
        v: ``(sum_N, H, d_v)``.
        offsets: ``(B+1,)`` integer sequence boundaries on the same device.
        max_len: Longest sequence in the batch (a Python int: the grid size; never read on device).
        alpha: Scale of ``q . k``.
        scale_len: The constant ``n`` dividing the weights; the positional table has ``2n - 1`` rows.
        num_targets: ``(B,)`` candidates per sequence (target-aware mask), or None.
        num_contextual: Contextual-prefix length.
        window: Local attention window, or None.
        pos_bias: ``(2 * scale_len - 1,)`` positional bias table, or None.
        time_bias: ``(num_buckets + 1,)`` temporal bias table, or None.
        timestamps: ``(sum_N,)`` event times in seconds; required with ``time_bias``.
        query_times: ``(B,)`` request time of each sequence's last row (default: its own time).
        next_ts: ``(sum_N,)`` precomputed ``next_timestamps(timestamps, offsets, query_times)``, or None.

    Returns:
        ``(sum_N, H, d_v)`` in the dtype of ``v``.

    """
    if time_bias is not None and timestamps is None:
        raise ValueError("time_bias needs timestamps")
    if pos_bias is not None and pos_bias.numel() != 2 * scale_len - 1:
        raise ValueError(f"pos_bias needs 2 * scale_len - 1 rows, not {pos_bias.numel()}")
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    pos_bias = pos_bias.reshape(-1) if pos_bias is not None else None
    time_bias = time_bias.reshape(-1) if time_bias is not None else None
    if timestamps is not None:
        timestamps = timestamps.contiguous()
        if next_ts is None:
            next_ts = next_timestamps(timestamps, offsets, query_times)  # (sum_N,)
        next_ts = next_ts.contiguous()
    else:
        next_ts = None
    return _HSTUAttention.apply(q, k, v, offsets.contiguous(), int(max_len), float(alpha), int(scale_len),
                                num_targets, int(num_contextual), window, pos_bias, time_bias, timestamps,
                                next_ts)


__all__ = ["hstu_attention"]
