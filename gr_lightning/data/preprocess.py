"""Events to per-user, time-ordered sequences with dense ids (pure numpy, no per-row Python).

Input is the column dict a :class:`~gr_lightning.data.sources.DataSource` returns; output is the set
of arrays a :class:`~gr_lightning.data.store.SequenceStore` writes:

- ``offsets`` ``(U+1,)`` int64: user ``u`` owns rows ``offsets[u]:offsets[u+1]``;
- ``items`` ``(N,)`` int32 dense item ids ``1..num_items`` (0 is padding and never used);
- ``timestamps`` ``(N,)`` int64 seconds; ``ratings`` ``(N,)`` float32 when the source has them;
- ``user_ids`` ``(U,)`` int64 raw user id of each dense user; ``item_ids`` ``(num_items+1,)`` int64
  raw item id of each dense item, ``item_ids[0] == -1``;
- ``user_names`` / ``item_names`` (string ids, e.g. Amazon) when the source gives a vocabulary;
- ranking sources only: ``actions`` ``(N,)`` int64, one merged action token id per event (several
  actions on one event are merged into one id by the source, e.g. a bitmask); ``contexts`` ``(U, F)``
  int64 contextual (user-side) features, each densified to ``1..V_f`` (0 is never used), with
  ``context_names`` ``(F,)`` and ``context_sizes`` ``(F,)`` (``V_f + 1``, the embedding rows).

A source passes actions as the ``action`` column (non-negative ids) and contextual features as
``context_user_id`` ``(M,)`` raw user ids, ``context_values`` ``(M, F)`` non-negative integer codes and
``context_names`` ``(F,)``; every user with events must have a context row.
"""

from __future__ import annotations

import warnings

import numpy as np

from gr_lightning.data.errors import DataError

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
_LUT_LIMIT = 1 << 26  # ids below this use a lookup table instead of a sort


def _densify(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to ``0..V-1`` in increasing raw-id order; return ``(dense (N,), vocabulary (V,))``."""
    top = int(ids.max())
    if top < _LUT_LIMIT:
        present = np.zeros(top + 1, dtype=bool)
        present[ids] = True
        vocab = np.flatnonzero(present).astype(np.int64)
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[vocab] = np.arange(vocab.size, dtype=np.int64)
        return lut[ids], vocab
    vocab, dense = np.unique(ids, return_inverse=True)
    return dense.astype(np.int64).reshape(-1), vocab.astype(np.int64)


def _time_order(users: np.ndarray, timestamps: np.ndarray, num_users: int) -> np.ndarray:
    """Stable permutation sorting rows by (user, timestamp); ties keep file order."""
    t_min = int(timestamps.min())
    span = int(timestamps.max()) - t_min + 1
    if num_users * span < (1 << 62):
        key = users * span + (timestamps - t_min)  # (N,) one int64 key, one stable sort
        return np.argsort(key, kind="stable")
    return np.lexsort((timestamps, users))


def _check_events(events: dict[str, np.ndarray]) -> int:
    missing = [c for c in REQUIRED_COLUMNS if c not in events]
    if missing:
        raise DataError(f"events lack column(s) {missing}; got {sorted(events)}")
    n = len(events["user_id"])
    for name in (*REQUIRED_COLUMNS, "rating", "action"):
        if name in events and len(events[name]) != n:
            raise DataError(f"column {name!r} has {len(events[name])} rows, user_id has {n}")
    if n == 0:
        raise DataError("the source has no events")
    for name in ("user_id", "item_id"):
        values = events[name]
        if values.min() < 0:
            row = int(np.flatnonzero(values < 0)[0])
            raise DataError(f"negative {name} {int(values[row])} at event row {row}")
    if "action" in events and len(events["action"]) and np.asarray(events["action"]).min() < 0:
        row = int(np.flatnonzero(np.asarray(events["action"]) < 0)[0])
        raise DataError(f"negative action id {int(events['action'][row])} at event row {row}")
    return n


def _contexts(events: dict[str, np.ndarray], user_vocab: np.ndarray, source: str) -> dict[str, np.ndarray]:
    """Per dense user, the contextual features densified per column to ``1..V_f``."""
    ids = np.asarray(events["context_user_id"], dtype=np.int64)  # (M,)
    values = np.asarray(events["context_values"], dtype=np.int64)  # (M, F)
    names = np.asarray(events["context_names"]).astype(str)  # (F,)
    if values.ndim != 2 or values.shape[0] != ids.shape[0] or values.shape[1] != names.shape[0]:
        raise DataError(f"{source}: context_values {values.shape} does not match {ids.shape[0]} users "
                        f"x {names.shape[0]} features")
    if values.size and values.min() < 0:
        row, col = (int(v[0]) for v in np.nonzero(values < 0))
        raise DataError(f"{source}: negative code in contextual feature {names[col]!r} of user {int(ids[row])}")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.searchsorted(sorted_ids, user_vocab)  # (U,)
    found = (pos < sorted_ids.size) & (sorted_ids[np.minimum(pos, sorted_ids.size - 1)] == user_vocab)
    if not found.all():
        missing = user_vocab[~found]
        raise DataError(f"{source}: {missing.size} user(s) with events have no contextual features, "
                        f"e.g. user {int(missing[0])}")
    rows = values[order[pos]]  # (U, F) raw codes of each dense user
    dense = np.empty_like(rows)
    sizes = np.empty(names.shape[0], dtype=np.int64)
    for f in range(names.shape[0]):  # a loop over feature columns (a handful), not rows
        vocab, inverse = np.unique(rows[:, f], return_inverse=True)
        dense[:, f] = inverse.reshape(-1) + 1
        sizes[f] = vocab.size + 1
    return {"contexts": dense, "context_names": names, "context_sizes": sizes}


def build_sequences(events: dict[str, np.ndarray], *, source: str = "source") -> dict[str, np.ndarray]:
    """Group events by user, sort each user's events by time (stable) and densify ids.

    If any user's events were not in time order in the input, they are sorted and a single warning
    says how many users were affected.

    Args:
        events: ``user_id``, ``item_id``, ``timestamp`` int64 ``(N,)`` and optionally ``rating``,
            ``user_vocab`` / ``item_vocab`` (strings indexed by the raw ids).
        source: Name used in messages.

    Returns:
        The arrays listed in the module docstring.

    """
    _check_events(events)
    raw_users = np.asarray(events["user_id"], dtype=np.int64)
    raw_items = np.asarray(events["item_id"], dtype=np.int64)
    timestamps = np.asarray(events["timestamp"], dtype=np.int64)
    users, user_vocab = _densify(raw_users)
    items, item_vocab = _densify(raw_items)
    order = _time_order(users, timestamps, user_vocab.size)  # (N,)
    sorted_users = users[order]
    counts = np.bincount(sorted_users, minlength=user_vocab.size)
    offsets = np.zeros(user_vocab.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    # Rows of one user that were not already in time order show up as a decreasing source row.
    same_user = sorted_users[1:] == sorted_users[:-1]
    inversions = same_user & (order[1:] < order[:-1])
    if inversions.any():
        bad_users = np.unique(sorted_users[1:][inversions]).size
        warnings.warn(
            f"{source}: events of {bad_users} of {user_vocab.size} users were not in time order; "
            "sorted them by timestamp (stable, ties keep file order)",
            UserWarning,
            stacklevel=2,
        )
    out = {
        "offsets": offsets,
        "items": (items[order] + 1).astype(np.int32),
        "timestamps": timestamps[order],
        "user_ids": user_vocab,
        "item_ids": np.concatenate([np.array([-1], dtype=np.int64), item_vocab]),
    }
    if "rating" in events:
        out["ratings"] = np.asarray(events["rating"], dtype=np.float32)[order]
    if "action" in events:
        out["actions"] = np.asarray(events["action"], dtype=np.int64)[order]
    if "context_values" in events:
        out.update(_contexts(events, user_vocab, source))
    if "user_vocab" in events:
        out["user_names"] = np.asarray(events["user_vocab"])[user_vocab]
    if "item_vocab" in events:
        names = np.asarray(events["item_vocab"])[item_vocab]
        out["item_names"] = np.concatenate([np.array([""], dtype=names.dtype), names])
    return out
