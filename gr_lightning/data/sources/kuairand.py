"""KuaiRand (Gao et al., CIKM 2022): Kuaishou video logs with eight feedback signals per impression.

The public release (https://kuairand.com, variants KuaiRand-Pure / -1K / -27K) ships
``log_standard_*.csv`` (``user_id, video_id, time_ms, is_click, is_like, is_follow, is_comment,
is_forward, is_hate, long_view, is_profile_enter``, among others) and ``user_features_*.csv``. It is
the standard multi-task example of generative ranking (HSTU paper, Sec. 4.2): every impression is one
item event, and its eight 0/1 signals are merged into ONE action token, the bitmask
``sum_k signal_k << k`` over :data:`ACTIONS` (ids ``0..255``; bit ``k`` is ``ACTIONS[k]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gr_lightning.data.errors import DataError
from gr_lightning.data.readers import column_to_codes, column_to_int64, read_csv
from gr_lightning.data.sources.base import DataSource, default_root

#: The feedback signals, in bit order of the action bitmask.
ACTIONS: tuple[str, ...] = (
    "is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "is_profile_enter",
)
#: Categorical user columns of ``user_features_*.csv`` used as contextual features by default.
DEFAULT_CONTEXT: tuple[str, ...] = (
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
)


class KuaiRand(DataSource):
    """KuaiRand logs as item events with a merged action bitmask and user contextual features.

    The release has no stable download URL with a checksum, so files are read from a folder only.

    Args:
        root: Folder with the CSV files (plain or ``.gz``); default ``$GR_DATA_DIR/kuairand``.
        log_pattern: Glob of the log files inside ``root`` (all matches are concatenated).
        user_features_pattern: Glob of the user-feature file; None to read no contextual features.
        context_columns: Categorical columns of the user-feature file used as contextual features.

    """

    name = "kuairand"

    def __init__(
        self,
        root: str | None = None,
        log_pattern: str = "log_standard_*.csv*",
        user_features_pattern: str | None = "user_features_*.csv*",
        context_columns: list[str] | None = None,
    ) -> None:
        self.root = root
        self.log_pattern = log_pattern
        self.user_features_pattern = user_features_pattern
        self.context_columns = list(DEFAULT_CONTEXT if context_columns is None else context_columns)

    @property
    def root_dir(self) -> Path:
        """The folder the files are read from."""
        return Path(self.root).expanduser() if self.root else default_root("kuairand")

    def _glob(self, pattern: str) -> list[Path]:
        found = sorted(self.root_dir.glob(pattern))
        if not found:
            present = sorted(p.name for p in self.root_dir.iterdir()) if self.root_dir.is_dir() else []
            raise DataError(f"KuaiRand: no file matches {pattern!r} in {self.root_dir}; it contains "
                            f"{present or 'nothing'} (download the release from https://kuairand.com)")
        return found

    def files(self) -> list[Path]:
        """The log files, then the user-feature file (if configured)."""
        out = self._glob(self.log_pattern)
        if self.user_features_pattern and self.context_columns:
            features = self._glob(self.user_features_pattern)
            if len(features) > 1:
                raise DataError(f"KuaiRand: {len(features)} files match {self.user_features_pattern!r}: "
                                f"{[p.name for p in features]}; make the pattern select one")
            out += features
        return out

    def settings(self) -> dict[str, Any]:
        """Folder, patterns, contextual columns and the action bit order."""
        return {"root": str(self.root_dir.resolve()), "log_pattern": self.log_pattern,
                "user_features": self.user_features_pattern, "context": self.context_columns,
                "actions": list(ACTIONS)}

    def load_events(self) -> dict[str, np.ndarray]:
        """Read every log file, merge the eight signals into a bitmask (see the module docstring)."""
        paths = self.files()
        with_context = bool(self.user_features_pattern and self.context_columns)
        logs = paths[:-1] if with_context else paths
        columns = {"user_id": "user_id", "item_id": "video_id", "time_ms": "time_ms",
                   **{a: a for a in ACTIONS}}
        parts: dict[str, list[np.ndarray]] = {"user_id": [], "item_id": [], "timestamp": [], "action": []}
        for path in logs:
            table = read_csv(path, columns, delimiter=",", header=True, types=dict.fromkeys(columns, pa.int64()))
            if table.num_rows == 0:
                raise DataError(f"{path}: the file has a header but no events")
            parts["user_id"].append(column_to_int64(table["user_id"], "user_id", path, line_offset=2))
            parts["item_id"].append(column_to_int64(table["item_id"], "video_id", path, line_offset=2))
            time_ms = column_to_int64(table["time_ms"], "time_ms", path, line_offset=2, non_negative=False)
            parts["timestamp"].append(time_ms // 1000)  # seconds, as every other source
            action = np.zeros(table.num_rows, dtype=np.int64)
            for bit, name in enumerate(ACTIONS):
                signal = column_to_int64(table[name], name, path, line_offset=2)
                if signal.max(initial=0) > 1:
                    row = int(np.flatnonzero(signal > 1)[0])
                    raise DataError(f"{path}: line {row + 2}: {name}={int(signal[row])} is not 0/1")
                action |= signal << bit
            parts["action"].append(action)
        events = {key: np.concatenate(value) for key, value in parts.items()}
        if with_context:
            events.update(self._read_users(paths[-1]))
        return events

    def _read_users(self, path: Path) -> dict[str, np.ndarray]:
        columns = {"user_id": "user_id", **{f"ctx{i}": c for i, c in enumerate(self.context_columns)}}
        types = {"user_id": pa.int64(), **{f"ctx{i}": pa.string() for i in range(len(self.context_columns))}}
        table = read_csv(path, columns, delimiter=",", header=True, types=types)
        codes = [column_to_codes(table[f"ctx{i}"], c, path, line_offset=2)[0]
                 for i, c in enumerate(self.context_columns)]
        return {
            "context_user_id": column_to_int64(table["user_id"], "user_id", path, line_offset=2),
            "context_values": np.stack(codes, axis=1),  # (M, F)
            "context_names": np.array(self.context_columns),
        }
