import os
from pathlib import Path

from gr_lightning.data import EventLog, MovieLens1M, MovieLens100K, data_dir, default_root


def test_gr_data_dir_env_sets_root(shared_data):
    assert data_dir() == shared_data
    assert MovieLens1M().root_dir == shared_data / "ml-1m"
    # Explicitly set: used even for a dataset that is not there yet (it is downloaded there).
    assert default_root("ml-20m") == shared_data / "ml-20m"


def test_default_data_dir_is_relative_to_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("GR_DATA_DIR", raising=False)
    work = tmp_path / "main"
    (tmp_path / "shared" / "data" / "ml-100k").mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    assert default_root("ml-100k").resolve() == (tmp_path / "shared" / "data" / "ml-100k").resolve()
    # A dataset missing from the implicit default goes to the user cache (and is downloaded there).
    assert default_root("ml-1m") == Path("~/.cache/gr-lightning/datasets/ml-1m").expanduser()


def test_no_data_dir_uses_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("GR_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_dir() is None
    assert MovieLens100K().root_dir == Path("~/.cache/gr-lightning/datasets/ml-100k").expanduser()


def test_fingerprint_tracks_settings_size_and_mtime(write_text):
    path = write_text("log.csv", "user_id,item_id,timestamp\n1,2,3\n")
    base = EventLog(str(path)).fingerprint()
    assert EventLog(str(path)).fingerprint() == base
    assert EventLog(str(path), rating_column="r").fingerprint() != base
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = EventLog(str(path)).fingerprint()
    assert touched != base
    path.write_text("user_id,item_id,timestamp\n1,2,3\n1,2,4\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert EventLog(str(path)).fingerprint() != touched  # same mtime, different size


def test_repr_lists_settings(shared_data):
    assert "ratings_users_1-2999.dat" in repr(MovieLens1M(ratings_file="ratings_users_1-2999.dat"))
