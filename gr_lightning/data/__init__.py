"""Data layer: sources, preprocessing to a memory-mapped cache, leave-one-out DataModules.

Flow: a :class:`DataSource` (``MovieLens100K``, ``MovieLens1M``, ``MovieLens20M``, ``AmazonReviews``,
``EventLog``, ``Synthetic``;
for ranking ``KuaiRand``, ``SyntheticRanking``) yields raw event columns;
:func:`build_sequences` groups them per user in
time order with dense item ids ``1..num_items``; :class:`SequenceStore` caches the result as ``.npy``
files in ``cache_dir/<source>-<fingerprint>/`` and memory-maps them; :class:`RetrievalDataModule`
serves leave-one-out splits as :class:`~gr_lightning.batch.JaggedBatch`; :class:`RankingDataModule`
serves time-based ranking splits as :class:`RankingBatch`. Bad input raises
:class:`DataError` naming the file, column, line or user.
"""

from gr_lightning.data.collate import gather_batch
from gr_lightning.data.datamodule import RetrievalDataModule
from gr_lightning.data.errors import DataError, DownloadError
from gr_lightning.data.fetch import download, extract_zip
from gr_lightning.data.preprocess import build_sequences
from gr_lightning.data.ranking import RankingBatch, RankingDataModule
from gr_lightning.data.sources import (
    BOOKS_URL,
    AmazonReviews,
    DataSource,
    DownloadableSource,
    EventLog,
    KuaiRand,
    MovieLens1M,
    MovieLens20M,
    MovieLens100K,
    Synthetic,
    SyntheticRanking,
    data_dir,
    default_root,
    k_core,
)
from gr_lightning.data.split import SplitIndex, eligible_users, leave_one_out
from gr_lightning.data.store import CorruptCacheError, SequenceStore

__all__ = [
    "BOOKS_URL",
    "AmazonReviews",
    "CorruptCacheError",
    "DataError",
    "DataSource",
    "DownloadError",
    "DownloadableSource",
    "EventLog",
    "KuaiRand",
    "MovieLens1M",
    "MovieLens20M",
    "MovieLens100K",
    "RankingBatch",
    "RankingDataModule",
    "RetrievalDataModule",
    "SequenceStore",
    "SplitIndex",
    "Synthetic",
    "SyntheticRanking",
    "build_sequences",
    "data_dir",
    "default_root",
    "download",
    "eligible_users",
    "extract_zip",
    "gather_batch",
    "k_core",
    "leave_one_out",
]
