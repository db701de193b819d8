"""Length-aware, cost-balanced distributed batch plans and the resumable loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gr_lightning.data.sampling import BatchSampler, ResumableDataLoader, serpentine_split


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 200, size=n)


def _shards(n: int, batch: int, world: int, shuffle: bool, **kw) -> list[list[list[int]]]:
    return [list(BatchSampler(n, batch, shuffle=shuffle, rank=r, world_size=world, **kw)) for r in range(world)]


@pytest.mark.parametrize("n,batch,world", [(1, 4, 1), (10, 3, 2), (97, 8, 2), (97, 8, 3), (5, 4, 4), (64, 16, 4)])
@pytest.mark.parametrize("grouped", [True, False])
def test_evaluation_serves_every_row_exactly_once_with_equal_steps(n, batch, world, grouped):
    lengths = _lengths(n) if grouped else None
    shards = _shards(n, batch, world, shuffle=False, lengths=lengths)
    rows = [row for shard in shards for b in shard for row in b]
    assert sorted(rows) == list(range(n))  # no padding duplicates: sums and counts reduce exactly
    assert len({len(s) for s in shards}) == 1  # n >= world in every case here
    for r in range(world):
        sampler = BatchSampler(n, batch, shuffle=False, rank=r, world_size=world, lengths=lengths)
        assert len(sampler) == len(shards[r])
        assert all(0 < len(b) <= batch + world - 1 for b in shards[r])


def test_evaluation_with_fewer_rows_than_ranks_leaves_ranks_empty_not_duplicated():
    shards = _shards(2, 4, 3, shuffle=False)
    assert [len(s) for s in shards] == [1, 1, 0]
    assert sorted(row for s in shards for b in s for row in b) == [0, 1]


@pytest.mark.parametrize("n,batch,world", [(300, 64, 1), (301, 16, 2), (1000, 32, 3), (7, 4, 2)])
def test_training_gives_equal_steps_and_covers_every_row(n, batch, world):
    lengths = _lengths(n)
    shards = _shards(n, batch, world, shuffle=True, seed=3, lengths=lengths)
    share = -(-n // world)
    steps = -(-share // batch)
    assert [len(s) for s in shards] == [steps] * world
    for r in range(world):
        assert len(BatchSampler(n, batch, shuffle=True, rank=r, world_size=world, lengths=lengths)) == steps
    rows = [row for shard in shards for b in shard for row in b]
    assert set(rows) == set(range(n)) and len(rows) == -(-n // world) * world  # padded to equal shares
    # Step by step, ranks' batches differ by at most one row.
    for step in zip(*shards, strict=True):
        sizes = [len(b) for b in step]
        assert max(sizes) - min(sizes) <= 1


def test_training_plan_is_seeded_per_epoch_and_shared_by_ranks():
    lengths = _lengths(500)

    def epoch(e: int, seed: int = 1) -> list[list[list[int]]]:
        out = []
        for r in range(2):
            sampler = BatchSampler(500, 32, shuffle=True, seed=seed, rank=r, world_size=2, lengths=lengths)
            sampler.set_epoch(e)
            out.append(list(sampler))
        return out

    assert epoch(0) == epoch(0)
    assert epoch(0) != epoch(1)
    assert epoch(0) != epoch(0, seed=2)
    sampler = BatchSampler(500, 32, shuffle=True, seed=1, rank=0, world_size=2, lengths=lengths)
    plan = sampler.plan()
    assert [step[1].tolist() for step in plan] == epoch(0)[1]


def test_batches_group_similar_lengths():
    lengths = _lengths(4096)
    grouped = list(BatchSampler(4096, 64, shuffle=True, lengths=lengths))
    plain = list(BatchSampler(4096, 64, shuffle=True))
    spread = lambda batches: np.mean([np.ptp(lengths[b]) for b in batches])  # noqa: E731
    assert spread(grouped) < 0.1 * spread(plain)
    # Training batches are still random: not simply sorted from longest to shortest.
    first = [lengths[b].max() for b in grouped]
    assert first != sorted(first, reverse=True)


def test_ranks_get_balanced_cost_every_step():
    lengths = _lengths(4096, seed=5)
    world = 4
    sampler = BatchSampler(4096, 32, shuffle=True, world_size=world, lengths=lengths)
    costs = sampler.rank_costs()  # (steps, world)
    assert costs.shape == (4096 // (32 * world), world)
    imbalance = (costs.max(1) / costs.mean(1) - 1).mean()
    # Versus the same lengths in plain shuffled batches (no grouping, no balancing).
    plain = BatchSampler(4096, 32, shuffle=True, world_size=world).plan()
    naive = np.array([[(lengths[b].astype(float) ** 2).sum() for b in step] for step in plain])
    assert imbalance < 0.02, imbalance
    assert (naive.max(1) / naive.mean(1) - 1).mean() > 10 * imbalance


def test_serpentine_split_balances_and_keeps_sizes():
    costs = np.array([100.0, 90, 80, 70, 60, 50, 40, 30, 20, 10])
    parts = serpentine_split(costs, 2)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    assert [p.size for p in parts] == [5, 5]
    sums = [costs[p].sum() for p in parts]
    assert abs(sums[0] - sums[1]) <= 20


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(10, 0, shuffle=True)
    with pytest.raises(ValueError, match="rank"):
        BatchSampler(10, 2, shuffle=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="lengths"):
        BatchSampler(10, 2, shuffle=True, lengths=np.ones(9))


class _Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 50

    def __getitem__(self, rows: list[int]) -> torch.Tensor:
        return torch.tensor(rows)


def _loader(num_workers: int = 0) -> ResumableDataLoader:
    sampler = BatchSampler(50, 4, shuffle=True, seed=7, lengths=_lengths(50))
    return ResumableDataLoader(_Rows(), batch_size=None, sampler=sampler, num_workers=num_workers,
                               generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_mid_epoch_at_the_same_batch(num_workers):
    full = _loader()
    full.sampler.set_epoch(2)
    expected = [b.tolist() for b in full]
    first = _loader(num_workers)
    first.sampler.set_epoch(2)
    it = iter(first)
    seen = [next(it).tolist() for _ in range(5)]
    state = first.state_dict()
    assert state["batches_served"] == 5 and state["sampler"]["epoch"] == 2

    resumed = _loader(num_workers)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # Lightning sets the (restored) epoch again before iterating
    rest = [b.tolist() for b in resumed]
    assert seen + rest == expected
    assert resumed.state_dict()["batches_served"] == len(expected)
    # The offset applies once: the next epoch starts from its first batch.
    resumed.sampler.set_epoch(3)
    assert len(list(resumed)) == len(expected)


def test_saved_position_is_dropped_when_another_epoch_is_iterated():
    loader = _loader()
    loader.load_state_dict({"sampler": {"epoch": 1, "seed": 7}, "batches_served": 13})
    loader.sampler.set_epoch(2)  # the saved epoch was complete; Lightning moved on
    assert len(list(loader)) == len(loader)


def test_resuming_with_a_different_plan_is_refused():
    loader = _loader()
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict({"sampler": {"epoch": 0, "seed": 8}, "batches_served": 1})


def test_resumable_loader_refuses_other_samplers():
    with pytest.raises(TypeError):
        ResumableDataLoader(_Rows(), batch_size=None, sampler=[[0, 1]])
