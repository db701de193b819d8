"""The reference attention against a direct per-pair loop of the paper's formula (Eq. 2)."""

import math

import pytest
import torch
import torch.nn.functional as F

from gr_lightning import ops
from gr_lightning.ops.pytorch import attention_mask, hstu_attention, time_buckets


def _loop_reference(q, k, v, lengths, *, alpha, n, allowed, pos_bias=None, time_bias=None, ts=None,
                    query_times=None):
    out = torch.zeros_like(v)
    start = 0
    for b, length in enumerate(lengths):
        for i in range(length):
            for j in range(length):
                if not allowed(b, i, j, length):
                    continue
                s = alpha * (q[start + i] * k[start + j]).sum(-1)  # (H,)
                if pos_bias is not None:
                    s = s + pos_bias[min(max(i - j, -(n - 1)), n - 1) + n - 1]
                if time_bias is not None:
                    if i + 1 < length:
                        nxt = ts[start + i + 1]
                    else:
                        nxt = ts[start + length - 1] if query_times is None else query_times[b]
                    gap = max(abs(int(nxt) - int(ts[start + j])), 1)
                    bucket = min(max(math.floor(math.log(gap) / 0.301), 0), time_bias.numel() - 1)
                    s = s + time_bias[bucket]
                out[start + i] += (F.silu(s) / n).unsqueeze(-1) * v[start + j]
        start += length
    return out


def _inputs(lengths, heads=2, d_qk=3, d_v=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(total, heads, d_qk, dtype=torch.float64, generator=gen)
    k = torch.randn(total, heads, d_qk, dtype=torch.float64, generator=gen)
    v = torch.randn(total, heads, d_v, dtype=torch.float64, generator=gen)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    ts = torch.cumsum(torch.randint(0, 100_000, (total,), generator=gen), 0)
    return q, k, v, offsets, ts


def test_causal_with_both_biases_matches_formula():
    lengths = [4, 0, 1, 6]
    q, k, v, offsets, ts = _inputs(lengths)
    n = 8
    pos_bias = torch.randn(2 * n - 1, dtype=torch.float64)
    time_bias = torch.randn(129, dtype=torch.float64)
    got = hstu_attention(q, k, v, offsets, max(lengths), alpha=0.7, scale_len=n, pos_bias=pos_bias,
                         time_bias=time_bias, timestamps=ts)
    want = _loop_reference(q, k, v, lengths, alpha=0.7, n=n, allowed=lambda b, i, j, L: j <= i,
                           pos_bias=pos_bias, time_bias=time_bias, ts=ts)
    torch.testing.assert_close(got, want)


def test_query_times_are_the_last_rows_request_time():
    lengths = [3, 0, 5]
    q, k, v, offsets, ts = _inputs(lengths, seed=7)
    time_bias = torch.randn(129, dtype=torch.float64)
    query = torch.tensor([int(ts[2]) + 50_000, 0, int(ts[7]) + 3])
    got = hstu_attention(q, k, v, offsets, 5, alpha=1.0, scale_len=8, time_bias=time_bias, timestamps=ts,
                         query_times=query)
    want = _loop_reference(q, k, v, lengths, alpha=1.0, n=8, allowed=lambda b, i, j, L: j <= i,
                           time_bias=time_bias, ts=ts, query_times=query.tolist())
    torch.testing.assert_close(got, want)
    default = hstu_attention(q, k, v, offsets, 5, alpha=1.0, scale_len=8, time_bias=time_bias, timestamps=ts)
    assert torch.equal(got[[0, 1, 3, 4, 5, 6]], default[[0, 1, 3, 4, 5, 6]])  # only last rows move
    assert not torch.allclose(got[[2, 7]], default[[2, 7]])


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"num_targets": torch.tensor([2, 0, 1])},
         lambda t: lambda b, i, j, L: (j <= i and j < L - t[b]) if i < L - t[b] else (j < L - t[b] or j == i)),
        ({"num_contextual": 2}, lambda t: lambda b, i, j, L: j <= i or i < 2),
        ({"window": 1}, lambda t: lambda b, i, j, L: j <= i and i - j <= 1),
    ],
    ids=["target-aware", "contextual-prefix", "window"],
)
def test_masks_match_their_definition(kwargs, rule):
    lengths = [5, 3, 4]
    q, k, v, offsets, _ = _inputs(lengths, seed=1)
    got = hstu_attention(q, k, v, offsets, 5, alpha=1.0, scale_len=5, **kwargs)
    targets = kwargs.get("num_targets", torch.zeros(3, dtype=torch.long)).tolist()
    want = _loop_reference(q, k, v, lengths, alpha=1.0, n=5, allowed=rule(targets))
    torch.testing.assert_close(got, want)


def test_mask_shapes_and_candidates_never_seen_by_history():
    mask = attention_mask(torch.tensor([4]), 4, num_targets=torch.tensor([2]))[0]
    assert mask.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, False, True],
    ]


def test_time_buckets_are_log_scaled_and_clamped():
    gaps = torch.tensor([0, 1, 2, 3, 10, 10**9, 10**30 // 10**20])
    buckets = time_buckets(gaps, torch.zeros_like(gaps), 128)
    assert buckets[:3].tolist() == [0, 0, 2]  # ln(2)/0.301 = 2.30
    assert buckets[4].item() == math.floor(math.log(10) / 0.301)
    assert (buckets <= 128).all()


def test_output_does_not_depend_on_batch_companions():
    q, k, v, offsets, _ = _inputs([3, 7], seed=2)
    both = ops.hstu_attention(q, k, v, offsets, 7, alpha=1.0, scale_len=10)
    alone = ops.hstu_attention(q[:3], k[:3], v[:3], torch.tensor([0, 3]), 3, alpha=1.0, scale_len=10)
    torch.testing.assert_close(both[:3], alone)


def test_unknown_kernel_is_rejected():
    with pytest.raises(ValueError, match="unknown kernel 'cuda'"):
        ops.resolve_kernel("cuda", torch.device("cpu"))
    assert ops.resolve_kernel("auto", torch.device("cpu")) == "pytorch"
