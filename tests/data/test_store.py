import os
import pickle

import numpy as np
import pytest

from gr_lightning.data import CorruptCacheError, EventLog, SequenceStore, Synthetic
from gr_lightning.data import store as store_module


def _builds(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = store_module.build_sequences

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(store_module, "build_sequences", counting)
    return calls


def test_second_load_reuses_cache_and_is_memory_mapped(tmp_path, monkeypatch):
    calls = _builds(monkeypatch)
    first = SequenceStore.from_source(Synthetic(num_users=50), tmp_path)
    second = SequenceStore.from_source(Synthetic(num_users=50), tmp_path)
    assert len(calls) == 1
    assert first.path == second.path and first.path.parent == tmp_path
    assert first.path.name == f"synthetic-{Synthetic(num_users=50).fingerprint()}"
    assert isinstance(second.items, np.memmap)
    assert np.array_equal(first.items, second.items)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temp folders left


def test_touching_the_source_rebuilds(tmp_path, write_text, monkeypatch):
    calls = _builds(monkeypatch)
    log = write_text("log.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,4\n")
    a = SequenceStore.from_source(EventLog(str(log)), tmp_path / "cache")
    stat = log.stat()
    os.utime(log, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
    b = SequenceStore.from_source(EventLog(str(log)), tmp_path / "cache")
    assert len(calls) == 2 and a.path != b.path


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, damage):
    source = Synthetic(num_users=40)
    good = SequenceStore.from_source(source, tmp_path)
    expected = np.array(good.items)
    target = good.path / "items.npy"
    if damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size - 16)
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (good.path / "meta.json").write_text("{not json")
    del good
    calls = _builds(monkeypatch)
    with pytest.warns(UserWarning, match="is corrupt.*rebuilding"):
        rebuilt = SequenceStore.from_source(source, tmp_path)
    assert len(calls) == 1
    assert np.array_equal(rebuilt.items, expected)
    SequenceStore.load(rebuilt.path)  # the new copy verifies
    assert len(list(tmp_path.iterdir())) == 1


def test_load_raises_on_meta_mismatch(tmp_path):
    store = SequenceStore.from_source(Synthetic(num_users=20), tmp_path)
    with pytest.raises(CorruptCacheError, match="fingerprint"):
        SequenceStore.load(store.path, fingerprint="0" * 16)
    np.save(store.path / "offsets.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(CorruptCacheError, match=r"offsets\.npy is <i8\[3\], meta\.json says <i8\[21\]"):
        SequenceStore.load(store.path, verify=False)


def test_pickles_without_arrays(tmp_path):
    store = SequenceStore.from_source(Synthetic(num_users=20), tmp_path)
    _ = store.items
    payload = pickle.dumps(store)
    assert len(payload) < 4096
    clone = pickle.loads(payload)
    assert np.array_equal(clone.items, store.items) and clone.num_items == store.num_items
