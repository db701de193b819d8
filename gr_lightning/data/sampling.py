"""Datasets indexed by whole batches, and a seeded, rank-aware batch sampler."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from gr_lightning.batch import JaggedBatch
from gr_lightning.data.collate import gather_batch
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


class BatchSampler(DistributedSampler):
    """Yields lists of rows, shuffled per epoch from ``seed + epoch``, this rank's share only.

    It subclasses :class:`DistributedSampler` so Lightning keeps it as is under DDP (and calls
    ``set_epoch``) instead of wrapping it. Every rank gets the same number of batches: the rows are
    padded by repeating the first ones, as ``DistributedSampler`` does.

    Args:
        num_rows: Size of the dataset.
        batch_size: Rows per batch (the last batch may be smaller).
        shuffle: Shuffle each epoch.
        seed: Base seed of the shuffle.
        rank: This process's rank.
        world_size: Number of processes.

    """

    def __init__(self, num_rows: int, batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        # Deliberately not calling DistributedSampler.__init__: it needs an initialised process group.
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.num_replicas = world_size
        self.epoch = 0
        self.drop_last = False
        self.num_samples = -(-num_rows // world_size)
        self.total_size = self.num_samples * world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
        else:
            order = np.arange(self.num_rows)
        if self.total_size > self.num_rows:
            order = np.resize(order, self.total_size)  # repeats the first rows
        mine = order[self.rank : self.total_size : self.num_replicas]
        for start in range(0, mine.size, self.batch_size):
            yield mine[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)
