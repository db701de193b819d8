import numpy as np
import pytest

from gr_lightning.data import RetrievalDataModule, Synthetic


def test_deterministic_by_seed():
    a, b = Synthetic(seed=3).load_events(), Synthetic(seed=3).load_events()
    c = Synthetic(seed=4).load_events()
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert len(a["item_id"]) != len(c["item_id"]) or not np.array_equal(a["item_id"], c["item_id"])
    fingerprint = Synthetic(seed=3).fingerprint()
    assert fingerprint == Synthetic(seed=3).fingerprint() != Synthetic(seed=4).fingerprint()


def test_default_shape():
    events = Synthetic().load_events()
    lengths = np.bincount(events["user_id"])[1:]
    assert lengths.size == 2000 and lengths.min() >= 20 and lengths.max() <= 60
    assert events["item_id"].min() >= 1 and events["item_id"].max() <= 1000
    ts, users = events["timestamp"], events["user_id"]
    assert (np.diff(ts)[users[1:] == users[:-1]] > 0).all()


def test_sequential_structure_beats_popularity(tmp_path):
    """A first-order (bigram) model trained on the train split must beat most-popular >= 3x on test."""
    dm = RetrievalDataModule(Synthetic(), cache_dir=str(tmp_path))
    items, n = np.asarray(dm.store.items), dm.num_items
    train, test = dm.split("train"), dm.split("test")
    lengths = train.lengths()
    index = np.repeat(train.starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())
    first = np.zeros(index.size, dtype=bool)
    first[np.r_[0, np.cumsum(lengths)[:-1]]] = True
    prev, nxt = items[index[:-1]][~first[1:]], items[index[1:]][~first[1:]]
    bigram = np.zeros((n + 1, n + 1))
    np.add.at(bigram, (prev, nxt), 1.0)
    popularity = dm.item_counts().astype(float)
    targets = items[test.targets]
    scores = bigram[items[test.ends - 1]] + 1e-6 * popularity
    scores[:, 0] = -np.inf
    hr_seq = (np.argsort(-scores, axis=1)[:, :10] == targets[:, None]).any(axis=1).mean()
    hr_pop = np.isin(targets, np.argsort(-popularity)[:10]).mean()
    assert hr_pop > 0.02
    assert hr_seq >= 3 * hr_pop, (hr_seq, hr_pop)


def test_invalid_settings():
    with pytest.raises(ValueError, match="min_len"):
        Synthetic(min_len=10, max_len=5)
    with pytest.raises(ValueError, match="follow_prob"):
        Synthetic(follow_prob=1.5)
