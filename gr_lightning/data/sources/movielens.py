"""MovieLens rating logs (GroupLens): 100K, 1M and 20M. Every rating is one event."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from gr_lightning.data.readers import column_to_float32, column_to_int64, read_csv
from gr_lightning.data.sources.base import DownloadableSource

_INT = pa.int64()


class _MovieLens(DownloadableSource):
    """Common reader: one ratings file with user, item, rating and timestamp columns."""

    delimiter: ClassVar[str] = ","
    header: ClassVar[bool] = False
    columns: ClassVar[dict[str, str]] = {}
    default_file: ClassVar[str] = ""

    def __init__(self, root: str | None = None, ratings_file: str | None = None) -> None:
        super().__init__(root)
        self.ratings_file = ratings_file or self.default_file

    def required_files(self) -> list[str]:
        """Return the ratings file name."""
        return [self.ratings_file]

    def download_url(self) -> str | None:
        """Return the official zip, which holds the default ratings file only."""
        return self.url if self.ratings_file == self.default_file else None

    def settings(self) -> dict[str, Any]:
        """Folder and ratings file."""
        return {**super().settings(), "ratings_file": self.ratings_file}

    def load_events(self) -> dict[str, np.ndarray]:
        """Read the ratings file (see :meth:`DataSource.load_events`)."""
        (path,) = self.files()
        types = {"user_id": _INT, "item_id": _INT, "timestamp": _INT, "rating": pa.float64()}
        table = read_csv(path, self.columns, delimiter=self.delimiter, header=self.header, types=types)
        offset = 2 if self.header else 1
        return {
            "user_id": column_to_int64(table["user_id"], self.columns["user_id"], path, line_offset=offset),
            "item_id": column_to_int64(table["item_id"], self.columns["item_id"], path, line_offset=offset),
            "timestamp": column_to_int64(table["timestamp"], self.columns["timestamp"], path,
                                         line_offset=offset, non_negative=False),
            "rating": column_to_float32(table["rating"], self.columns["rating"], path, line_offset=offset),
        }


class MovieLens100K(_MovieLens):
    """MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies (``u.data``, tab-separated).

    Downloaded from https://files.grouplens.org/datasets/movielens/ml-100k.zip (md5-verified) when
    missing. Research use only; cite Harper & Konstan, ACM TiiS 2015.

    Args:
        root: Folder holding ``u.data`` (or ``u.data.gz``); default ``$GR_DATA_DIR/ml-100k``.
        ratings_file: Name of the ratings file inside ``root``; default ``u.data``.

    """

    name = "ml-100k"
    folder = "ml-100k"
    url = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    md5 = "0e33842e24a9c977be4e0107933c0723"
    delimiter = "\t"
    default_file = "u.data"
    columns: ClassVar[dict[str, str]] = {"user_id": "f0", "item_id": "f1", "rating": "f2", "timestamp": "f3"}


class MovieLens1M(_MovieLens):
    """MovieLens 1M: 1,000,209 ratings of 6,040 users (``ratings.dat``, ``::``-separated).

    ``::`` lines are parsed as ``:``-separated fields 0, 2, 4, 6, fully vectorised. Downloaded from
    https://files.grouplens.org/datasets/movielens/ml-1m.zip (md5-verified) when missing.

    Args:
        root: Folder holding the ratings file; default ``$GR_DATA_DIR/ml-1m``.
        ratings_file: Its name; default ``ratings.dat`` (this machine's partial copy is
            ``ratings_users_1-2999.dat``; a ``.gz`` twin is found automatically).

    """

    name = "ml-1m"
    folder = "ml-1m"
    url = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    md5 = "c4d9eecfca2ab87c1945afe126590906"
    delimiter = ":"
    default_file = "ratings.dat"
    columns: ClassVar[dict[str, str]] = {"user_id": "f0", "item_id": "f2", "rating": "f4", "timestamp": "f6"}


class MovieLens20M(_MovieLens):
    """MovieLens 20M: 20,000,263 ratings (``ratings.csv`` with header ``userId,movieId,rating,timestamp``).

    Ratings are half stars (0.5-5.0). Downloaded from
    https://files.grouplens.org/datasets/movielens/ml-20m.zip (md5-verified) when missing.

    Args:
        root: Folder holding the ratings file; default ``$GR_DATA_DIR/ml-20m``.
        ratings_file: Its name; default ``ratings.csv``.

    """

    name = "ml-20m"
    folder = "ml-20m"
    url = "https://files.grouplens.org/datasets/movielens/ml-20m.zip"
    md5 = "cd245b17a1ae2cc31bb14903e1204af3"
    delimiter = ","
    header = True
    default_file = "ratings.csv"
    columns: ClassVar[dict[str, str]] = {
        "user_id": "userId",
        "item_id": "movieId",
        "rating": "rating",
        "timestamp": "timestamp",
    }
