import sys

import pytest
import torch

from gr_lightning.ops.pytorch.hstu_attention import hstu_attention as ref_attention
from gr_lightning.ops.triton import hstu_attention

triton_mod = sys.modules["gr_lightning.ops.triton.hstu_attention"]

SCALE_LEN = 24  # the positional table has 2 * 24 - 1 rows; sequences are at most 20 long


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Outputs and dK/dV start as NaN: an element the kernel forgets to write fails the comparison."""
    monkeypatch.setattr(triton_mod, "_POISON", float("nan"))


def _rel_err(out, ref):
    out = out.double()
    assert torch.isfinite(out).all(), "non-finite (unwritten?) elements"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _case(seed, lengths, heads=2, d_qk=16, d_v=16, targets=None, pos=False, time=False,
          dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths, dtype=torch.int64)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    total = int(offsets[-1])
    q = torch.randn(total, heads, d_qk, generator=gen).to(dtype)
    k = torch.randn(total, heads, d_qk, generator=gen).to(dtype)
    v = torch.randn(total, heads, d_v, generator=gen).to(dtype)
    num_targets = None
    if targets is not None:
        capped = [min(t, int(n)) for t, n in zip(targets, lengths, strict=True)]
        num_targets = torch.tensor(capped, dtype=torch.int64)
    pos_bias = torch.randn(2 * SCALE_LEN - 1, generator=gen).to(dtype) if pos else None
    time_bias = torch.randn(11, generator=gen).to(dtype) if time else None
    timestamps = None
    if time:
        # increasing event times with gaps spanning several buckets; a few equal times
        gaps = torch.randint(0, 300, (total,), generator=gen) * torch.randint(0, 2, (total,), generator=gen)
        timestamps = 1_600_000_000 + gaps.cumsum(0)
    return dict(q=q, k=k, v=v, offsets=offsets, max_len=int(lengths.max()) if len(lengths) else 0,
                num_targets=num_targets, pos_bias=pos_bias, time_bias=time_bias, timestamps=timestamps)


def _run_both(case, alpha=0.7, num_contextual=0, window=None, tol=2e-5, query_times=None, scale_len=SCALE_LEN):
    kw = dict(alpha=alpha, scale_len=scale_len, num_targets=case["num_targets"],
              num_contextual=num_contextual, window=window, query_times=query_times)
    grads = ["q", "k", "v"] + [n for n in ("pos_bias", "time_bias") if case[n] is not None]
    ours = {n: case[n].clone().requires_grad_(n in grads) if case[n] is not None else None
            for n in ("q", "k", "v", "pos_bias", "time_bias")}
    refs = {n: case[n].double().clone().requires_grad_(n in grads) if case[n] is not None else None
            for n in ("q", "k", "v", "pos_bias", "time_bias")}
    out = hstu_attention(ours["q"], ours["k"], ours["v"], case["offsets"], case["max_len"], **kw,
                         pos_bias=ours["pos_bias"], time_bias=ours["time_bias"],
                         timestamps=case["timestamps"])
    ref = ref_attention(refs["q"], refs["k"], refs["v"], case["offsets"], case["max_len"], **kw,
                                   pos_bias=refs["pos_bias"], time_bias=refs["time_bias"],
                                   timestamps=case["timestamps"])
    assert out.shape == ref.shape and out.dtype == case["v"].dtype
    assert _rel_err(out, ref) < tol
    gen = torch.Generator().manual_seed(1234)
    dout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    out.backward(dout.to(out.dtype))
    ref.backward(dout)
    for n in grads:
        err = _rel_err(ours[n].grad, refs[n].grad)
        assert err < tol, f"grad {n}: rel err {err:.2e}"


LENGTHS = [[7, 20, 13], [0, 17, 1], [20, 16, 3]]


@pytest.mark.parametrize("lengths", LENGTHS)
def test_causal(lengths):
    _run_both(_case(1, lengths))


@pytest.mark.parametrize("lengths", LENGTHS)
def test_targets(lengths):
    _run_both(_case(2, lengths, targets=[3, 5, 1]))


@pytest.mark.parametrize("lengths", LENGTHS[:2])
def test_contextual(lengths):
    _run_both(_case(3, lengths), num_contextual=3)


@pytest.mark.parametrize("window", [1, 5, 18])
def test_window(window):
    _run_both(_case(4, [20, 11, 19]), window=window)


def test_positional_bias():
    _run_both(_case(5, [20, 9, 1], pos=True))


def test_temporal_bias():
    _run_both(_case(6, [19, 0, 14], time=True))


def test_temporal_bias_with_events_out_of_time_order():
    # The backward reduces the time-table gradient over runs of equal bucket; shuffled times make
    # many short runs (and negative gaps), which must still sum exactly.
    case = _case(12, [20, 17, 9], targets=[3, 0, 2], pos=True, time=True)
    case["timestamps"] = case["timestamps"][torch.randperm(case["timestamps"].numel(),
                                                           generator=torch.Generator().manual_seed(5))]
    _run_both(case, num_contextual=1)


def test_temporal_bias_with_a_long_pause():
    """Seconds apart, with an 11-hour pause: tiles of one bucket beside tiles that span many."""
    case = _case(13, [20, 15, 4], targets=[2, 3, 1], pos=True, time=True)
    gen = torch.Generator().manual_seed(3)
    gaps = torch.randint(0, 5, (case["timestamps"].numel(),), generator=gen)
    gaps[16] += 40_000
    case["timestamps"] = 1_600_000_000 + gaps.cumsum(0)
    _run_both(case, num_contextual=2, window=7)


@pytest.mark.parametrize("bias_blocks", [(16, 16), (16, 32), (32, 16)])
def test_positional_bias_clamped(bias_blocks, monkeypatch):
    """Relative positions beyond the table (``scale_len`` < sequence length) clamp to its end rows."""
    monkeypatch.setattr(triton_mod, "_INTERPRET_BIAS_BLOCKS", bias_blocks)
    case = _case(16, [20, 15, 4], pos=True, time=True)
    scale_len = 6
    case["pos_bias"] = torch.randn(2 * scale_len - 1, generator=torch.Generator().manual_seed(2))
    _run_both(case, scale_len=scale_len)


def test_all_masks_and_biases():
    _run_both(_case(7, [20, 18, 6], targets=[4, 2, 6], pos=True, time=True), num_contextual=2, window=6)


def test_targets_contextual_window():
    _run_both(_case(8, [20, 17, 5], targets=[2, 4, 1], d_qk=25, d_v=16), num_contextual=4, window=3)


def test_head_dims_differ_and_not_pow2():
    _run_both(_case(9, [13, 20], heads=1, d_qk=25, d_v=16, pos=True))


@pytest.mark.parametrize("bias_blocks", [(16, 32), (32, 16)])
def test_uneven_tiles(bias_blocks, monkeypatch):
    """BLOCK_M != BLOCK_N in every kernel exercises the tile-range and tile-diagonal arithmetic."""
    monkeypatch.setattr(triton_mod, "_INTERPRET_FWD_BLOCKS", (32, 16))
    monkeypatch.setattr(triton_mod, "_INTERPRET_BWD_BLOCKS", (16, 32))
    monkeypatch.setattr(triton_mod, "_INTERPRET_BIAS_BLOCKS", bias_blocks)
    _run_both(_case(10, [20, 19, 2], targets=[3, 1, 0], pos=True, time=True), num_contextual=2, window=7)


@pytest.mark.parametrize("num_contextual", [0, 3])
def test_bias_gradients_on_long_sequences_with_uneven_tiles(num_contextual, monkeypatch):
    """Sequences of many tiles: each diagonal of the bias backward sums several tiles before its reduction."""
    monkeypatch.setattr(triton_mod, "_INTERPRET_BIAS_BLOCKS", (16, 8))
    case = _case(18, [61, 40, 9], targets=[4, 0, 2], pos=True, time=True)
    case["pos_bias"] = torch.randn(2 * 64 - 1, generator=torch.Generator().manual_seed(4))
    _run_both(case, num_contextual=num_contextual, scale_len=64)


@pytest.mark.parametrize("tile_major, max_grid_y", [(False, 65535), (True, 65535), (True, 5)])
def test_grid_orders(tile_major, max_grid_y, monkeypatch):
    """Both grid orders, and the fallback past the grid-axis limit (3 x 2 pairs > 5), cover every tile."""
    monkeypatch.setattr(triton_mod, "_TILE_MAJOR", tile_major)
    monkeypatch.setattr(triton_mod, "_MAX_GRID_Y", max_grid_y)
    assert triton_mod._tile_major(6) == (tile_major and max_grid_y >= 6)
    _run_both(_case(15, [20, 3, 17], targets=[2, 1, 3], pos=True, time=True), num_contextual=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    _run_both(_case(11, [20, 12], dtype=dtype, pos=True, time=True), tol=2e-2)


def test_strided_inputs():
    case = _case(12, [15, 20, 8])
    qkv = torch.randn(case["q"].shape[0], 2, 48)
    case["q"], case["k"], case["v"] = qkv[..., :16], qkv[..., 16:32], qkv[..., 32:]
    meta = triton_mod._meta(case["q"], case["v"], {})
    assert not triton_mod._head_descriptors(case["k"], case["v"], meta)[2]  # heads not side by side: pointers
    _run_both(case)


def test_empty_batch():
    case = _case(13, [0, 0])
    out = hstu_attention(case["q"], case["k"], case["v"], case["offsets"], 0, alpha=1.0, scale_len=SCALE_LEN)
    assert out.shape == (0, 2, 16)


def test_detects_wrong_mask():
    """The comparison is sharp enough to catch a kernel that ignores the target mask."""
    case = _case(14, [20, 15], targets=[5, 5])
    with pytest.raises(AssertionError):
        kw = dict(alpha=1.0, scale_len=SCALE_LEN)
        out = hstu_attention(case["q"], case["k"], case["v"], case["offsets"], 20, **kw)
        ref = ref_attention(case["q"].double(), case["k"].double(), case["v"].double(),
                                       case["offsets"], 20, num_targets=case["num_targets"], **kw)
        assert _rel_err(out, ref) < 1e-3


@pytest.mark.parametrize("lengths", [[7, 0, 13], [1, 20]])
def test_query_times_set_the_last_rows_request_time(lengths):
    case = _case(31, lengths, pos=True, time=True)
    last = case["offsets"][1:] - 1
    # the held-out target comes 1..10^5 seconds after each sequence's last event
    gen = torch.Generator().manual_seed(5)
    query = case["timestamps"][last.clamp(min=0)] + torch.randint(1, 100_000, (len(lengths),), generator=gen)
    _run_both(case, query_times=query)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_temporal_bias_with_huge_gaps(dtype):
    """Event times far apart (up to 2**100 s as floats, 2**50 s as integers) hit the last bucket, as in the
    reference (the kernels clamp float times to +-2**67 s).

    The times are exact in float32: the kernels round each time (relative to its tile's first event) to
    float32 before taking a gap, where the reference rounds the gap.
    """
    case = _case(17, [20, 12, 5], time=True)
    total = case["timestamps"].numel()
    gen = torch.Generator().manual_seed(7)
    far = [2.0**70, 2.0**100] if dtype.is_floating_point else [2.0**31, 2.0**50]
    times = torch.tensor([0.0, 1.0, 3.0, 7.0, 2.0**40, *far], dtype=torch.float64)
    case["timestamps"] = times[torch.randint(0, len(times), (total,), generator=gen)].sort().values.to(dtype)
    _run_both(case)


@pytest.mark.parametrize("kernel", ["fwd", "bwd", "dq", "bias"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("bucket", [128, 4096])
def test_tuner_candidates_fit_in_shared_memory(kernel, head_dim, bucket):
    """Every configuration left to the tuner fits its tiles in shared memory and suits the length bucket."""
    configs = {"fwd": triton_mod._FWD_CONFIGS, "bwd": triton_mod._BWD_CONFIGS, "dq": triton_mod._DQ_CONFIGS,
               "bias": triton_mod._BIAS_CONFIGS}
    kept = triton_mod._prune(configs[kernel], {"MAX_LEN_BUCKET": bucket, "Q": torch.empty(1, dtype=torch.bfloat16)},
                             kernel, BLOCK_DQK=head_dim, BLOCK_DV=head_dim)
    assert kept
    for c in kept:
        assert triton_mod._smem_estimate(c, head_dim, head_dim, 2, kernel) <= triton_mod._SMEM_BUDGET
        tiles = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"])
        assert max(tiles) <= 64 if bucket <= triton_mod._SHORT_BUCKET else min(tiles) >= 64
    if kernel == "bias":  # one buffer depth per tile shape: the deepest that fits
        shapes = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) for c in kept]
        assert len(shapes) == len(set(shapes))


@pytest.mark.parametrize("passes", [2, 3])
@pytest.mark.parametrize("query_blocks", [(16, 16), (32, 16)])
def test_backward_in_passes(passes, query_blocks, monkeypatch):
    """The q, k, v backward as a dK + dV pass and a dQ pass, or as dV, dK and dQ passes: each covers every tile."""
    monkeypatch.setattr(triton_mod, "_BWD_PASSES", passes)
    monkeypatch.setattr(triton_mod, "_INTERPRET_FWD_BLOCKS", query_blocks)
    _run_both(_case(19, [20, 13, 1], targets=[3, 2, 0], pos=True, time=True), num_contextual=2, window=6)


def test_backward_passes_rule(monkeypatch):
    """Wide heads (d = 256) take three passes and narrower ones the fused kernel; an override is checked."""
    assert triton_mod._backward_passes({"BLOCK_DQK": 256, "BLOCK_DV": 256}) == 3
    assert triton_mod._backward_passes({"BLOCK_DQK": 128, "BLOCK_DV": 128}) == 1
    monkeypatch.setattr(triton_mod, "_BWD_PASSES", 2)
    assert triton_mod._backward_passes({"BLOCK_DQK": 256, "BLOCK_DV": 256}) == 2
    monkeypatch.setattr(triton_mod, "_BWD_PASSES", 4)
    with pytest.raises(ValueError, match="_BWD_PASSES must be 1, 2, 3 or None, not 4"):
        triton_mod._backward_passes({"BLOCK_DQK": 128, "BLOCK_DV": 128})


@pytest.mark.parametrize("tma", [True, False])
@pytest.mark.parametrize("split", [False, True])
def test_tiles_loaded_by_descriptor_or_pointer(tma, split, monkeypatch):
    """Unmasked tiles load K, V (forward, dQ pass), Q, dO (q, k, v backward) or all four (bias backward)
    through TMA descriptors (emulated by the interpreter) or pointers; sequences of several tiles have both
    kinds of tile, and partial last tiles.
    """
    monkeypatch.setattr(triton_mod, "_HEAD_TMA", tma)
    monkeypatch.setattr(triton_mod, "_QO_TMA_FUSED", True)  # Q, dO by TMA in the fused backward too
    if split:
        monkeypatch.setattr(triton_mod, "_BWD_PASSES", 3)
    case = _case(20, [61, 40, 9], targets=[4, 0, 2], pos=True, time=True)
    case["pos_bias"] = torch.randn(2 * 64 - 1, generator=torch.Generator().manual_seed(6))
    assert triton_mod._head_descriptors(case["k"], case["v"], triton_mod._meta(case["q"], case["v"], {}))[2] == tma
    _run_both(case, num_contextual=2, scale_len=64)


@pytest.mark.parametrize("kernel", ["fwd", "bwd", "bias"])
def test_fp32_short_buckets_tune_few_tiles(kernel):
    """fp32 in a short bucket leaves the tuner only the fp32 short-bucket tiles (slow compiles); bf16 keeps more."""
    configs = {"fwd": triton_mod._FWD_CONFIGS, "bwd": triton_mod._BWD_CONFIGS, "bias": triton_mod._BIAS_CONFIGS}[kernel]

    def kept(dtype: torch.dtype, bucket: int) -> set[tuple[int, int, int, int]]:
        args = {"MAX_LEN_BUCKET": bucket, "Q": torch.empty(1, dtype=dtype)}
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                for c in triton_mod._prune(configs, args, kernel, BLOCK_DQK=32, BLOCK_DV=32)}

    assert kept(torch.float32, 256) == triton_mod._FP32_SHORT_TILES
    assert len(kept(torch.bfloat16, 256)) > len(triton_mod._FP32_SHORT_TILES)
    assert kept(torch.float32, 4096) - triton_mod._FP32_SHORT_TILES  # long buckets: the usual candidates
