"""A generic interaction log in CSV (any delimiter) or Parquet, with configurable column names."""

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
    find_file,
    read_csv,
    read_parquet,
)
from gr_lightning.data.sources.base import DataSource

_INT = pa.int64()


class EventLog(DataSource):
    """Events from one CSV or Parquet file: user id, item id, timestamp (seconds), optional rating.

    Ids must be non-negative integers (map string ids beforehand, or see :class:`AmazonReviews`).
    Timestamps may be integers, whole floats or Parquet timestamps.

    Args:
        path: The file (``.gz`` accepted for CSV).
        format: ``csv``, ``parquet`` or ``auto`` (from the file name).
        user_column: Column holding user ids.
        item_column: Column holding item ids.
        timestamp_column: Column holding event times in seconds.
        rating_column: Column holding ratings, or None to read none.
        delimiter: Field separator of CSV files.
        users_file: Optional CSV/Parquet file listing the expected users in a column named
            ``user_column``: every listed user must have events and every event's user must be
            listed (a clear error names the first offender otherwise).
        name: Name of the log in cache folders and messages.
        action_column: Column holding a non-negative integer action token id per event (ranking; several
            actions of one event must already be merged into one id, e.g. a bitmask), or None.
        context_columns: Categorical user columns used as contextual features (ranking), any type
            (values become codes); read from ``context_file`` when given, else from the log itself
            (each user's first event).
        context_file: Optional CSV/Parquet file with one row per user: ``user_column`` and the
            ``context_columns``.

    """

    def __init__(
        self,
        path: str,
        format: Literal["auto", "csv", "parquet"] = "auto",
        user_column: str = "user_id",
        item_column: str = "item_id",
        timestamp_column: str = "timestamp",
        rating_column: str | None = None,
        delimiter: str = ",",
        users_file: str | None = None,
        name: str = "events",
        action_column: str | None = None,
        context_columns: list[str] | None = None,
        context_file: str | None = None,
    ) -> None:
        self.path = path
        self.format = format
        self.user_column = user_column
        self.item_column = item_column
        self.timestamp_column = timestamp_column
        self.rating_column = rating_column
        self.delimiter = delimiter
        self.users_file = users_file
        self.name = name
        self.action_column = action_column
        self.context_columns = list(context_columns or [])
        self.context_file = context_file
        if context_file and not self.context_columns:
            raise ValueError("context_file is set but context_columns is empty")

    def settings(self) -> dict[str, Any]:
        """All constructor arguments."""
        return {
            "path": str(Path(self.path).expanduser().resolve()),
            "format": self.format,
            "columns": [self.user_column, self.item_column, self.timestamp_column, self.rating_column],
            "delimiter": self.delimiter,
            "users_file": self.users_file,
            **({"action_column": self.action_column} if self.action_column else {}),
            **({"context": [self.context_columns, self.context_file]} if self.context_columns else {}),
        }

    def _resolve(self, name: str) -> Path:
        path = Path(name).expanduser()
        found = find_file(path.parent, path.name)
        if found is None:
            raise DataError(f"EventLog: file {path} not found")
        return found

    def files(self) -> list[Path]:
        """Return the log file and the users file, if any."""
        out = [self._resolve(self.path)]
        if self.users_file:
            out.append(self._resolve(self.users_file))
        if self.context_file:
            out.append(self._resolve(self.context_file))
        return out

    @staticmethod
    def _read(path: Path, columns: dict[str, str], fmt: str, delimiter: str) -> tuple[pa.Table, int]:
        if fmt == "auto":
            fmt = "parquet" if ".parq" in path.name else "csv"
        if fmt == "parquet":
            return read_parquet(path, columns), 1
        types = {k: _INT for k in columns if k != "rating"}
        return read_csv(path, columns, delimiter=delimiter, header=True, types=types), 2

    def load_events(self) -> dict[str, np.ndarray]:
        """Read and validate the log (see :meth:`DataSource.load_events`)."""
        paths = self.files()
        path = paths[0]
        columns = {
            "user_id": self.user_column,
            "item_id": self.item_column,
            "timestamp": self.timestamp_column,
        }
        if self.rating_column:
            columns["rating"] = self.rating_column
        table, offset = self._read(path, columns, self.format, self.delimiter)
        if table.num_rows == 0:
            raise DataError(f"{path}: the file has a header but no events")
        events = {
            key: column_to_int64(table[key], src, path, line_offset=offset, non_negative=key != "timestamp")
            for key, src in columns.items()
            if key != "rating"
        }
        if self.rating_column:
            rating = table["rating"]
            events["rating"] = column_to_float32(rating, self.rating_column, path, line_offset=offset)
        if self.users_file:
            self._check_users(paths[1], events["user_id"], path, offset)
        if self.action_column:
            table = self._read(path, {"action": self.action_column}, self.format, self.delimiter)[0]
            events["action"] = column_to_int64(table["action"], self.action_column, path, line_offset=offset)
        if self.context_columns:
            events.update(self._read_context(paths[-1] if self.context_file else path, events["user_id"]))
        return events

    def _read_context(self, path: Path, event_users: np.ndarray) -> dict[str, np.ndarray]:
        """Contextual columns of each user as integer codes (from the context file or the log)."""
        columns = {"user_id": self.user_column, **{f"ctx{i}": c for i, c in enumerate(self.context_columns)}}
        fmt = self.format
        if fmt == "auto":
            fmt = "parquet" if ".parq" in path.name else "csv"
        if fmt == "parquet":
            table, offset = read_parquet(path, columns), 1
        else:
            types = {k: pa.string() for k in columns if k != "user_id"} | {"user_id": _INT}
            table, offset = read_csv(path, columns, delimiter=self.delimiter, header=True, types=types), 2
        users = column_to_int64(table["user_id"], self.user_column, path, line_offset=offset)
        codes = [column_to_codes(table[f"ctx{i}"], c, path, line_offset=offset)[0]
                 for i, c in enumerate(self.context_columns)]
        _, first = np.unique(users, return_index=True)  # one row per user: the first one
        return {
            "context_user_id": users[first],
            "context_values": np.stack(codes, axis=1)[first],  # (M, F)
            "context_names": np.array(self.context_columns),
        }

    def _check_users(self, users_path: Path, event_users: np.ndarray, path: Path, offset: int) -> None:
        columns = {"user_id": self.user_column}
        table, users_offset = self._read(users_path, columns, self.format, self.delimiter)
        listed = np.unique(column_to_int64(table["user_id"], self.user_column, users_path,
                                           line_offset=users_offset))
        if listed.size == 0:
            raise DataError(f"{users_path}: lists no users")
        known = np.isin(event_users, listed)
        if not known.all():
            row = int(np.flatnonzero(~known)[0])
            raise DataError(
                f"{path}: user {int(event_users[row])} at line {row + offset} is not listed in {users_path}"
            )
        active = np.isin(listed, event_users)
        if not active.all():
            silent = listed[~active]
            raise DataError(
                f"{users_path}: {silent.size} listed user(s) have no events in {path}, "
                f"e.g. user {int(silent[0])}"
            )
