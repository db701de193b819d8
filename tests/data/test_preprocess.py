import warnings

import numpy as np
import pytest

from gr_lightning.data import DataError, build_sequences


def _events(users, items, ts, **extra):
    out = {"user_id": np.array(users), "item_id": np.array(items), "timestamp": np.array(ts)}
    out.update({k: np.array(v) for k, v in extra.items()})
    return out


def test_groups_sorts_and_densifies():
    events = _events([50, 7, 50, 7, 50], [900, 30, 30, 900, 5], [3, 9, 1, 2, 1], rating=[1, 2, 3, 4, 5])
    with pytest.warns(UserWarning, match="events of 2 of 2 users were not in time order") as record:
        out = build_sequences(events)
    assert len(record) == 1  # warned once, not per user
    assert out["user_ids"].tolist() == [7, 50]
    assert out["item_ids"].tolist() == [-1, 5, 30, 900]
    assert out["offsets"].tolist() == [0, 2, 5]
    # user 7: (t=2, 900), (t=9, 30); user 50: t=1 twice (file order kept: 30 then 5), then (t=3, 900)
    assert out["items"].tolist() == [3, 2, 2, 1, 3]
    assert out["timestamps"].tolist() == [2, 9, 1, 1, 3]
    assert out["ratings"].tolist() == [4, 2, 3, 5, 1]
    assert out["items"].dtype == np.int32 and out["timestamps"].dtype == np.int64
    assert np.array_equal(out["item_ids"][out["items"]], [900, 30, 30, 5, 900])


def test_sorted_input_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = build_sequences(_events([1, 1, 2], [1, 2, 3], [5, 5, 1]))
    assert out["items"].tolist() == [1, 2, 3]


def test_huge_ids_use_sort_path():
    big = np.array([2**40, 3, 2**40, 3])
    out = build_sequences(_events(big, big, [1, 2, 3, 4]))
    assert out["user_ids"].tolist() == [3, 2**40]
    assert out["item_ids"].tolist() == [-1, 3, 2**40]
    assert out["items"].tolist() == [1, 1, 2, 2]


def test_string_vocabularies_follow_dense_ids():
    events = _events([1, 0], [2, 0], [1, 2])
    events["user_vocab"] = np.array(["alice", "bob"])
    events["item_vocab"] = np.array(["x", "y", "z"])
    out = build_sequences(events)
    assert out["user_names"].tolist() == ["alice", "bob"]
    assert out["item_names"].tolist() == ["", "x", "z"]


def test_no_events_and_negative_ids():
    with pytest.raises(DataError, match="no events"):
        build_sequences(_events([], [], []))
    with pytest.raises(DataError, match="negative item_id -4 at event row 1"):
        build_sequences(_events([1, 1], [2, -4], [1, 2]))
    with pytest.raises(DataError, match="lack column"):
        build_sequences({"user_id": np.array([1])})
