"""A retrieval and a ranking model train from the same prepared data (one cache, read by both DataModules)."""

from __future__ import annotations

import numpy as np

from gr_lightning.data import MovieLens100K, RetrievalDataModule
from gr_lightning.data.ranking import RankingDataModule


def test_retrieval_and_ranking_read_one_cache(data_root, tmp_path):
    source = MovieLens100K(root=str(data_root / "ml-100k"), actions=True, contextual=True)
    retrieval = RetrievalDataModule(source, max_seq_len=50, cache_dir=str(tmp_path))
    ranking = RankingDataModule(source, max_seq_len=50, cache_dir=str(tmp_path))
    assert retrieval.store.path == ranking.store.path
    assert len(list(tmp_path.iterdir())) == 1  # prepared once
    assert retrieval.num_items == ranking.num_items == 1682
    np.testing.assert_array_equal(np.asarray(retrieval.store.items), np.asarray(ranking.store.items))
    assert int(np.asarray(ranking.store.actions).max()) == 5  # ratings 1..5 as action tokens
