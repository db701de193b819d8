"""EventLog parsing, and one test per kind of bad input (each error names file, column, line or user)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gr_lightning.data import DataError, EventLog, RetrievalDataModule


def test_csv_custom_columns_and_rating(write_text):
    path = write_text("log.csv.gz", "uid;iid;ts;r\n7;3;100;1.5\n7;4;200;2\n")
    source = EventLog(str(path), user_column="uid", item_column="iid", timestamp_column="ts",
                      rating_column="r", delimiter=";")
    events = source.load_events()
    assert events["user_id"].tolist() == [7, 7]
    assert events["item_id"].tolist() == [3, 4]
    assert events["timestamp"].tolist() == [100, 200]
    assert events["rating"].tolist() == [1.5, 2.0]
    assert "rating" not in EventLog(str(path), user_column="uid", item_column="iid", timestamp_column="ts",
                                    delimiter=";").load_events()


def test_parquet_with_timestamp_type(tmp_path):
    path = tmp_path / "log.parquet"
    table = pa.table({
        "user_id": pa.array([1, 1], pa.int32()),
        "item_id": pa.array([5, 6], pa.int64()),
        "timestamp": pa.array([1_000_000_000_000, 2_000_000_000_000], pa.timestamp("ms")),
    })
    pq.write_table(table, path)
    events = EventLog(str(path)).load_events()
    assert events["timestamp"].tolist() == [1_000_000_000, 2_000_000_000]
    assert events["user_id"].dtype == np.int64


def test_unknown_column_lists_available(write_text):
    path = write_text("log.csv", "user,item_id,timestamp\n1,2,3\n")
    with pytest.raises(DataError, match=r"log\.csv.*'user_id' not found.*'user', 'item_id', 'timestamp'"):
        EventLog(str(path)).load_events()


def test_unknown_parquet_column_lists_available(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": [1], "item_id": [2], "timestamp": [3]}), path)
    with pytest.raises(DataError, match=r"'user_id' not found.*'u', 'item_id', 'timestamp'"):
        EventLog(str(path)).load_events()


def test_non_integer_id_names_file_column_line_value(write_text):
    path = write_text("log.csv", "user_id,item_id,timestamp\n1,2,3\n1,abc,4\n")
    expected = r"log\.csv: non-integer value in column 'item_id' at line 3 \(value 'abc'\)"
    with pytest.raises(DataError, match=expected):
        EventLog(str(path)).load_events()


def test_fractional_id_in_parquet(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1.0, 2.5], "item_id": [2, 3], "timestamp": [3, 4]}), path)
    with pytest.raises(DataError, match=r"non-integer value in column 'user_id' at line 2 \(value 2\.5\)"):
        EventLog(str(path)).load_events()


def test_negative_id(write_text):
    path = write_text("log.csv", "user_id,item_id,timestamp\n1,2,3\n4,-5,6\n")
    with pytest.raises(DataError, match=r"negative id in column 'item_id' at line 3 \(value -5\)"):
        EventLog(str(path)).load_events()


def test_empty_file(write_text):
    path = write_text("log.csv", "")
    with pytest.raises(DataError, match=r"log\.csv: the file is empty"):
        EventLog(str(path)).load_events()


def test_header_only_file(write_text):
    path = write_text("log.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match=r"log\.csv: the file has a header but no events"):
        EventLog(str(path)).load_events()


def test_nan_timestamp(write_text):
    path = write_text("log.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,NaN\n")
    with pytest.raises(DataError, match=r"missing or NaN value in column 'timestamp' at line 3"):
        EventLog(str(path)).load_events()


def test_nan_timestamp_in_parquet(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1, 1], "item_id": [2, 3], "timestamp": [3.0, float("nan")]}), path)
    with pytest.raises(DataError, match=r"missing or NaN value in column 'timestamp' at line 2"):
        EventLog(str(path)).load_events()


def test_missing_file():
    with pytest.raises(DataError, match=r"nope\.csv not found"):
        EventLog("/nonexistent/nope.csv").load_events()


def test_listed_user_without_events(write_text):
    log = write_text("log.csv", "user_id,item_id,timestamp\n1,2,3\n")
    users = write_text("users.csv", "user_id\n1\n9\n")
    with pytest.raises(DataError, match=r"users\.csv: 1 listed user\(s\) have no events.*user 9"):
        EventLog(str(log), users_file=str(users)).load_events()


def test_event_of_unlisted_user(write_text):
    log = write_text("log.csv", "user_id,item_id,timestamp\n1,2,3\n8,2,4\n")
    users = write_text("users.csv", "user_id\n1\n")
    with pytest.raises(DataError, match=r"log\.csv: user 8 at line 3 is not listed in .*users\.csv"):
        EventLog(str(log), users_file=str(users)).load_events()


def test_zero_users_left_after_filtering(write_text, tmp_path):
    log = write_text("log.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,4\n2,2,5\n")
    dm = RetrievalDataModule(EventLog(str(log)), cache_dir=str(tmp_path / "cache"), min_events=3)
    with pytest.raises(DataError, match="no user has at least min_events=3 events"):
        dm.setup("fit")


def test_bad_input_leaves_existing_cache_intact(write_text, tmp_path):
    log = write_text("log.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,4\n1,4,5\n")
    cache = tmp_path / "cache"
    dm = RetrievalDataModule(EventLog(str(log)), cache_dir=str(cache))
    assert dm.num_items == 3
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    log.write_text("user_id,item_id,timestamp\n1,2,3\n1,x,4\n")
    with pytest.raises(DataError, match="non-integer"):
        _ = RetrievalDataModule(EventLog(str(log)), cache_dir=str(cache)).num_items
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before
