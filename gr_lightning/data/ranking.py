"""Ranking data: per user a history of (item, action) events, contextual features and K candidates.

Generative ranking (HSTU paper, Sec. 4.2 and Fig. 3) predicts the actions a user takes on candidate
items given their history. The split is **time-based per user** (each user's events in time order;
``K`` = ``num_candidates``):

- test: candidates are the last ``K`` events, the history is everything before them;
- validation: candidates are the ``K`` events before the test candidates, history before them;
- train: the events before the validation candidates; the last ``K`` of them are the candidates and
  the rest the history (the model may also supervise every history item, see
  :class:`~gr_lightning.ranking.RankingModule`).

So no training label is later than any validation label of the same user, nor any validation label
later than a test label. Each history keeps its most recent ``max_seq_len`` events. Users with fewer
than ``3 * K + 1`` events are dropped (with a warning).

Batches are :class:`RankingBatch`: jagged histories (item, action, timestamp), the jagged candidates
with their action labels, and a ``(B, F)`` tensor of contextual features.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gr_lightning.batch import JaggedRows
from gr_lightning.data.errors import DataError
from gr_lightning.data.sampling import split_loader
from gr_lightning.data.sources.base import DataSource
from gr_lightning.data.store import SequenceStore

RANKING_STAGES = ("train", "val", "test")


@dataclass
class RankingBatch(JaggedRows):
    """A batch of ranking examples, jagged (values + offsets, no padding).

    Attributes:
        items: History item ids. ``(sum_N,)`` int64.
        actions: Merged action token id of each history event. ``(sum_N,)`` int64.
        timestamps: History event times in seconds. ``(sum_N,)`` int64.
        offsets: History boundaries. ``(B+1,)`` int64.
        max_len: Longest history in the batch.
        candidates: Candidate item ids. ``(sum_K,)`` int64.
        candidate_timestamps: Candidate event times. ``(sum_K,)`` int64.
        candidate_offsets: Candidate boundaries. ``(B+1,)`` int64.
        max_candidates: Most candidates of any example.
        labels: Action token id actually taken on each candidate (what is predicted). ``(sum_K,)`` int64.
        contexts: Contextual features, codes ``1..V_f``. ``(B, F)`` int64, or None.
        users: Dense user index of each example. ``(B,)`` int64, or None.
        query_times: Request time of each example: its first candidate's timestamp. ``(B,)`` int64, or None.
        action_offsets: Boundaries of ``actions`` when they were built separately from the items
            (checked against ``offsets``: one action token per item token); None means ``offsets``.

    """

    items: Tensor
    actions: Tensor
    timestamps: Tensor
    offsets: Tensor
    max_len: int
    candidates: Tensor
    candidate_timestamps: Tensor
    candidate_offsets: Tensor
    max_candidates: int
    labels: Tensor | None = None
    contexts: Tensor | None = None
    users: Tensor | None = None
    query_times: Tensor | None = None
    action_offsets: Tensor | None = None

    @property
    def num_candidates(self) -> Tensor:
        """``(B,)`` candidates per example."""
        return self.candidate_offsets[1:] - self.candidate_offsets[:-1]

    def _who(self, b: int) -> str:
        return f"user {int(self.users[b])}" if self.users is not None else f"sequence {b}"

    def validate(self) -> None:
        """Check the layout; raises ValueError naming the broken invariant (and the user where there is one)."""
        total = int(self.offsets[-1])
        for name in ("items", "timestamps"):
            if getattr(self, name).shape != (total,):
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, offsets say ({total},)")
        check_action_counts(self.offsets, self.actions.numel() if self.action_offsets is None else self.action_offsets,
                            self.users)
        k = int(self.candidate_offsets[-1])
        for name in ("candidates", "candidate_timestamps"):
            if getattr(self, name).shape != (k,):
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, candidate_offsets say ({k},)")
        if self.labels is not None and self.labels.shape != (k,):
            raise ValueError(f"labels has shape {tuple(self.labels.shape)}, expected ({k},)")
        if self.candidate_offsets.shape != self.offsets.shape:
            raise ValueError("offsets and candidate_offsets must both have B+1 entries")
        if self.contexts is not None and (self.contexts.ndim != 2 or self.contexts.shape[0] != self.batch_size):
            raise ValueError(f"contexts must be (B={self.batch_size}, F), got {tuple(self.contexts.shape)}")
        if self.batch_size and int(self.lengths.max()) > self.max_len:
            raise ValueError(f"max_len={self.max_len} is below the longest history ({int(self.lengths.max())})")
        if self.batch_size and int(self.num_candidates.max()) > self.max_candidates:
            raise ValueError(f"max_candidates={self.max_candidates} is below the most candidates "
                             f"({int(self.num_candidates.max())})")


def check_action_counts(item_offsets: Tensor, actions: Tensor | int, users: Tensor | None = None) -> None:
    """Raise ValueError unless every sequence has exactly one action token per item token.

    Args:
        item_offsets: ``(B+1,)`` boundaries of the item tokens.
        actions: ``(B+1,)`` boundaries of the action tokens, or the total number of action tokens.
        users: ``(B,)`` user of each sequence, to name it in the message.

    """
    if isinstance(actions, int):
        if actions != int(item_offsets[-1]):
            raise ValueError(f"{actions} action tokens for {int(item_offsets[-1])} item tokens in the batch; "
                             "every item event needs exactly one (merged) action token")
        return
    item_counts = item_offsets[1:] - item_offsets[:-1]
    action_counts = actions[1:] - actions[:-1]
    if item_counts.shape != action_counts.shape:
        raise ValueError(f"action offsets describe {action_counts.numel()} sequences, items {item_counts.numel()}")
    bad = torch.nonzero(item_counts != action_counts).flatten()
    if bad.numel():
        b = int(bad[0])
        who = f"user {int(users[b])}" if users is not None else f"sequence {b}"
        raise ValueError(f"{who} has {int(action_counts[b])} action tokens but {int(item_counts[b])} item tokens; "
                         "merge several actions of one event into one token (e.g. a bitmask) during preprocessing")


@dataclass(frozen=True)
class RankingSplit:
    """Rows of one ranking split: history ``[starts, ends)``, candidates ``[ends, candidate_ends)`` (event rows)."""

    users: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    candidate_ends: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def lengths(self) -> np.ndarray:
        """``(M,)`` history lengths."""
        return self.ends - self.starts


def ranking_split(offsets: np.ndarray, users: np.ndarray, stage: str, num_candidates: int,
                  max_seq_len: int) -> RankingSplit:
    """The time-based split of the module docstring for ``users`` (each with >= ``3K + 1`` events)."""
    if stage not in RANKING_STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {RANKING_STAGES}")
    k = num_candidates
    last = np.asarray(offsets[users + 1], dtype=np.int64)
    first = np.asarray(offsets[users], dtype=np.int64)
    candidate_ends = last - {"test": 0, "val": k, "train": 2 * k}[stage]
    ends = candidate_ends - k
    starts = np.maximum(first, ends - max_seq_len)
    return RankingSplit(users.astype(np.int64), starts, ends, candidate_ends)


def gather_ranking_batch(store: SequenceStore, split: RankingSplit, rows: np.ndarray) -> RankingBatch:
    """Build the :class:`RankingBatch` of ``rows`` of ``split`` with one vectorised gather per array."""
    rows = np.asarray(rows, dtype=np.int64)

    def jagged(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        lengths = ends - starts  # (B,)
        offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(starts - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)  # (sum,)
        return index, offsets, int(lengths.max()) if rows.size else 0

    starts, ends, cand_ends = split.starts[rows], split.ends[rows], split.candidate_ends[rows]
    hist, offsets, max_len = jagged(starts, ends)
    cand, cand_offsets, max_k = jagged(ends, cand_ends)
    items, timestamps, actions = store.items, store.timestamps, store.actions
    users = split.users[rows]
    contexts = store.contexts

    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a).astype(np.int64, copy=False))

    return RankingBatch(
        items=t(items[hist]), actions=t(actions[hist]), timestamps=t(timestamps[hist]), offsets=t(offsets),
        max_len=max_len, candidates=t(items[cand]), candidate_timestamps=t(timestamps[cand]),
        candidate_offsets=t(cand_offsets), max_candidates=max_k, labels=t(actions[cand]),
        contexts=None if contexts is None or contexts.shape[1] == 0 else t(contexts[users]),
        users=t(users), query_times=t(timestamps[ends]),
    )


class RankingSplitDataset(Dataset):
    """One ranking split; indexing with a list of rows returns their collated :class:`RankingBatch`."""

    def __init__(self, store: SequenceStore, split: RankingSplit) -> None:
        self.store = store
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, rows: Sequence[int] | np.ndarray) -> RankingBatch:
        return gather_ranking_batch(self.store, self.split, np.asarray(rows))


class RankingDataModule(L.LightningDataModule):
    """Generative-ranking data (see the module docstring for the split), yielding :class:`RankingBatch`.

    The same prepared cache serves retrieval: a :class:`~gr_lightning.data.RetrievalDataModule` on the
    same source and ``cache_dir`` reads the same store (it ignores actions and contexts).

    Args:
        source: A source that emits action tokens (and, optionally, contextual features), e.g.
            ``MovieLens1M(actions=True, contextual=True)``, ``KuaiRand``, ``SyntheticRanking``, or an
            ``EventLog`` with ``action_column``.
        max_seq_len: Longest history kept (the most recent events).
        num_candidates: K, candidates per example (the events after the history).
        num_actions: Size of the action vocabulary (ids ``0..num_actions-1``); an action id outside it
            is an error. None: ``1 + the largest id`` in the data.
        use_contexts: Serve the source's contextual features (False drops them).
        batch_size: Examples per training batch.
        eval_batch_size: Examples per validation and test batch.
        num_workers: DataLoader worker processes.
        cache_dir: Parent folder of the preprocessed caches.
        seed: Seed of the per-epoch training shuffle.
        pin_memory: Pin batch memory.
        verify_cache: Check the CRC-32 of cached arrays when loading.

    """

    def __init__(
        self,
        source: DataSource,
        max_seq_len: int = 200,
        num_candidates: int = 10,
        num_actions: int | None = None,
        use_contexts: bool = True,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        cache_dir: str = ".cache/gr-lightning",
        seed: int = 0,
        pin_memory: bool = False,
        verify_cache: bool = True,
    ) -> None:
        super().__init__()
        if max_seq_len < 1 or num_candidates < 1:
            raise ValueError(f"max_seq_len and num_candidates must be >= 1, got {max_seq_len}, {num_candidates}")
        self.source = source
        self._max_seq_len = max_seq_len
        self.num_candidates = num_candidates
        self._num_actions = num_actions
        self.use_contexts = use_contexts
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.seed = seed
        self.pin_memory = pin_memory
        self.verify_cache = verify_cache
        self._store: SequenceStore | None = None
        self._users: np.ndarray | None = None
        self._splits: dict[str, RankingSplit] = {}

    # ------------------------------------------------------------------ data
    @property
    def store(self) -> SequenceStore:
        """The cached sequences, checked for action tokens (built or loaded on first access)."""
        if self._store is None:
            store = SequenceStore.from_source(self.source, self.cache_dir, verify=self.verify_cache)
            self._check_actions(store)
            if not self.use_contexts and store.contexts is not None:
                store = _WithoutContexts(store)
            self._store = store
        return self._store

    def _check_actions(self, store: SequenceStore) -> None:
        actions = store.actions
        if actions is None:
            raise DataError(f"{self.source!r} provides no action tokens; ranking needs one per event "
                            "(e.g. MovieLens1M(actions=True), EventLog(action_column=...), KuaiRand)")
        if self._num_actions is not None and actions.size:
            bad = np.flatnonzero(np.asarray(actions) >= self._num_actions)
            if bad.size:
                row = int(bad[0])
                user = int(np.searchsorted(np.asarray(store.offsets), row, side="right") - 1)
                raise DataError(f"{self.source.name}: unknown action value {int(actions[row])} of user "
                                f"{int(store.user_ids[user])} (event {row - int(store.offsets[user])} of that user); "
                                f"the action vocabulary is 0..{self._num_actions - 1} "
                                f"(num_actions={self._num_actions})")

    @property
    def num_items(self) -> int:
        """Number of items; dense ids ``1..num_items``."""
        return self.store.num_items

    @property
    def max_seq_len(self) -> int:
        """Longest history in any batch."""
        return self._max_seq_len

    @property
    def num_actions(self) -> int:
        """Action vocabulary size (ids ``0..num_actions-1``)."""
        if self._num_actions is not None:
            return self._num_actions
        return int(np.asarray(self.store.actions).max(initial=0)) + 1

    @property
    def ranking_spec(self) -> dict:
        """Everything the model's embedding tables and token layout need (linked into the model by the CLI)."""
        store = self.store
        return {"num_actions": self.num_actions, "context_sizes": store.context_sizes,
                "context_names": store.context_names, "num_candidates": self.num_candidates}

    @property
    def users(self) -> np.ndarray:
        """``(M,)`` dense users with at least ``3K + 1`` events."""
        if self._users is None:
            offsets = np.asarray(self.store.offsets)
            lengths = offsets[1:] - offsets[:-1]
            need = 3 * self.num_candidates + 1
            keep = np.flatnonzero(lengths >= need)
            if keep.size == 0:
                raise DataError(f"{self.source.name}: no user has the {need} events that num_candidates="
                                f"{self.num_candidates} needs (longest sequence {int(lengths.max(initial=0))}); "
                                "the candidates would be longer than the sequences")
            if keep.size < lengths.size:
                warnings.warn(f"{self.source.name}: dropped {lengths.size - keep.size} of {lengths.size} users "
                              f"with fewer than {need} events (3 x num_candidates + 1)", UserWarning, stacklevel=2)
            self._users = keep
        return self._users

    def item_raw_ids(self) -> np.ndarray:
        """``(num_items+1,)`` raw id of each dense item id (``-1`` at 0), to map predictions back."""
        return np.asarray(self.store.item_ids)

    def user_raw_ids(self) -> np.ndarray:
        """``(num_users,)`` raw id of each dense user index."""
        return np.asarray(self.store.user_ids)

    def split(self, stage: str) -> RankingSplit:
        """Rows of ``stage`` (``train``, ``val`` or ``test``)."""
        if stage not in self._splits:
            self._splits[stage] = ranking_split(np.asarray(self.store.offsets), self.users, stage,
                                                self.num_candidates, self._max_seq_len)
        return self._splits[stage]

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download and preprocess once."""
        SequenceStore.from_source(self.source, self.cache_dir, verify=self.verify_cache)

    def setup(self, stage: str | None = None) -> None:
        """Open the cache and compute the splits."""
        for name in RANKING_STAGES:
            self.split(name)

    def _loader(self, stage: str, batch_size: int, shuffle: bool, group_lengths: bool = True) -> DataLoader:
        split = self.split(stage)
        return split_loader(RankingSplitDataset(self.store, split), len(split), batch_size, shuffle=shuffle,
                            seed=self.seed, trainer=getattr(self, "trainer", None),
                            lengths=split.lengths() if group_lengths else None, num_workers=self.num_workers,
                            pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        """Training examples, shuffled each epoch."""
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation examples."""
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test examples."""
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test examples (each user's last ``K`` events as candidates, with their labels) in user order.

        Unlike evaluation, batches are not grouped by history length, so predictions come out in the order
        of the users (per rank, an ordered subsequence of them, when several processes predict).
        """
        return self._loader("test", self.eval_batch_size, shuffle=False, group_lengths=False)


class _WithoutContexts(SequenceStore):
    """A store view that hides contextual features (``use_contexts=False``)."""

    def __init__(self, store: SequenceStore) -> None:
        super().__init__(store.path, {**store.meta, "arrays": {k: v for k, v in store.meta["arrays"].items()
                                                               if not k.startswith("context")}})
