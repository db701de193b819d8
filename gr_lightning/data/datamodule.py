"""``RetrievalDataModule``: leave-one-out splits of a source's cached sequences as jagged batches."""

from __future__ import annotations

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from gr_lightning.data.sampling import SplitDataset, split_loader
from gr_lightning.data.sources.base import DataSource
from gr_lightning.data.split import SplitIndex, eligible_users, leave_one_out
from gr_lightning.data.store import SequenceStore


class RetrievalDataModule(L.LightningDataModule):
    """Next-item retrieval data: leave-one-out splits, yielding :class:`~gr_lightning.batch.JaggedBatch`.

    ``num_items``, ``max_seq_len`` and ``item_counts()`` work right after construction (they build
    or load the cache on first use), so LightningCLI can link them into the model.

    Args:
        source: Where the events come from.
        max_seq_len: Longest history kept per sequence (the most recent events).
        batch_size: Users per training batch.
        eval_batch_size: Users per validation, test and predict batch.
        num_workers: DataLoader worker processes (0: load in the main process).
        cache_dir: Parent folder of the preprocessed caches.
        min_events: Users with fewer events are dropped (at least 3: train, validation and test).
        seed: Seed of the per-epoch training shuffle.
        pin_memory: Pin batch memory (only useful with CUDA and a ``pin_memory``-aware batch).
        verify_cache: Check the CRC-32 of every cached array when loading it.
        length_grouping: Group users of similar history length into batches and balance the estimated
            attention cost across ranks (see :mod:`gr_lightning.data.sampling`); off (the default, and the
            setting of the published benchmark runs): plain shuffled batches.
        pool_steps: Training batches are length-sorted within pools of this many steps.

    """

    def __init__(
        self,
        source: DataSource,
        max_seq_len: int = 200,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        cache_dir: str = ".cache/gr-lightning",
        min_events: int = 3,
        seed: int = 0,
        pin_memory: bool = False,
        verify_cache: bool = True,
        length_grouping: bool = False,
        pool_steps: int = 50,
    ) -> None:
        super().__init__()
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        if min_events < 3:
            raise ValueError(f"min_events must be >= 3 for a leave-one-out split, got {min_events}")
        self.source = source
        self._max_seq_len = max_seq_len
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.min_events = min_events
        self.seed = seed
        self.pin_memory = pin_memory
        self.verify_cache = verify_cache
        self.length_grouping = length_grouping
        self.pool_steps = pool_steps
        self._store: SequenceStore | None = None
        self._users: np.ndarray | None = None
        self._splits: dict[str, SplitIndex] = {}
        self._item_counts: np.ndarray | None = None

    # ------------------------------------------------------------------ data
    @property
    def store(self) -> SequenceStore:
        """The cached sequences (built or loaded on first access)."""
        if self._store is None:
            self._store = SequenceStore.from_source(self.source, self.cache_dir, verify=self.verify_cache)
        return self._store

    @property
    def num_items(self) -> int:
        """Number of items; dense item ids are ``1..num_items`` and 0 is padding."""
        return self.store.num_items

    @property
    def num_users(self) -> int:
        """Number of users in the store (before the ``min_events`` filter)."""
        return self.store.num_users

    @property
    def max_seq_len(self) -> int:
        """Longest history in any batch."""
        return self._max_seq_len

    @property
    def users(self) -> np.ndarray:
        """``(M,)`` dense indices of the users kept by ``min_events``."""
        if self._users is None:
            self._users = eligible_users(self.store.offsets, self.min_events, source=self.source.name)
        return self._users

    def split(self, stage: str) -> SplitIndex:
        """Return the rows of ``stage`` (``train``, ``val``, ``test`` or ``predict``)."""
        if stage not in self._splits:
            self._splits[stage] = leave_one_out(self.store.offsets, self.users, stage, self._max_seq_len)
        return self._splits[stage]

    def item_counts(self) -> np.ndarray:
        """``(num_items+1,)`` int64 occurrences of each item in the training split (index 0 is 0)."""
        if self._item_counts is None:
            train = self.split("train")
            lengths = train.lengths()
            shift = np.repeat(train.starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
            index = shift + np.arange(int(lengths.sum()), dtype=np.int64)  # (sum_N,) event rows
            counts = np.bincount(self.store.items[index], minlength=self.num_items + 1)
            self._item_counts = counts.astype(np.int64)
        return self._item_counts

    def item_raw_ids(self) -> np.ndarray:
        """``(num_items+1,)`` raw id of each dense item id (``-1`` at 0), to map predictions back."""
        return np.asarray(self.store.item_ids)

    def user_raw_ids(self) -> np.ndarray:
        """``(num_users,)`` raw id of each dense user index."""
        return np.asarray(self.store.user_ids)

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download and preprocess once (Lightning calls this on one process per node)."""
        SequenceStore.from_source(self.source, self.cache_dir, verify=self.verify_cache)

    def setup(self, stage: str | None = None) -> None:
        """Open the cache and compute the splits."""
        for name in ("train", "val", "test", "predict"):
            self.split(name)

    def _loader(self, stage: str, batch_size: int, shuffle: bool) -> DataLoader:
        split = self.split(stage)
        return split_loader(SplitDataset(self.store, split), len(split), batch_size, shuffle=shuffle, seed=self.seed,
                            trainer=getattr(self, "trainer", None),
                            lengths=split.lengths() if self.length_grouping else None, pool_steps=self.pool_steps,
                            num_workers=self.num_workers, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        """Serve training histories (``s[:-2]``), shuffled each epoch; ``targets`` is None."""
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Serve validation histories with the second-to-last item as target."""
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Serve test histories with the last item as target."""
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Serve full histories (for next-item recommendations); ``targets`` is None."""
        return self._loader("predict", self.eval_batch_size, shuffle=False)

