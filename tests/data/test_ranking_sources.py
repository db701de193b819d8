"""Ranking inputs in the data layer: action tokens, contextual features, KuaiRand, the synthetic generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gr_lightning.data import (
    DataError,
    EventLog,
    KuaiRand,
    MovieLens1M,
    MovieLens100K,
    RankingDataModule,
    SyntheticRanking,
    build_sequences,
)
from gr_lightning.data.ranking import RankingBatch, check_action_counts
from gr_lightning.data.sources.kuairand import ACTIONS

LOG_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
              "long_view,play_time_ms,is_profile_enter,is_rand,tab")


def kuairand_files(tmp_path, rows_per_user: int = 8, users: int = 3):
    """A tiny KuaiRand release: one log in the public column layout and a user-feature file."""
    lines = [LOG_HEADER]
    for u in range(users):
        for t in range(rows_per_user):
            flags = [(u + t + k) % 2 for k in range(8)]
            click, like, follow, comment, forward, hate, long_view, profile = flags
            lines.append(f"{u},{100 + (u * 7 + t) % 11},20220408,1000,{1_649_000_000_000 + t * 60_000 + u},"
                         f"{click},{like},{follow},{comment},{forward},{hate},{long_view},1000,{profile},0,1")
    (tmp_path / "log_standard_4_08_to_4_21_tiny.csv").write_text("\n".join(lines) + "\n")
    feats = ["user_id,user_active_degree,is_live_streamer,follow_user_num_range"]
    feats += [f"{u},{['high_active', 'full_active'][u % 2]},{u % 2},{'0-10' if u else '10-50'}" for u in range(users)]
    (tmp_path / "user_features_tiny.csv").write_text("\n".join(feats) + "\n")
    return tmp_path


def test_kuairand_merges_eight_signals_into_one_bitmask(tmp_path):
    root = kuairand_files(tmp_path)
    source = KuaiRand(str(root), context_columns=["user_active_degree", "is_live_streamer", "follow_user_num_range"])
    events = source.load_events()
    assert events["action"].shape == events["item_id"].shape == (24,)
    # user 0, event 0: like, comment, hate, profile_enter -> bits 1, 3, 5, 7
    assert int(events["action"][0]) == (1 << 1) | (1 << 3) | (1 << 5) | (1 << 7)
    assert len(ACTIONS) == 8 and events["timestamp"][0] == 1_649_000_000
    arrays = build_sequences(events)
    assert arrays["contexts"].shape == (3, 3) and arrays["contexts"].min() == 1
    assert list(arrays["context_sizes"]) == [3, 3, 3]


def test_kuairand_missing_contextual_column_is_a_clear_error(tmp_path):
    root = kuairand_files(tmp_path)
    with pytest.raises(DataError, match="'fans_user_num_range' not found"):
        KuaiRand(str(root), context_columns=["fans_user_num_range"]).load_events()


def test_event_log_actions_and_context_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,action,country\n1,5,10,2,fr\n1,6,11,0,fr\n2,5,12,1,de\n")
    events = EventLog(str(path), action_column="action", context_columns=["country"]).load_events()
    arrays = build_sequences(events)
    assert arrays["actions"].tolist() == [2, 0, 1]
    assert arrays["contexts"][:, 0].tolist() == [2, 1]  # de < fr
    with pytest.raises(DataError, match="'gender' not found"):
        EventLog(str(path), action_column="action", context_columns=["gender"]).load_events()


def test_movielens_rating_actions_and_user_context(shared_data):
    source = MovieLens100K(actions=True, contextual=True)
    arrays = build_sequences(source.load_events())
    assert set(np.unique(arrays["actions"])) == {1, 2, 3, 4, 5}
    assert list(arrays["context_names"]) == ["gender", "age", "occupation", "zip_prefix"]
    assert arrays["contexts"].shape == (943, 4)
    assert MovieLens1M().settings() == MovieLens1M(actions=False).settings()  # retrieval caches unchanged


def test_non_whole_rating_is_not_a_valid_action(write_text):
    path = write_text("ml/u.data", "1\t5\t3.5\t10\n")
    with pytest.raises(DataError, match=r"3\.5 is not a valid action"):
        MovieLens100K(str(path.parent), actions=True).load_events()


def test_unknown_action_value_names_the_user(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,action\n" + "".join(f"7,{i},{i},{9 if i == 3 else 1}\n"
                                                                    for i in range(1, 9)))
    dm = RankingDataModule(EventLog(str(path), action_column="action"), num_candidates=2, num_actions=4,
                           cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="unknown action value 9 of user 7"):
        dm.setup()


def test_missing_context_row_is_an_error():
    events = {"user_id": np.array([1, 2]), "item_id": np.array([1, 1]), "timestamp": np.array([0, 0]),
              "context_user_id": np.array([1]), "context_values": np.array([[0]]), "context_names": np.array(["g"])}
    with pytest.raises(DataError, match=r"no contextual features, e\.g\. user 2"):
        build_sequences(events)


def test_mismatched_action_and_item_counts_name_the_user():
    item_offsets = torch.tensor([0, 3, 5])
    with pytest.raises(ValueError, match="user 42 has 1 action tokens but 2 item tokens"):
        check_action_counts(item_offsets, torch.tensor([0, 3, 4]), users=torch.tensor([41, 42]))


def test_candidates_longer_than_every_sequence_is_an_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,action\n1,1,1,0\n1,2,2,1\n1,3,3,0\n")
    dm = RankingDataModule(EventLog(str(path), action_column="action"), num_candidates=2,
                           cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="candidates would be longer than the sequences"):
        dm.setup()


def test_ranking_split_is_time_ordered_and_batches_are_jagged(tmp_path):
    dm = RankingDataModule(SyntheticRanking(num_users=50, num_items=30), max_seq_len=16, num_candidates=3,
                           batch_size=8, cache_dir=str(tmp_path))
    dm.setup()
    train, val, test = dm.split("train"), dm.split("val"), dm.split("test")
    assert (train.candidate_ends == val.ends).all() and (val.candidate_ends == test.ends).all()
    assert (test.ends - test.starts <= 16).all() and (test.candidate_ends - test.ends == 3).all()
    batch = next(iter(dm.test_dataloader()))
    assert isinstance(batch, RankingBatch)
    batch.validate()
    ts = dm.store.timestamps
    assert (batch.query_times == torch.from_numpy(np.asarray(ts)[test.ends[: batch.batch_size]])).all()
    assert batch.contexts.shape == (batch.batch_size, 3)


def test_synthetic_bayes_probabilities_are_calibrated(tmp_path):
    source = SyntheticRanking(num_users=400, num_items=40, seed=3)
    dm = RankingDataModule(source, max_seq_len=64, num_candidates=4, cache_dir=str(tmp_path))
    split = dm.split("test")
    rows = (split.ends[:, None] + np.arange(4)).reshape(-1)
    p = source.bayes_probabilities(split.starts, split.ends, rows, np.repeat(np.arange(len(split)), 4))
    labels = (np.asarray(dm.store.actions)[rows][:, None] >> np.arange(3)) & 1
    assert p.shape == labels.shape and np.all((p > 0) & (p < 1))
    assert np.abs(p.mean(axis=0) - labels.mean(axis=0)).max() < 0.05  # calibrated on average
