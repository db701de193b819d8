import json

import numpy as np
import pytest

from gr_lightning.data import BOOKS_URL, AmazonReviews, DataError, SequenceStore, k_core


def test_musical_instruments_5core_counts(shared_data, tmp_path):
    source = AmazonReviews(
        root=str(shared_data / "amazon-2014-musical-instruments-5core"), file="Musical_Instruments.json.gz"
    )
    with pytest.warns(UserWarning, match="not in time order"):
        store = SequenceStore.from_source(source, tmp_path)
    assert (store.num_users, store.num_items, store.num_events) == (1429, 900, 10_261)
    assert store.lengths().min() >= 5
    assert np.bincount(np.asarray(store.items))[1:].min() >= 5
    assert store.item_names is not None and store.item_names[0] == ""
    assert all(len(name) == 10 for name in store.item_names[1:])  # ASINs
    counts = np.bincount(np.asarray(store.ratings).astype(int))
    assert counts[1:].tolist() == [217, 250, 772, 2084, 6938]
    assert store.timestamps.min() == 1_095_465_600 and store.timestamps.max() == 1_405_987_200


def test_ratings_only_csv_string_ids_and_iterative_kcore(tmp_path, write_text):
    # u1..u3 each rate i1, i2; u4 rates i3 only once -> i3 and u4 go first, then nothing else changes
    rows = ["u1,i1,5.0,10", "u1,i2,4.0,20", "u2,i1,3.0,11", "u2,i2,2.0,21", "u3,i1,1.0,12",
            "u3,i2,5.0,22", "u4,i3,5.0,30", "u4,i1,5.0,31"]
    write_text("amz/ratings_Books.csv.gz", "\n".join(rows) + "\n")
    events = AmazonReviews(root=str(tmp_path / "amz"), k_core=2, url=None).load_events()
    assert sorted(events["user_vocab"][np.unique(events["user_id"])]) == ["u1", "u2", "u3"]
    assert sorted(events["item_vocab"][np.unique(events["item_id"])]) == ["i1", "i2"]
    assert len(events["user_id"]) == 6
    assert AmazonReviews(root=str(tmp_path / "amz"), k_core=4, url=None).settings()["k_core"] == 4
    with pytest.raises(DataError, match="4-core"):
        AmazonReviews(root=str(tmp_path / "amz"), k_core=4, url=None).load_events()


def test_kcore_is_iterative():
    # user 0: items 0,1 ; user 1: items 0,1 ; user 2: items 1,2 ; item 2 has one event.
    users = np.array([0, 0, 1, 1, 2, 2])
    items = np.array([0, 1, 0, 1, 1, 2])
    keep = k_core(users, items, 2)
    # Dropping item 2 leaves user 2 with one event, so user 2 goes too (second round).
    assert keep.tolist() == [True, True, True, True, False, False]


def test_json_lines_missing_field_names_file(tmp_path, write_text):
    lines = [json.dumps({"reviewerID": "a", "asin": "b", "overall": 5.0, "unixReviewTime": 1}),
             json.dumps({"reviewerID": "a", "overall": 5.0, "unixReviewTime": 2})]
    path = write_text("amz/reviews.json", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{path}.*'asin'.*line 2"):
        AmazonReviews(root=str(tmp_path / "amz"), file="reviews.json", k_core=1, url=None).load_events()


def test_books_url_has_no_checksum():
    assert BOOKS_URL == "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Books.csv"
    assert AmazonReviews.md5 is None
