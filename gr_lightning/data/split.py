"""Leave-one-out splits as index ranges into a store's event arrays (no copies of the events).

For a user sequence ``s`` of length ``L >= min_events``: train = ``s[:-2]``; validation history
``s[:-2]`` with target ``s[-2]``; test history ``s[:-1]`` with target ``s[-1]``; predict history
``s``. Each history keeps only its most recent ``max_seq_len`` events.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from gr_lightning.data.errors import DataError

STAGES = ("train", "val", "test", "predict")


@dataclass(frozen=True)
class SplitIndex:
    """Rows of one split: the history of row ``r`` is ``items[starts[r]:ends[r]]`` of the store.

    Attributes:
        users: ``(M,)`` dense user index of each row.
        starts: ``(M,)`` first event row of each history.
        ends: ``(M,)`` one past the last event row of each history.
        targets: ``(M,)`` event row of each target, or None (train, predict).

    """

    users: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def lengths(self) -> np.ndarray:
        """``(M,)`` history lengths."""
        return self.ends - self.starts


def eligible_users(offsets: np.ndarray, min_events: int, *, source: str = "data") -> np.ndarray:
    """Dense indices of users with at least ``min_events`` events; warns once about the rest.

    Raises:
        DataError: No user is left.

    """
    if min_events < 3:
        raise ValueError(f"min_events must be >= 3 for a leave-one-out split, got {min_events}")
    offsets = np.asarray(offsets)
    lengths = offsets[1:] - offsets[:-1]
    keep = np.flatnonzero(lengths >= min_events)
    dropped = lengths.size - keep.size
    if keep.size == 0:
        raise DataError(
            f"{source}: no user has at least min_events={min_events} events "
            f"({lengths.size} users, longest sequence {int(lengths.max(initial=0))})"
        )
    if dropped:
        warnings.warn(
            f"{source}: dropped {dropped} of {lengths.size} users with fewer than {min_events} events",
            UserWarning,
            stacklevel=2,
        )
    return keep


def leave_one_out(offsets: np.ndarray, users: np.ndarray, stage: str, max_seq_len: int) -> SplitIndex:
    """Return the rows of ``stage`` for ``users`` (from :func:`eligible_users`).

    Args:
        offsets: ``(U+1,)`` the store's sequence boundaries.
        users: ``(M,)`` dense user indices to include.
        stage: One of ``train``, ``val``, ``test``, ``predict``.
        max_seq_len: Longest history kept (the most recent events).

    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    first = np.asarray(offsets[users], dtype=np.int64)
    last = np.asarray(offsets[users + 1], dtype=np.int64)  # one past each user's newest event
    held_out = {"train": 2, "val": 2, "test": 1, "predict": 0}[stage]
    ends = last - held_out
    starts = np.maximum(first, ends - max_seq_len)
    targets = ends.copy() if stage in ("val", "test") else None
    return SplitIndex(users=users.astype(np.int64), starts=starts, ends=ends, targets=targets)
