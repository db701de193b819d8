import numpy as np
import pytest

from gr_lightning.data import DataError, MovieLens1M, MovieLens20M, MovieLens100K, SequenceStore


def _store(source, tmp_path):
    with pytest.warns(UserWarning, match="not in time order"):
        return SequenceStore.from_source(source, tmp_path / "cache")


def test_ml100k_counts_and_time_order(shared_data, tmp_path):
    source = MovieLens100K()
    assert source.root_dir == shared_data / "ml-100k"
    events = source.load_events()
    assert len(events["user_id"]) == 100_000
    assert set(np.unique(events["rating"])) == {1, 2, 3, 4, 5}
    store = _store(source, tmp_path)
    assert (store.num_users, store.num_items, store.num_events) == (943, 1682, 100_000)
    offsets, ts = np.asarray(store.offsets), np.asarray(store.timestamps)
    same_user = np.repeat(np.arange(store.num_users), np.diff(offsets))
    step = np.diff(ts)
    assert (step[same_user[1:] == same_user[:-1]] >= 0).all()
    assert store.items.min() == 1 and store.items.max() == 1682
    assert np.array_equal(store.item_ids[1:], np.arange(1, 1683))  # raw ids of ML-100K are 1..1682


def test_ml1m_partial_counts(shared_data, tmp_path):
    store = _store(MovieLens1M(ratings_file="ratings_users_1-2999.dat"), tmp_path)
    assert (store.num_users, store.num_items, store.num_events) == (2999, 3615, 487_650)
    assert np.array_equal(store.user_ids, np.arange(1, 3000))
    lengths = store.lengths()
    assert lengths.min() == 20 and lengths.max() == 1850
    assert store.timestamps.min() == 970_620_734 and store.timestamps.max() == 1_046_388_675
    # Ratings follow the published distribution.
    counts = np.bincount(np.asarray(store.ratings).astype(int))
    assert counts[1:].tolist() == [27_472, 53_838, 127_216, 170_579, 108_545]


def test_ml1m_gz_name_also_accepted(shared_data):
    a = MovieLens1M(ratings_file="ratings_users_1-2999.dat")
    b = MovieLens1M(ratings_file="ratings_users_1-2999.dat.gz")
    assert a.files() == b.files()


def test_ml20m_csv_with_header(tmp_path, write_text):
    text = "userId,movieId,rating,timestamp\n1,2,3.5,100\n1,5,4.0,90\n2,2,0.5,50\n"
    write_text("ml-20m/ratings.csv.gz", text)
    events = MovieLens20M(root=str(tmp_path / "ml-20m")).load_events()
    assert events["user_id"].tolist() == [1, 1, 2]
    assert events["item_id"].tolist() == [2, 5, 2]
    assert events["timestamp"].tolist() == [100, 90, 50]
    assert events["rating"].tolist() == [3.5, 4.0, 0.5]
    assert events["user_id"].dtype == np.int64


def test_ml1m_double_colon_format(tmp_path, write_text):
    write_text("ml-1m/ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n10::1::4::5\n")
    events = MovieLens1M(root=str(tmp_path / "ml-1m")).load_events()
    assert events["user_id"].tolist() == [1, 1, 10]
    assert events["item_id"].tolist() == [1193, 661, 1]
    assert events["timestamp"].tolist() == [978300760, 978302109, 5]


def test_custom_ratings_file_missing_names_folder_and_contents(tmp_path, write_text):
    write_text("ml-1m/other.dat", "1::2::3::4\n")
    with pytest.raises(DataError, match=r"ratings_users\.dat.*not found.*other\.dat"):
        MovieLens1M(root=str(tmp_path / "ml-1m"), ratings_file="ratings_users.dat").files()


def test_official_urls_and_checksums():
    assert MovieLens100K.url == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert MovieLens100K.md5 == "0e33842e24a9c977be4e0107933c0723"
    assert MovieLens1M.url == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    assert MovieLens1M.md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert MovieLens20M.url == "https://files.grouplens.org/datasets/movielens/ml-20m.zip"
    assert MovieLens20M.md5 == "cd245b17a1ae2cc31bb14903e1204af3"
    # A custom ratings file is not in the official zip, so it is never "downloaded".
    assert MovieLens1M(ratings_file="ratings_users_1-2999.dat").download_url() is None
