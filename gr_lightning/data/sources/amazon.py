"""Amazon product reviews (McAuley et al.): ratings-only CSV or JSON-lines reviews, k-core filtered."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from gr_lightning.data.errors import DataError
from gr_lightning.data.readers import (
    column_to_codes,
    column_to_float32,
    column_to_int64,
    read_csv,
    read_json_lines,
)
from gr_lightning.data.sources.base import DownloadableSource

BOOKS_URL = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Books.csv"


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Rows to keep so every remaining user and item has at least ``k`` events, applied until stable.

    Args:
        users: ``(N,)`` non-negative user codes.
        items: ``(N,)`` non-negative item codes.
        k: Minimum events per user and per item (``<= 1`` keeps everything).

    Returns:
        ``(N,)`` boolean mask.

    """
    keep = np.ones(users.shape[0], dtype=bool)
    if k <= 1:
        return keep
    kept = keep.sum()
    while True:
        user_counts = np.bincount(users[keep], minlength=int(users.max()) + 1)
        item_counts = np.bincount(items[keep], minlength=int(items.max()) + 1)
        keep &= (user_counts[users] >= k) & (item_counts[items] >= k)
        now = keep.sum()
        if now == kept:
            return keep
        kept = now


class AmazonReviews(DownloadableSource):
    """An Amazon review log, reduced to its k-core.

    Two formats: the ratings-only CSV the publisher ships per category (``user,item,rating,time``,
    no header, e.g. ``ratings_Books.csv``) and the JSON-lines review files (``reviewerID``, ``asin``,
    ``overall``, ``unixReviewTime``, e.g. ``reviews_Musical_Instruments_5.json.gz``). Amazon ids are
    strings; they become integer codes in sorted string order, and the strings are kept in the
    cache (``SequenceStore.item_names``) to map predictions back.

    The default file is Amazon Books (2014), downloaded from ``BOOKS_URL`` when missing. The
    publisher gives no checksum for it, so only the byte count announced by the server is checked.
    Research use; cite He & McAuley, WWW 2016 and McAuley et al., SIGIR 2015.

    Args:
        root: Folder holding ``file``; default ``$GR_DATA_DIR/amazon-books``.
        file: File name inside ``root`` (a ``.gz`` twin is found automatically).
        format: ``csv``, ``json`` (JSON lines) or ``auto`` (``json`` when the name contains
            ``.json``, else ``csv``).
        k_core: Keep only users and items with at least this many events, iterated until stable.
        url: Where to download ``file`` from when it is missing; None to never download.

    """

    name = "amazon"
    folder = "amazon-books"
    md5 = None
    strip_components = 0

    def __init__(
        self,
        root: str | None = None,
        file: str = "ratings_Books.csv",
        format: Literal["auto", "csv", "json"] = "auto",
        k_core: int = 5,
        url: str | None = BOOKS_URL,
    ) -> None:
        super().__init__(root)
        self.file = file
        self.format = format
        self.k_core = k_core
        self.source_url = url

    def required_files(self) -> list[str]:
        """Return the review file name."""
        return [self.file]

    def download_url(self) -> str | None:
        """Return the configured URL."""
        return self.source_url

    def settings(self) -> dict[str, Any]:
        """Folder, file, format and k."""
        return {**super().settings(), "format": self._format(), "k_core": self.k_core}

    def _format(self) -> str:
        if self.format != "auto":
            return self.format
        return "json" if ".json" in self.file else "csv"

    def _read(self, path: Path) -> tuple[pa.Table, dict[str, str]]:
        if self._format() == "json":
            columns = {"user_id": "reviewerID", "item_id": "asin", "rating": "overall",
                       "timestamp": "unixReviewTime"}
            types = {"user_id": pa.string(), "item_id": pa.string(), "rating": pa.float64(),
                     "timestamp": pa.int64()}
            return read_json_lines(path, columns, types), columns
        columns = {"user_id": "f0", "item_id": "f1", "rating": "f2", "timestamp": "f3"}
        types = {"user_id": pa.string(), "item_id": pa.string(), "rating": pa.float64(),
                 "timestamp": pa.int64()}
        return read_csv(path, columns, delimiter=",", header=False, types=types), columns

    def load_events(self) -> dict[str, np.ndarray]:
        """Read, map string ids to codes and apply the k-core filter (see :meth:`DataSource.load_events`)."""
        (path,) = self.files()
        table, columns = self._read(path)
        if table.num_rows == 0:
            raise DataError(f"{path}: no reviews")
        users, user_vocab = column_to_codes(table["user_id"], columns["user_id"], path)
        items, item_vocab = column_to_codes(table["item_id"], columns["item_id"], path)
        timestamps = column_to_int64(table["timestamp"], columns["timestamp"], path, non_negative=False)
        ratings = column_to_float32(table["rating"], columns["rating"], path)
        keep = k_core(users, items, self.k_core)
        if not keep.any():
            raise DataError(f"{path}: no user or item is left after the {self.k_core}-core filter")
        return {
            "user_id": users[keep],
            "item_id": items[keep],
            "timestamp": timestamps[keep],
            "rating": ratings[keep],
            "user_vocab": user_vocab,
            "item_vocab": item_vocab,
        }
