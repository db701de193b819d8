"""MovieLens rating logs (GroupLens): 100K, 1M and 20M. Every rating is one event.

For generative ranking (HSTU paper, Sec. 4.2) a source can also emit the rating as the action token
(``actions=True``: action id = stars, or half stars x 2 on ML-20M) and the users file's columns as
contextual features (``contextual=True``: gender, age bucket, occupation, zip-code prefix).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gr_lightning.data.errors import DataError
from gr_lightning.data.readers import column_to_codes, column_to_float32, column_to_int64, read_csv
from gr_lightning.data.sources.base import DownloadableSource

_INT = pa.int64()
#: Upper edges of MovieLens-1M's age buckets (1: under 18, 18: 18-24, ..., 56: 56+), applied to raw ages.
AGE_BUCKETS = (18, 25, 35, 45, 50, 56)
#: Characters of the zip code kept as the zip-prefix feature.
ZIP_PREFIX = 2


class _MovieLens(DownloadableSource):
    """Common reader: one ratings file with user, item, rating and timestamp columns."""

    delimiter: ClassVar[str] = ","
    header: ClassVar[bool] = False
    columns: ClassVar[dict[str, str]] = {}
    default_file: ClassVar[str] = ""
    #: Users file with contextual features (None: this release has none) and its layout.
    users_file: ClassVar[str | None] = None
    users_delimiter: ClassVar[str] = ","
    users_columns: ClassVar[dict[str, str]] = {}
    raw_age: ClassVar[bool] = False
    #: Action id = rating x this (1 for whole stars, 2 for half stars).
    action_scale: ClassVar[int] = 1

    def __init__(self, root: str | None = None, ratings_file: str | None = None, actions: bool = False,
                 contextual: bool = False) -> None:
        super().__init__(root)
        self.ratings_file = ratings_file or self.default_file
        self.actions = actions
        self.contextual = contextual
        if contextual and self.users_file is None:
            raise DataError(f"{type(self).__name__} has no users file, so no contextual features")

    def required_files(self) -> list[str]:
        """Return the ratings file name (and the users file with ``contextual``)."""
        return [self.ratings_file] + ([self.users_file] if self.contextual and self.users_file else [])

    def download_url(self) -> str | None:
        """Return the official zip, which holds the default ratings file only."""
        return self.url if self.ratings_file == self.default_file else None

    def settings(self) -> dict[str, Any]:
        """Folder and ratings file (plus the ranking options when set)."""
        extra = {"actions": True} if self.actions else {}
        if self.contextual:
            extra["contextual"] = {"age_buckets": AGE_BUCKETS, "zip_prefix": ZIP_PREFIX}
        return {**super().settings(), "ratings_file": self.ratings_file, **extra}

    def load_events(self) -> dict[str, np.ndarray]:
        """Read the ratings file (see :meth:`DataSource.load_events`)."""
        path = self.files()[0]
        types = {"user_id": _INT, "item_id": _INT, "timestamp": _INT, "rating": pa.float64()}
        table = read_csv(path, self.columns, delimiter=self.delimiter, header=self.header, types=types)
        offset = 2 if self.header else 1
        events = {
            "user_id": column_to_int64(table["user_id"], self.columns["user_id"], path, line_offset=offset),
            "item_id": column_to_int64(table["item_id"], self.columns["item_id"], path, line_offset=offset),
            "timestamp": column_to_int64(table["timestamp"], self.columns["timestamp"], path,
                                         line_offset=offset, non_negative=False),
            "rating": column_to_float32(table["rating"], self.columns["rating"], path, line_offset=offset),
        }
        if self.actions:
            scaled = events["rating"] * self.action_scale
            action = np.rint(scaled).astype(np.int64)
            bad = (np.abs(scaled - action) > 1e-4) | (action < 1)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"{path}: line {row + offset}: rating {float(events['rating'][row])} is not a "
                                f"valid action (whole stars{' or half stars' if self.action_scale == 2 else ''})")
            events["action"] = action
        if self.contextual:
            events.update(self._read_users(self.files()[1]))
        return events

    def _read_users(self, path: Any) -> dict[str, np.ndarray]:
        """Contextual features of each user: gender, age bucket, occupation, zip prefix."""
        cols = self.users_columns
        table = read_csv(path, cols, delimiter=self.users_delimiter, header=False,
                         types={"user_id": _INT, "gender": pa.string(), "occupation": pa.string(),
                                "zip": pa.string(), "age": _INT})
        users = column_to_int64(table["user_id"], cols["user_id"], path)
        age = column_to_int64(table["age"], cols["age"], path)
        if self.raw_age:
            age = np.searchsorted(np.asarray(AGE_BUCKETS), age, side="right").astype(np.int64)
        gender, _ = column_to_codes(table["gender"], cols["gender"], path)
        occupation, _ = column_to_codes(table["occupation"], cols["occupation"], path)
        zip_prefix, _ = column_to_codes(pa.chunked_array([pc.utf8_slice_codeunits(
            table["zip"].combine_chunks().cast(pa.string()), 0, ZIP_PREFIX)]), cols["zip"], path)
        return {
            "context_user_id": users,
            "context_values": np.stack([gender, age, occupation, zip_prefix], axis=1),  # (M, 4)
            "context_names": np.array(["gender", "age", "occupation", "zip_prefix"]),
        }


class MovieLens100K(_MovieLens):
    """MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies (``u.data``, tab-separated).

    Downloaded from https://files.grouplens.org/datasets/movielens/ml-100k.zip (md5-verified) when
    missing. Research use only; cite Harper & Konstan, ACM TiiS 2015.

    Args:
        root: Folder holding ``u.data`` (or ``u.data.gz``); default ``$GR_DATA_DIR/ml-100k``.
        ratings_file: Name of the ratings file inside ``root``; default ``u.data``.
        actions: Also emit each rating as an action token id (ranking).
        contextual: Also read the users file's gender, age bucket, occupation and zip prefix (ranking).

    """

    name = "ml-100k"
    folder = "ml-100k"
    url = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    md5 = "0e33842e24a9c977be4e0107933c0723"
    delimiter = "\t"
    default_file = "u.data"
    users_file = "u.user"
    users_delimiter = "|"
    users_columns: ClassVar[dict[str, str]] = {"user_id": "f0", "age": "f1", "gender": "f2",
                                               "occupation": "f3", "zip": "f4"}
    raw_age = True
    columns: ClassVar[dict[str, str]] = {"user_id": "f0", "item_id": "f1", "rating": "f2", "timestamp": "f3"}


class MovieLens1M(_MovieLens):
    """MovieLens 1M: 1,000,209 ratings of 6,040 users (``ratings.dat``, ``::``-separated).

    ``::`` lines are parsed as ``:``-separated fields 0, 2, 4, 6, fully vectorised. Downloaded from
    https://files.grouplens.org/datasets/movielens/ml-1m.zip (md5-verified) when missing.

    Args:
        root: Folder holding the ratings file; default ``$GR_DATA_DIR/ml-1m``.
        ratings_file: Its name; default ``ratings.dat`` (this machine's partial copy is
            ``ratings_users_1-2999.dat``; a ``.gz`` twin is found automatically).
        actions: Also emit each rating as an action token id (ranking).
        contextual: Also read the users file's gender, age bucket, occupation and zip prefix (ranking).

    """

    name = "ml-1m"
    folder = "ml-1m"
    url = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    md5 = "c4d9eecfca2ab87c1945afe126590906"
    delimiter = ":"
    default_file = "ratings.dat"
    users_file = "users.dat"
    users_delimiter = ":"
    users_columns: ClassVar[dict[str, str]] = {"user_id": "f0", "gender": "f2", "age": "f4",
                                               "occupation": "f6", "zip": "f8"}
    columns: ClassVar[dict[str, str]] = {"user_id": "f0", "item_id": "f2", "rating": "f4", "timestamp": "f6"}


class MovieLens20M(_MovieLens):
    """MovieLens 20M: 20,000,263 ratings (``ratings.csv`` with header ``userId,movieId,rating,timestamp``).

    Ratings are half stars (0.5-5.0). Downloaded from
    https://files.grouplens.org/datasets/movielens/ml-20m.zip (md5-verified) when missing.

    Args:
        root: Folder holding the ratings file; default ``$GR_DATA_DIR/ml-20m``.
        ratings_file: Its name; default ``ratings.csv``.
        actions: Also emit each rating x 2 (half stars) as an action token id (ranking).
        contextual: Not available (ML-20M has no users file).

    """

    name = "ml-20m"
    folder = "ml-20m"
    url = "https://files.grouplens.org/datasets/movielens/ml-20m.zip"
    md5 = "cd245b17a1ae2cc31bb14903e1204af3"
    delimiter = ","
    header = True
    default_file = "ratings.csv"
    action_scale = 2
    columns: ClassVar[dict[str, str]] = {
        "user_id": "userId",
        "item_id": "movieId",
        "rating": "rating",
        "timestamp": "timestamp",
    }
