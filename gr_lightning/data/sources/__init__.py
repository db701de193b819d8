"""Interaction-log sources: each turns some log into event columns and fingerprints it."""

from gr_lightning.data.sources.amazon import BOOKS_URL, AmazonReviews, k_core
from gr_lightning.data.sources.base import DataSource, DownloadableSource, data_dir, default_root
from gr_lightning.data.sources.event_log import EventLog
from gr_lightning.data.sources.kuairand import KuaiRand
from gr_lightning.data.sources.movielens import MovieLens1M, MovieLens20M, MovieLens100K
from gr_lightning.data.sources.synthetic import Synthetic
from gr_lightning.data.sources.synthetic_ranking import SyntheticRanking

__all__ = [
    "BOOKS_URL",
    "AmazonReviews",
    "DataSource",
    "DownloadableSource",
    "EventLog",
    "KuaiRand",
    "MovieLens1M",
    "MovieLens20M",
    "MovieLens100K",
    "Synthetic",
    "SyntheticRanking",
    "data_dir",
    "default_root",
    "k_core",
]
