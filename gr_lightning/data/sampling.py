"""Datasets indexed by whole batches, a length-aware cost-balanced batch sampler, and a resumable loader.

The sampler plans a whole epoch on every rank from the same seed, so ranks agree on it without talking:

1. order the rows: a seeded permutation (training) or the identity (evaluation);
2. group by length: sort by length within pools of ``pool_steps`` steps (training: "sortish", so batches
   are still random) or over the whole split (evaluation);
3. cut the order into steps of ``world_size * batch_size`` rows of similar length, and split each step
   into one batch per rank so that the estimated costs (sum of squared lengths: HSTU attention is
   quadratic) are balanced: rows are dealt in descending cost in serpentine order (0, 1, .., W-1,
   W-1, .., 0, ...), which keeps row counts equal (within one) and costs close;
4. training only: shuffle the order of the full steps (the partial step stays last).

Training pads the rows to a multiple of ``world_size`` by repeating rows, as ``DistributedSampler``
does, so every rank gets the same number of steps. Evaluation never pads: every row is served exactly
once on exactly one rank, so metrics reduced as sums and counts are exact. A final step with fewer
rows than ranks is merged into the step before it, so ranks also get the same number of evaluation
steps (whenever there are at least ``world_size`` rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gr_lightning.batch import JaggedBatch
from gr_lightning.data.collate import gather_batch, passthrough
from gr_lightning.data.split import SplitIndex
from gr_lightning.data.store import SequenceStore


class SplitDataset(Dataset):
    """One split of a store; indexing with a list of rows returns their collated batch.

    Args:
        store: The sequences (memory-mapped; reopened lazily in each worker after pickling).
        split: Which rows and ranges make up this split.

    """

    def __init__(self, store: SequenceStore, split: SplitIndex) -> None:
        self.store = store
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, rows: Sequence[int] | np.ndarray) -> JaggedBatch:
        return gather_batch(self.store.items, self.store.timestamps, self.split, np.asarray(rows))


def serpentine_split(costs: np.ndarray, parts: int) -> list[np.ndarray]:
    """Split positions ``0..len(costs)-1`` into ``parts`` groups of equal size (within one), balanced by cost.

    Positions are dealt in descending cost in serpentine order, so the largest and the smallest items
    alternate between groups.

    Args:
        costs: ``(n,)`` cost of each position.
        parts: Number of groups.

    Returns:
        ``parts`` int64 arrays of positions, each in ascending cost order of dealing.

    """
    order = np.argsort(-np.asarray(costs, dtype=np.float64), kind="stable")
    lap, slot = np.divmod(np.arange(order.size), parts)
    owner = np.where(lap % 2 == 0, slot, parts - 1 - slot)
    return [order[owner == p] for p in range(parts)]


class BatchSampler(DistributedSampler):
    """Yields lists of rows, this rank's share of a seeded, length-grouped, cost-balanced epoch plan.

    It subclasses :class:`DistributedSampler` so Lightning keeps it as is under DDP (and calls
    ``set_epoch``) instead of wrapping it. See the module docstring for the plan.

    Args:
        num_rows: Size of the dataset.
        batch_size: Rows per batch (the last step's batches may be smaller; when evaluating, one step
            may carry up to ``world_size - 1`` extra rows).
        shuffle: Training mode: shuffle each epoch and pad to equal shares. Otherwise evaluation mode:
            a fixed order and every row exactly once.
        seed: Base seed of the shuffle.
        rank: This process's rank.
        world_size: Number of processes.
        lengths: ``(num_rows,)`` sequence length of each row; None treats all rows as equally long
            (no grouping, plain shuffled batches).
        pool_steps: Training: rows are sorted by length within pools of this many steps (larger: better
            grouping, less randomness; 1 with ``world_size`` 1 disables grouping).

    """

    def __init__(self, num_rows: int, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, lengths: np.ndarray | None = None, pool_steps: int = 50) -> None:
        # Deliberately not calling DistributedSampler.__init__: it needs an initialised process group.
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if pool_steps < 1:
            raise ValueError(f"pool_steps must be >= 1, got {pool_steps}")
        if lengths is not None:
            lengths = np.asarray(lengths, dtype=np.int64)
            if lengths.shape != (num_rows,):
                raise ValueError(f"lengths must have shape ({num_rows},), got {lengths.shape}")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.num_replicas = world_size
        self.lengths = lengths
        self.pool_steps = pool_steps
        self.epoch = 0
        self.drop_last = False
        self.num_samples = -(-num_rows // world_size) if shuffle else len(range(rank, num_rows, world_size))
        self.total_size = self.num_samples * world_size if shuffle else num_rows
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the plan of ``epoch``."""
        self.epoch = epoch

    def costs(self, rows: np.ndarray) -> np.ndarray:
        """Estimated cost of each row: its squared length (1 when lengths are unknown)."""
        if self.lengths is None:
            return np.ones(rows.size, dtype=np.float64)
        return self.lengths[rows].astype(np.float64) ** 2

    def plan(self) -> list[list[np.ndarray]]:
        """The epoch's steps, each a list of ``world_size`` row arrays (one batch per rank)."""
        world, per_step = self.num_replicas, self.num_replicas * self.batch_size
        key = np.zeros(self.num_rows, dtype=np.int64) if self.lengths is None else self.lengths
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(self.num_rows)
            if self.total_size > self.num_rows:
                order = np.resize(order, self.total_size)  # repeats the first rows, as DistributedSampler
            pool = per_step * self.pool_steps
            for start in range(0, order.size, pool):  # sort by length within each pool, longest first
                chunk = order[start : start + pool]
                order[start : start + pool] = chunk[np.argsort(-key[chunk], kind="stable")]
        else:
            rng = None
            order = np.argsort(-key, kind="stable")
        steps = [order[start : start + per_step] for start in range(0, order.size, per_step)]
        if not self.shuffle and len(steps) > 1 and steps[-1].size < world:
            steps[-2:] = [np.concatenate(steps[-2:])]  # no rank left without a batch on the last step
        if rng is not None and len(steps) > 1:
            full = len(steps) if steps[-1].size == per_step else len(steps) - 1
            steps[:full] = [steps[i] for i in rng.permutation(full)]
        return [[rows[part] for part in serpentine_split(self.costs(rows), world)] for rows in steps]

    def rank_costs(self) -> np.ndarray:
        """``(steps, world_size)`` estimated cost of every rank's batch at every step of the epoch."""
        return np.array([[self.costs(b).sum() for b in step] for step in self.plan()], dtype=np.float64)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.start_batch = self.start_batch, 0  # a resume offset applies to one iteration only
        for step in self.plan()[skip:]:
            rows = step[self.rank]
            if rows.size:
                yield rows.tolist()

    def __len__(self) -> int:
        if self.shuffle:
            return -(-self.num_samples // self.batch_size)
        return sum(1 for step in self.plan() if step[self.rank].size)

    def state_dict(self) -> dict[str, Any]:
        """What determines the plan (to check on resume) and the current epoch."""
        return {"epoch": self.epoch, "seed": self.seed, "num_rows": self.num_rows, "batch_size": self.batch_size,
                "world_size": self.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch; refuse a plan that would differ from the saved one."""
        for key in ("seed", "num_rows", "batch_size", "world_size"):
            if key in state and state[key] != getattr(self, "num_replicas" if key == "world_size" else key):
                raise ValueError(f"cannot resume the batch plan exactly: saved {key}={state[key]}, "
                                 f"now {getattr(self, 'num_replicas' if key == 'world_size' else key)}")
        self.epoch = int(state["epoch"])


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`BatchSampler` that saves and restores its position within the epoch.

    Lightning stores ``state_dict()`` of stateful training loaders in its checkpoints and calls
    ``load_state_dict()`` before iterating again; the next iteration then skips the batches already
    trained on. The count is of batches handed to the consumer, so worker prefetching does not shift it.
    Pass a ``generator`` to keep the DataLoader from drawing worker seeds from the global torch RNG
    (which would make the training RNG depend on how often loaders were iterated).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, BatchSampler):
            raise TypeError("ResumableDataLoader needs a gr_lightning BatchSampler as its sampler")
        self._yielded = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already served) from a checkpoint

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._counting()

    def _counting(self) -> Iterator[Any]:
        # Runs at the first next(), after Lightning's set_epoch: a saved position applies to its own epoch only.
        start = 0
        if self._resume is not None:
            epoch, served = self._resume
            self._resume = None
            start = served if epoch == self.sampler.epoch else 0
        self.sampler.start_batch = start
        self._yielded = start
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state and how many batches of its epoch were served."""
        return {"sampler": self.sampler.state_dict(), "batches_served": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved epoch and position."""
        self.sampler.load_state_dict(state["sampler"])
        self._resume = (self.sampler.epoch, int(state["batches_served"]))


def loader_generator(seed: int) -> torch.Generator:
    """A dedicated generator for a DataLoader's worker seeds (keeps the global RNG untouched)."""
    return torch.Generator().manual_seed(int(seed))


def split_loader(dataset: Dataset, num_rows: int, batch_size: int, *, shuffle: bool, seed: int, trainer: Any = None,
                 lengths: np.ndarray | None = None, pool_steps: int = 50, num_workers: int = 0,
                 pin_memory: bool = False) -> ResumableDataLoader:
    """The loader every DataModule split uses: balanced per-rank batches that resume mid-epoch.

    Args:
        dataset: Maps a batch of row indices (what the sampler yields) to a collated batch.
        num_rows: Rows of the split.
        batch_size: Rows per batch.
        shuffle: Reshuffle each epoch (training).
        seed: Seed of the shuffle and of the workers' seeds.
        trainer: The attached Trainer (its rank and world size), or None for one process.
        lengths: ``(num_rows,)`` sequence lengths to group batches by, or None to keep row order.
        pool_steps: Batches per length-sorted pool (see :class:`BatchSampler`).
        num_workers: DataLoader worker processes.
        pin_memory: Pin batch memory.

    """
    rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    sampler = BatchSampler(num_rows, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                           lengths=lengths, pool_steps=pool_steps)
    return ResumableDataLoader(dataset, batch_size=None, sampler=sampler, collate_fn=passthrough,
                               num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                               generator=loader_generator(seed))

