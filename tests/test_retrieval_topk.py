"""Chunked full-catalogue top-K equals a brute-force stable sort of the whole score matrix."""

from __future__ import annotations

import pytest
import torch

from gr_lightning.retrieval_topk import chunked_top_k


def _brute_force(query, table, k, first_id=1, exclude=None):
    """Stable descending sort of every score (ties: lower id first), excluded ids at -inf."""
    scores = (query.double() @ table.double().T).clone()  # (B, N)
    scores[:, :first_id] = float("nan")
    for b, ids in enumerate(exclude or []):
        scores[b, ids] = float("-inf")
    values, ids = scores[:, first_id:].sort(dim=1, descending=True, stable=True)
    return values[:, :k], ids[:, :k] + first_id


def _jagged(lists):
    offsets = torch.tensor([0, *torch.tensor([len(x) for x in lists]).cumsum(0).tolist()])
    return torch.tensor([i for x in lists for i in x], dtype=torch.int64), offsets


@pytest.mark.parametrize(("k", "chunk"), [(5, 7), (12, 5), (30, 64), (61, 13), (3, 1)])
def test_equals_brute_force_on_random_vectors(k, chunk):
    g = torch.Generator().manual_seed(k * 100 + chunk)
    query, table = torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(62, 8, generator=g,
                                                                                   dtype=torch.float64)
    history = [[1, 5, 5, 40], [], [61], list(range(1, 30)), [2], [7, 8]]  # duplicates, empty, the last id
    exclude, offsets = _jagged(history)
    values, ids = chunked_top_k(query, table, k, chunk, exclude=exclude, exclude_offsets=offsets)
    ref_values, ref_ids = _brute_force(query, table, k, exclude=history)
    assert values.shape == ids.shape == (6, k)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(values, ref_values)
    for b, row in enumerate(ids.tolist()):  # excluded ids only to fill up when fewer than k items remain
        assert sum(i in history[b] for i in row) == max(0, k - (61 - len(set(history[b]))))


@pytest.mark.parametrize("chunk", [1, 4, 9, 100])
def test_ties_go_to_the_lower_id_for_every_chunk_size(chunk):
    g = torch.Generator().manual_seed(chunk)
    # Small integer vectors: inner products are exact and many are equal, in every chunking.
    query = torch.randint(-2, 3, (5, 3), generator=g).double()
    table = torch.randint(-1, 2, (41, 3), generator=g).double()
    history = [[3, 4], [], [1, 2, 3], [40], []]
    exclude, offsets = _jagged(history)
    for k in (1, 6, 17, 38):
        values, ids = chunked_top_k(query, table, k, chunk, exclude=exclude, exclude_offsets=offsets)
        ref_values, ref_ids = _brute_force(query, table, k, exclude=history)
        assert torch.equal(ids, ref_ids), (k, chunk)
        assert torch.equal(values, ref_values)
    # The value multiset also agrees with torch.topk (whose order among ties is unspecified).
    full = query @ table[1:].T
    assert torch.equal(chunked_top_k(query, table, 10, chunk)[0], full.topk(10, dim=1).values)


def test_float32_and_first_id_zero():
    g = torch.Generator().manual_seed(3)
    query, table = torch.randn(4, 16, generator=g), torch.randn(50, 16, generator=g)
    values, ids = chunked_top_k(query, table, 50, 11, first_id=0)
    ref_values, ref_ids = _brute_force(query, table, 50, first_id=0)
    assert values.dtype == torch.float32
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(values.double(), ref_values, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_reported():
    query, table = torch.randn(2, 4), torch.randn(10, 4)
    with pytest.raises(ValueError, match="k must be in"):
        chunked_top_k(query, table, 10, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_top_k(query, table, 2, 0)
    with pytest.raises(ValueError, match=r"table \(N, D\)"):
        chunked_top_k(query, torch.randn(10, 5), 2, 3)
    with pytest.raises(ValueError, match="exclude_offsets must be"):
        chunked_top_k(query, table, 2, 3, exclude=torch.tensor([1]), exclude_offsets=torch.tensor([0, 1]))
    table[4, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        chunked_top_k(query, table, 2, 3)
