"""Cached HSTU attention (new rows against a KV cache) equals the full attention's rows, both kernels."""

from __future__ import annotations

import sys
from functools import partial

import pytest
import torch

from gr_lightning import ops
from gr_lightning.ops.pytorch.cached_attention import cached_hstu_attention as ref_cached
from gr_lightning.ops.pytorch.hstu_attention import hstu_attention as ref_full
from gr_lightning.ops.triton.cached_attention import cached_hstu_attention as triton_cached

triton_mod = sys.modules["gr_lightning.ops.triton.cached_attention"]

SCALE_LEN = 48
HEADS, D_QK, D_V = 2, 16, 8


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Triton outputs start as NaN: an element the kernel forgets to write fails the comparison."""
    monkeypatch.setattr(triton_mod, "_POISON", float("nan"))


def make_case(seed, cached, new, targets, capacity=None, pos=True, time=True, query_times=True):
    """Random full sequences of ``cached[b] + new[b]`` rows, split into a padded cache and jagged new rows."""
    gen = torch.Generator().manual_seed(seed)
    B = len(cached)
    capacity = capacity or max(max(cached), 1) + 3
    full_len = [p + m for p, m in zip(cached, new, strict=True)]
    full_offsets = torch.tensor([0, *torch.tensor(full_len).cumsum(0).tolist()])
    total = int(full_offsets[-1])
    q = torch.randn(total, HEADS, D_QK, generator=gen, dtype=torch.float64)
    k = torch.randn(total, HEADS, D_QK, generator=gen, dtype=torch.float64)
    v = torch.randn(total, HEADS, D_V, generator=gen, dtype=torch.float64)
    gaps = torch.randint(0, 400, (total,), generator=gen) * torch.randint(0, 2, (total,), generator=gen)
    ts = 1_600_000_000 + gaps.cumsum(0)
    # the cache's padding rows hold garbage that must be ignored
    k_cache = torch.randn(B, capacity, HEADS, D_QK, generator=gen, dtype=torch.float64)
    v_cache = torch.randn(B, capacity, HEADS, D_V, generator=gen, dtype=torch.float64)
    cache_ts = torch.randint(0, 2_000_000_000, (B, capacity), generator=gen)
    new_rows = []
    for b, p in enumerate(cached):
        s = int(full_offsets[b])
        k_cache[b, :p], v_cache[b, :p], cache_ts[b, :p] = k[s:s + p], v[s:s + p], ts[s:s + p]
        new_rows.append(torch.arange(s + p, int(full_offsets[b + 1])))
    new_rows = torch.cat(new_rows)
    num_targets = torch.tensor(targets)
    qt = ts.max() + torch.randint(0, 5000, (B,), generator=gen) if query_times else None
    return dict(
        full=dict(q=q, k=k, v=v, offsets=full_offsets, max_len=max(full_len), num_targets=num_targets,
                  timestamps=ts, query_times=qt),
        cached=dict(q=q[new_rows], k=k[new_rows], v=v[new_rows],
                    offsets=torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()]), max_len=max(new),
                    k_cache=k_cache, v_cache=v_cache, cache_lengths=torch.tensor(cached), num_targets=num_targets,
                    timestamps=ts[new_rows], cache_timestamps=cache_ts, query_times=qt),
        rows=new_rows,
        pos_bias=torch.randn(2 * SCALE_LEN - 1, generator=gen, dtype=torch.float64) if pos else None,
        time_bias=torch.randn(12, generator=gen, dtype=torch.float64) if time else None,
    )


def run_full(case):
    f = case["full"]
    out = ref_full(f["q"], f["k"], f["v"], f["offsets"], f["max_len"], alpha=0.6, scale_len=SCALE_LEN,
                   num_targets=f["num_targets"], pos_bias=case["pos_bias"], time_bias=case["time_bias"],
                   timestamps=f["timestamps"] if case["time_bias"] is not None else None, query_times=f["query_times"])
    return out[case["rows"]]


def run_cached(case, fn, dtype=torch.float64):
    c = dict(case["cached"])
    for name in ("q", "k", "v", "k_cache", "v_cache"):
        c[name] = c[name].to(dtype)
    bias = {n: case[n].to(dtype) if case[n] is not None else None for n in ("pos_bias", "time_bias")}
    return fn(c.pop("q"), c.pop("k"), c.pop("v"), c.pop("offsets"), c.pop("max_len"), c.pop("k_cache"),
              c.pop("v_cache"), c.pop("cache_lengths"), alpha=0.6, scale_len=SCALE_LEN, **bias, **c)


CASES = [
    # cached rows, new rows, candidates among the new rows: an empty cache, a history row before the
    # candidates, all-candidate rows, no candidates (appending), one new row
    ([0, 3, 7], [2, 5, 4], [1, 0, 4]),
    ([5, 1], [1, 3], [0, 2]),
]


@pytest.mark.parametrize("pos,time", [(True, True), (False, False), (True, False), (False, True)])
@pytest.mark.parametrize("cached,new,targets", CASES)
def test_reference_equals_full_attention_rows(cached, new, targets, pos, time):
    case = make_case(0, cached, new, targets, pos=pos, time=time)
    torch.testing.assert_close(run_cached(case, ref_cached), run_full(case), rtol=1e-10, atol=1e-12)


def test_reference_without_query_times_uses_the_last_rows_own_time():
    case = make_case(1, [4, 2], [3, 3], [2, 1], query_times=False)
    torch.testing.assert_close(run_cached(case, ref_cached), run_full(case), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("cached,new,targets", [([0, 37, 20], [18, 3, 21], [17, 2, 0]), ([5, 1], [1, 3], [0, 2])])
def test_triton_fp32_equals_reference(monkeypatch, cached, new, targets, split):
    monkeypatch.setattr(triton_mod, "_SPLIT", split)
    case = make_case(2, cached, new, targets, capacity=41)
    want = run_cached(case, ref_cached)
    got = run_cached(case, triton_cached, torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pos,time", [(False, False), (True, False), (False, True)])
def test_triton_fp32_bias_variants(pos, time):
    case = make_case(3, [9, 2], [4, 17], [3, 0], pos=pos, time=time)
    torch.testing.assert_close(run_cached(case, triton_cached, torch.float32).double(),
                               run_cached(case, ref_cached), rtol=1e-4, atol=1e-5)


def test_triton_bf16_close_to_reference(monkeypatch):
    monkeypatch.setattr(triton_mod, "_SPLIT", 2)
    case = make_case(4, [19, 6], [5, 12], [4, 12])
    want = run_cached(case, ref_cached)
    got = run_cached(case, triton_cached, torch.bfloat16)
    assert got.dtype == torch.bfloat16
    rel = (got.double() - want).norm() / want.norm()
    assert rel < 2e-2


def test_dispatch_picks_the_backend():
    case = make_case(5, [3, 2], [2, 2], [1, 1])
    want = run_cached(case, ref_cached)
    for kernel in ("pytorch", "auto"):  # auto is pytorch off-GPU
        got = run_cached(case, partial(ops.cached_hstu_attention, kernel=kernel))
        torch.testing.assert_close(got, want)
    got = run_cached(case, partial(ops.cached_hstu_attention, kernel="triton"), torch.float32)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fn", [ref_cached, triton_cached], ids=["pytorch", "triton"])
def test_bad_inputs_give_clear_errors(fn):
    case = make_case(6, [3, 2], [2, 2], [1, 1])
    c = case["cached"]
    bad = dict(c, cache_lengths=torch.tensor([3, 2, 1]))
    with pytest.raises(ValueError, match="cache holds 2 sequences"):
        run_cached(dict(case, cached=bad), fn, torch.float32)
    bad = dict(c, k_cache=c["k_cache"][:, :, :, :4])
    with pytest.raises(ValueError, match="head shapes differ"):
        run_cached(dict(case, cached=bad), fn, torch.float32)
    bad = dict(c, cache_timestamps=None)
    with pytest.raises(ValueError, match="time_bias needs"):
        run_cached(dict(case, cached=bad), fn, torch.float32)
