import pickle
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import torch

from gr_lightning.batch import JaggedBatch
from gr_lightning.data import EventLog, MovieLens1M, RetrievalDataModule, Synthetic


@pytest.fixture
def small_log(write_text):
    # user 1: 5 events, user 2: 3 events, user 3: 2 events (dropped by min_events=3)
    rows = [(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 13, 4), (1, 14, 5),
            (2, 20, 1), (2, 21, 2), (2, 22, 3), (3, 10, 1), (3, 11, 2)]
    text = "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)
    return write_text("log.csv", text)


def _raw(dm, batch: JaggedBatch, b: int) -> list[int]:
    lo, hi = int(batch.offsets[b]), int(batch.offsets[b + 1])
    return dm.item_raw_ids()[batch.items[lo:hi].numpy()].tolist()


def test_leave_one_out_on_a_tiny_log(small_log, tmp_path):
    dm = RetrievalDataModule(EventLog(str(small_log)), max_seq_len=2, cache_dir=str(tmp_path / "c"))
    assert dm.num_items == 8 and dm.max_seq_len == 2
    with pytest.warns(UserWarning, match="dropped 1 of 3 users with fewer than 3 events"):
        dm.setup("fit")
    raw = dm.item_raw_ids()
    batches = {name: next(iter(loader())) for name, loader in [
        ("val", dm.val_dataloader), ("test", dm.test_dataloader), ("predict", dm.predict_dataloader)]}
    for batch in batches.values():
        batch.validate()
        assert dm.user_raw_ids()[batch.users.numpy()].tolist() == [1, 2]
    # user 1 = [10..14], max_seq_len 2: val history [11, 12] -> 13; test [12, 13] -> 14; predict [13, 14]
    assert _raw(dm, batches["val"], 0) == [11, 12] and raw[int(batches["val"].targets[0])] == 13
    assert _raw(dm, batches["test"], 0) == [12, 13] and raw[int(batches["test"].targets[0])] == 14
    assert _raw(dm, batches["predict"], 0) == [13, 14] and batches["predict"].targets is None
    # the request time of an evaluation is its target's timestamp (user 1's item 13 at t=4, 14 at t=5)
    assert batches["val"].query_times.tolist() == [4, 2] and batches["test"].query_times.tolist() == [5, 3]
    assert batches["predict"].query_times is None
    # user 2 = [20, 21, 22]: val [20] -> 21; test [20, 21] -> 22
    assert _raw(dm, batches["val"], 1) == [20] and raw[int(batches["val"].targets[1])] == 21
    assert _raw(dm, batches["test"], 1) == [20, 21] and raw[int(batches["test"].targets[1])] == 22
    train = next(iter(dm.train_dataloader()))
    train.validate()
    assert train.targets is None
    assert sorted(map(tuple, (_raw(dm, train, b) for b in range(2)))) == [(11, 12), (20,)]
    counts = dm.item_counts()
    assert counts.shape == (9,) and counts[0] == 0 and counts.sum() == 3
    assert counts[np.searchsorted(raw[1:], [11, 12, 20]) + 1].tolist() == [1, 1, 1]


def test_splits_on_ml1m_half(shared_data, tmp_path):
    with pytest.warns(UserWarning, match="not in time order"):
        dm = RetrievalDataModule(MovieLens1M(ratings_file="ratings_users_1-2999.dat"), max_seq_len=200,
                                 cache_dir=str(tmp_path))
        assert dm.num_items == 3615
    dm.setup("fit")
    store = dm.store
    offsets, items, ts = np.asarray(store.offsets), np.asarray(store.items), np.asarray(store.timestamps)
    for stage, held_out in [("val", 2), ("test", 1)]:
        count = 0
        for batch in dm.val_dataloader() if stage == "val" else dm.test_dataloader():
            batch.validate()
            assert batch.max_len == int(batch.lengths.max()) <= 200
            for b, user in enumerate(batch.users.tolist()):
                end = offsets[user + 1] - held_out
                start = max(offsets[user], end - 200)
                assert batch.targets[b] == items[end]
                lo, hi = int(batch.offsets[b]), int(batch.offsets[b + 1])
                assert np.array_equal(batch.items[lo:hi].numpy(), items[start:end])
                assert np.array_equal(batch.timestamps[lo:hi].numpy(), ts[start:end])
                assert (np.diff(ts[start : end + 1]) >= 0).all()  # history ends right before the target
            count += batch.batch_size
        assert count == 2999
    assert dm.item_counts().sum() == sum(min(n - 2, 200) for n in np.diff(offsets))


def test_training_shuffle_is_seeded_per_epoch(tmp_path):
    dm = RetrievalDataModule(Synthetic(num_users=300), batch_size=64, cache_dir=str(tmp_path))
    loader = dm.train_dataloader()
    epoch0 = torch.cat([b.users for b in loader])
    again = torch.cat([b.users for b in dm.train_dataloader()])
    loader.sampler.set_epoch(1)
    epoch1 = torch.cat([b.users for b in loader])
    assert torch.equal(epoch0, again)
    assert not torch.equal(epoch0, epoch1)
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(300))
    assert len(loader) == 5 and [b.batch_size for b in dm.train_dataloader()] == [64] * 4 + [44]


def test_ranks_get_disjoint_equal_shards(tmp_path):
    from gr_lightning.data.sampling import BatchSampler

    shards = [list(BatchSampler(10, 2, shuffle=True, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]
    rows = [row for shard in shards for batch in shard for row in batch]
    assert len(rows) == 12 and set(rows) == set(range(10))


def test_workers_and_pickling(tmp_path):
    dm = RetrievalDataModule(
        Synthetic(num_users=200), eval_batch_size=50, num_workers=2, cache_dir=str(tmp_path)
    )
    dm.setup("validate")
    clone = pickle.loads(pickle.dumps(dm))
    assert clone.num_items == dm.num_items
    main = [b.items for b in RetrievalDataModule(Synthetic(num_users=200), eval_batch_size=50,
                                                  cache_dir=str(tmp_path)).val_dataloader()]
    workers = [b.items for b in dm.val_dataloader()]
    assert len(workers) == 4 and all(torch.equal(a, b) for a, b in zip(main, workers, strict=True))
    assert all(b.dtype == torch.int64 for b in workers)


def test_collate_is_fast(tmp_path):
    dm = RetrievalDataModule(Synthetic(num_users=512, min_len=202, max_len=260), cache_dir=str(tmp_path))
    dataset = dm.train_dataloader().dataset
    rows = np.arange(128)
    batch = dataset[rows]
    assert batch.items.numel() == 128 * 200 and batch.max_len == 200
    start = time.perf_counter()
    for _ in range(50):
        dataset[rows]
    per_batch = (time.perf_counter() - start) / 50
    assert per_batch < 0.01, f"collating 128 x 200 events took {per_batch * 1e3:.2f} ms"


def test_preprocessing_scales(tmp_path):
    """1M events from a shuffled CSV: correct, and far from the 20M-in-60s budget (1/20 of it: 3 s)."""
    events = Synthetic(num_users=20_000, num_items=5_000, min_len=30, max_len=70, seed=5).load_events()
    order = np.random.default_rng(0).permutation(len(events["user_id"]))
    path = tmp_path / "big.csv"
    pcsv.write_csv(pa.table({k: events[k][order] for k in ("user_id", "item_id", "timestamp")}), path)
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="not in time order"):
        dm = RetrievalDataModule(EventLog(str(path)), cache_dir=str(tmp_path / "cache"))
        assert dm.num_users == 20_000
    elapsed = time.perf_counter() - start
    store = dm.store
    assert store.num_events == len(events["user_id"])
    assert np.array_equal(store.item_ids[store.items], events["item_id"])  # generator output is time-ordered
    assert elapsed < 6.0, f"{store.num_events} events took {elapsed:.1f} s"


def test_loaders_follow_the_trainers_rank(tmp_path):
    from types import SimpleNamespace

    dm = RetrievalDataModule(Synthetic(num_users=100), eval_batch_size=1000, cache_dir=str(tmp_path))
    seen = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        seen.append(torch.cat([b.users for b in dm.test_dataloader()]))
    assert [s.numel() for s in seen] == [50, 50]
    assert sorted(torch.cat(seen).tolist()) == list(range(100))
