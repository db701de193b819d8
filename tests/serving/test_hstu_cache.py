"""HSTU with a KV cache: scoring candidates and appending events equal a full recompute (both kernels)."""

from __future__ import annotations

import pytest
import torch

from gr_lightning.zoo.hstu import HSTU

DIM, MAX_LEN = 16, 40


def make_backbone(kernel="pytorch", pos=True, time=True, dtype=torch.float64, seed=0) -> HSTU:
    torch.manual_seed(seed)
    model = HSTU(DIM, MAX_LEN, num_blocks=2, num_heads=2, attention_dim=8, linear_dim=8, dropout=0.1,
                 num_time_buckets=20, position_bias=pos, time_bias=time, kernel=kernel)
    for block in model.blocks:  # biases large enough to matter
        for table in (block.pos_bias, block.time_bias):
            if table is not None:
                torch.nn.init.normal_(table, std=0.5)
    return model.to(dtype).eval()


def jagged(parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.tensor([0, *torch.tensor([len(p) for p in parts]).cumsum(0).tolist()])
    return torch.cat(parts), offsets


class Users:
    """Random per-user token sequences (history then candidates), fresh for each seed."""

    def __init__(self, lengths, seed=0, dtype=torch.float64):
        gen = torch.Generator().manual_seed(seed)
        self.x = [torch.randn(n, DIM, generator=gen, dtype=dtype) for n in lengths]
        gaps = [torch.randint(0, 3000, (n,), generator=gen) * torch.randint(0, 2, (n,), generator=gen)
                for n in lengths]
        self.ts = [1_700_000_000 + g.cumsum(0) for g in gaps]
        self.query_times = torch.stack([t[-1] + 500 for t in self.ts])

    def rows(self, start, stop):
        """Rows ``start[b]:stop[b]`` of every user: (x, offsets, max_len, timestamps)."""
        x, offsets = jagged([x[a:b] for x, a, b in zip(self.x, start, stop, strict=True)])
        ts, _ = jagged([t[a:b] for t, a, b in zip(self.ts, start, stop, strict=True)])
        return x, offsets, int((offsets[1:] - offsets[:-1]).max()), ts


def full_candidates(model, users, hist, total, num_contextual=0):
    """Full recompute: outputs at the candidate rows ``hist[b]:total[b]``."""
    x, offsets, max_len, ts = users.rows([0] * len(hist), total)
    num_targets = torch.tensor(total) - torch.tensor(hist)
    out = model(x, offsets, max_len, ts, users.query_times, num_targets=num_targets, num_contextual=num_contextual)
    rows = torch.cat([torch.arange(int(offsets[b]) + h, int(offsets[b + 1])) for b, h in enumerate(hist)])
    return out[rows]


def cached_candidates(model, cache, users, hist, total):
    x, offsets, max_len, ts = users.rows(hist, total)
    return model.score_candidates(cache, x, offsets, max_len, ts, users.query_times)


HIST = [1, 5, 9]  # a length-1 history: the cache holds only its pending row
TOTAL = [4, 6, 13]


@pytest.mark.parametrize("pos,time", [(True, True), (False, False), (True, False), (False, True)])
def test_scoring_candidates_equals_full_recompute(pos, time):
    model = make_backbone(pos=pos, time=time)
    users = Users(TOTAL, seed=1)
    cache = model.prefill(*users.rows([0, 0, 0], HIST))
    assert cache.lengths.tolist() == [0, 4, 8] and cache.pending.shape == (3, DIM)
    want = full_candidates(model, users, HIST, TOTAL)
    torch.testing.assert_close(cached_candidates(model, cache, users, HIST, TOTAL), want, rtol=1e-10, atol=1e-10)
    # scoring leaves the cache as it was: another request scores the same
    torch.testing.assert_close(cached_candidates(model, cache, users, HIST, TOTAL), want, rtol=1e-10, atol=1e-10)


def test_scoring_without_query_times_and_with_an_empty_candidate_list():
    model = make_backbone()
    users = Users(TOTAL, seed=2)
    users.query_times = None
    total = [4, 5, 13]  # user 1 has no candidates
    cache = model.prefill(*users.rows([0, 0, 0], HIST))
    torch.testing.assert_close(cached_candidates(model, cache, users, HIST, total),
                               full_candidates(model, users, HIST, total), rtol=1e-10, atol=1e-10)


def test_the_last_history_row_depends_on_the_next_events_time():
    """Why the last row stays pending: caching its deeper keys before the next event is known would be wrong."""
    model = make_backbone()
    users = Users([6], seed=3)
    x, offsets, max_len, ts = users.rows([0], [6])
    block0 = model.blocks[0]
    out = block0(x, offsets, max_len, ts)
    later = ts.clone()
    later[5] += 10_000_000  # the event after row 4 happens much later
    moved = block0(x, offsets, max_len, later)
    assert not torch.allclose(out[4], moved[4])  # row 4's layer-1 input (so its layer-1 keys) changed
    torch.testing.assert_close(out[:4], moved[:4])


@pytest.mark.parametrize("kernel", ["pytorch", "triton"])
def test_appending_events_then_scoring_equals_full_recompute(kernel):
    dtype = torch.float64 if kernel == "pytorch" else torch.float32
    tol = dict(rtol=1e-10, atol=1e-10) if kernel == "pytorch" else dict(rtol=1e-4, atol=1e-4)
    model = make_backbone(kernel, dtype=dtype)
    users = Users([7, 4, 12], seed=4, dtype=dtype)
    first, second, hist, total = [1, 2, 3], [4, 2, 9], [5, 3, 9], [7, 4, 12]
    cache = model.prefill(*users.rows([0, 0, 0], first))
    last = model.append(cache, *users.rows(first, second), query_times=users.query_times)  # user 1 gets none
    x, offsets, max_len, ts = users.rows([0, 0, 0], second)
    full = model(x, offsets, max_len, ts, users.query_times)
    torch.testing.assert_close(last, full[offsets[1:] - 1], **tol)
    torch.testing.assert_close(model.last_output(cache, users.query_times), full[offsets[1:] - 1], **tol)
    pending = (cache.pending.data_ptr(), cache.pending_timestamps.data_ptr())
    model.append(cache, *users.rows(second, hist))
    assert cache.history_lengths.tolist() == hist
    # Appends write the pending row in place: a captured scoring graph reads these buffers.
    assert (cache.pending.data_ptr(), cache.pending_timestamps.data_ptr()) == pending
    torch.testing.assert_close(cached_candidates(model, cache, users, hist, total),
                               full_candidates(model, users, hist, total), **tol)


@pytest.mark.parametrize("pos,time", [(True, True), (False, False)])
def test_triton_scoring_equals_full_recompute(pos, time):
    model = make_backbone("triton", pos=pos, time=time, dtype=torch.float32)
    users = Users(TOTAL, seed=5, dtype=torch.float32)
    cache = model.prefill(*users.rows([0, 0, 0], HIST))
    got = cached_candidates(model, cache, users, HIST, TOTAL)
    torch.testing.assert_close(got, full_candidates(model, users, HIST, TOTAL), rtol=1e-4, atol=1e-4)
    # and the fused path agrees with the reference path on the same parameters
    model.kernel = "pytorch"
    torch.testing.assert_close(got, cached_candidates(model, cache, users, HIST, TOTAL), rtol=1e-4, atol=1e-4)


def test_contextual_prefix_cache_scores_exactly_and_refuses_appends():
    model = make_backbone()
    hist, total = [3, 6], [6, 8]
    users = Users(total, seed=6)
    request = torch.stack([users.ts[b][h] for b, h in enumerate(hist)])  # the first candidate's time
    with pytest.raises(ValueError, match="pass request_times"):
        model.prefill(*users.rows([0, 0], hist), num_contextual=2)
    cache = model.prefill(*users.rows([0, 0], hist), num_contextual=2, request_times=request)
    assert cache.pending is None and cache.lengths.tolist() == hist
    torch.testing.assert_close(cached_candidates(model, cache, users, hist, total),
                               full_candidates(model, users, hist, total, num_contextual=2), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="contextual prefix of 2 rows"):
        model.append(cache, *users.rows(hist, [4, 7]))
    with pytest.raises(ValueError, match="no pending last row"):
        model.last_output(cache)
    users.ts[1][6] += 1  # a candidate list that starts at another time than the cache was built for
    with pytest.raises(ValueError, match="sequence 1: the first candidate's time"):
        cached_candidates(model, cache, users, hist, total)


def test_bad_input_gives_clear_errors():
    model = make_backbone()
    users = Users([5, 5, 5], seed=7)
    cache = model.prefill(*users.rows([0, 0, 0], [3, 2, 4]), capacity=6)
    x, offsets, max_len, ts = Users([5, 5], seed=8).rows([3, 2], [5, 5])  # two users against a cache of three
    with pytest.raises(ValueError, match="describe 2 sequences but the cache holds 3"):
        model.score_candidates(cache, x, offsets, max_len, ts)
    model.append(cache, *users.rows([3, 2, 4], [5, 5, 5]))  # five rows each: fits
    with pytest.raises(ValueError, match="sequence 0 would hold 7 history rows, beyond the cache's capacity 6"):
        model.append(cache, *users.rows([0, 0, 0], [2, 1, 1]))
    x, offsets, max_len, ts = users.rows([3, 2, 4], [5, 5, 5])
    with pytest.raises(ValueError, match=r"x is torch\.float32"):
        model.score_candidates(cache, x.float(), offsets, max_len, ts)
    with pytest.raises(ValueError, match="timestamps must be"):
        model.score_candidates(cache, x, offsets, max_len, ts[:-1])
    with pytest.raises(ValueError, match="query_times must be"):
        model.score_candidates(cache, x, offsets, max_len, ts, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"offsets\[-1\] = 6 but x has 5 rows"):
        model.score_candidates(cache, x[:-1], offsets, max_len, ts[:-1])
    with pytest.raises(ValueError, match="history 1 has 0 rows"):
        model.prefill(*users.rows([0, 0, 0], [2, 0, 1]))
    with pytest.raises(ValueError, match="capacity 4"):
        model.prefill(*users.rows([0, 0, 0], [2, 5, 1]), capacity=4)
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.prefill(*users.rows([0, 0, 0], [2, 2, 1]))
