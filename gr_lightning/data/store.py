"""On-disk cache of preprocessed sequences: ``.npy`` arrays + ``meta.json``, loaded memory-mapped.

A store lives in ``cache_dir/<source-name>-<fingerprint>/``. It is written into a temporary folder
and renamed into place in one step, so a reader sees either nothing or a complete store. At load
time every array is checked against ``meta.json`` (dtype, shape, CRC-32); a store that fails is
reported with a warning, moved aside and rebuilt, never half-read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from gr_lightning.data.errors import DataError
from gr_lightning.data.preprocess import build_sequences

if TYPE_CHECKING:
    from gr_lightning.data.sources.base import DataSource

FORMAT_VERSION = 1
_REQUIRED = ("offsets", "items", "timestamps", "user_ids", "item_ids")
_OPTIONAL = ("ratings", "user_names", "item_names", "actions", "contexts", "context_names", "context_sizes")
_CRC_CHUNK = 1 << 24
log = logging.getLogger(__name__)


class CorruptCacheError(DataError):
    """A cached store does not match its ``meta.json`` (truncated, unreadable or inconsistent)."""


@contextlib.contextmanager
def _stage(message: str) -> Iterator[None]:
    """Show a rich spinner with ``message`` while the block runs and log how long it took."""
    start = time.perf_counter()
    console = Console(stderr=True)
    with console.status(message):
        yield
    log.info("%s: %.2f s", message, time.perf_counter() - start)


def _crc32(array: np.ndarray) -> int:
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # (nbytes,)
    crc = 0
    for start in range(0, flat.size, _CRC_CHUNK):
        crc = zlib.crc32(flat[start : start + _CRC_CHUNK], crc)
    return crc


class SequenceStore:
    """Per-user event sequences, memory-mapped from a cache folder.

    Attributes:
        path: The cache folder.
        meta: Contents of its ``meta.json``.

    """

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self._arrays: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ pickling (DataLoader workers)
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.meta, self._arrays = state["path"], state["meta"], {}

    # ------------------------------------------------------------------ arrays
    def array(self, name: str) -> np.ndarray:
        """Return the named array, memory-mapped read-only (opened on first use)."""
        if name not in self._arrays:
            if name not in self.meta["arrays"]:
                raise KeyError(f"{self.path} has no array {name!r}; it has {sorted(self.meta['arrays'])}")
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        return self._arrays[name]

    @property
    def offsets(self) -> np.ndarray:
        """``(U+1,)`` int64 row boundaries of each user's sequence."""
        return self.array("offsets")

    @property
    def items(self) -> np.ndarray:
        """``(N,)`` int32 dense item ids ``1..num_items``, time-ordered within each user."""
        return self.array("items")

    @property
    def timestamps(self) -> np.ndarray:
        """``(N,)`` int64 event times in seconds."""
        return self.array("timestamps")

    @property
    def ratings(self) -> np.ndarray | None:
        """``(N,)`` float32 ratings, or None when the source has none."""
        return self.array("ratings") if "ratings" in self.meta["arrays"] else None

    @property
    def actions(self) -> np.ndarray | None:
        """``(N,)`` int64 merged action token id of each event (ranking sources), or None."""
        return self.array("actions") if "actions" in self.meta["arrays"] else None

    @property
    def contexts(self) -> np.ndarray | None:
        """``(U, F)`` int64 contextual features of each user, densified to ``1..V_f``, or None."""
        return self.array("contexts") if "contexts" in self.meta["arrays"] else None

    @property
    def context_names(self) -> list[str]:
        """Names of the ``F`` contextual features (empty when the source has none)."""
        return [str(n) for n in self.array("context_names")] if "context_names" in self.meta["arrays"] else []

    @property
    def context_sizes(self) -> list[int]:
        """Embedding rows of each contextual feature (``V_f + 1``; empty when there are none)."""
        return [int(n) for n in self.array("context_sizes")] if "context_sizes" in self.meta["arrays"] else []

    @property
    def user_ids(self) -> np.ndarray:
        """``(U,)`` int64 raw id of each dense user index."""
        return self.array("user_ids")

    @property
    def item_ids(self) -> np.ndarray:
        """``(num_items+1,)`` int64 raw id of each dense item id (``-1`` at the padding id 0)."""
        return self.array("item_ids")

    @property
    def item_names(self) -> np.ndarray | None:
        """``(num_items+1,)`` original string item ids (e.g. Amazon ASINs), or None."""
        return self.array("item_names") if "item_names" in self.meta["arrays"] else None

    @property
    def user_names(self) -> np.ndarray | None:
        """``(U,)`` original string user ids, or None."""
        return self.array("user_names") if "user_names" in self.meta["arrays"] else None

    @property
    def num_users(self) -> int:
        """Number of users (dense indices ``0..num_users-1``)."""
        return int(self.meta["num_users"])

    @property
    def num_items(self) -> int:
        """Number of items (dense ids ``1..num_items``)."""
        return int(self.meta["num_items"])

    @property
    def num_events(self) -> int:
        """Total number of events."""
        return int(self.meta["num_events"])

    def lengths(self) -> np.ndarray:
        """``(U,)`` number of events of each user."""
        offsets = np.asarray(self.offsets)
        return offsets[1:] - offsets[:-1]

    # ------------------------------------------------------------------ writing
    @classmethod
    def write(
        cls, arrays: dict[str, np.ndarray], path: Path, *, fingerprint: str, source: str
    ) -> SequenceStore:
        """Write ``arrays`` (from :func:`build_sequences`) to ``path`` atomically and open the result.

        If another process finished the same store first, its copy is kept and ours is discarded.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            described = {}
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array, allow_pickle=False)
                crc = _crc32(array)
                described[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "crc32": crc}
            meta = {
                "format_version": FORMAT_VERSION,
                "fingerprint": fingerprint,
                "source": source,
                "num_users": int(arrays["user_ids"].shape[0]),
                "num_items": int(arrays["item_ids"].shape[0] - 1),
                "num_events": int(arrays["items"].shape[0]),
                "arrays": described,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.rename(tmp, path)
            except OSError:
                if not (path / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer won; use its store
                return cls.load(path, fingerprint=fingerprint)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path, meta)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: Path, *, fingerprint: str | None = None, verify: bool = True) -> SequenceStore:
        """Open the store at ``path`` and check it against its ``meta.json``.

        Args:
            path: The cache folder.
            fingerprint: Expected source fingerprint, if known.
            verify: Also compare each array's CRC-32 (reads every byte once; cheap next to training).

        Raises:
            CorruptCacheError: Anything is missing, truncated, unreadable or inconsistent.

        """
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as err:
            raise CorruptCacheError(f"{path}/meta.json is missing or unreadable ({err})") from err
        if meta.get("format_version") != FORMAT_VERSION:
            version = meta.get("format_version")
            raise CorruptCacheError(f"{path}: format version {version} != {FORMAT_VERSION}")
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            raise CorruptCacheError(f"{path}: fingerprint {meta.get('fingerprint')} != {fingerprint}")
        store = cls(path, meta)
        described = meta.get("arrays", {})
        if any(name not in described for name in _REQUIRED):
            raise CorruptCacheError(f"{path}: meta.json lists {sorted(described)}, needs {list(_REQUIRED)}")
        for name, spec in described.items():
            try:
                array = store.array(name)
            except (OSError, ValueError, EOFError) as err:
                raise CorruptCacheError(f"{path}/{name}.npy is truncated or unreadable ({err})") from err
            if array.dtype.str != spec["dtype"] or list(array.shape) != spec["shape"]:
                raise CorruptCacheError(
                    f"{path}/{name}.npy is {array.dtype.str}{list(array.shape)}, "
                    f"meta.json says {spec['dtype']}{spec['shape']}"
                )
            if verify and _crc32(array) != spec["crc32"]:
                raise CorruptCacheError(f"{path}/{name}.npy fails its CRC-32 check")
        offsets = store.offsets
        if (
            offsets.shape != (store.num_users + 1,)
            or int(offsets[0]) != 0
            or int(offsets[-1]) != store.num_events
            or store.items.shape != (store.num_events,)
            or store.timestamps.shape != (store.num_events,)
            or store.item_ids.shape != (store.num_items + 1,)
            or (store.actions is not None and store.actions.shape != (store.num_events,))
            or (store.contexts is not None and store.contexts.shape[0] != store.num_users)
        ):
            raise CorruptCacheError(f"{path}: array sizes disagree with the counts in meta.json")
        return store

    @classmethod
    def from_source(cls, source: DataSource, cache_dir: str | os.PathLike[str], *, verify: bool = True
                    ) -> SequenceStore:
        """Load the cached store for ``source``, building it first if missing, stale or corrupt.

        Args:
            source: Where the events come from; its ``fingerprint()`` selects the cache folder.
            cache_dir: Parent folder of all stores.
            verify: Check CRC-32s when loading an existing store.

        """
        fingerprint = source.fingerprint()  # may download first; keep it outside any live display
        path = Path(cache_dir) / f"{source.name}-{fingerprint}"
        if path.exists():
            try:
                return cls.load(path, fingerprint=fingerprint, verify=verify)
            except CorruptCacheError as err:
                warnings.warn(f"cache {path} is corrupt ({err}); rebuilding it", UserWarning, stacklevel=2)
                aside = path.with_name(f".{path.name}.corrupt-{os.getpid()}-{time.monotonic_ns()}")
                with contextlib.suppress(OSError):
                    os.rename(path, aside)
                shutil.rmtree(aside, ignore_errors=True)
        with _stage(f"reading {source.name} events"):
            events = source.load_events()
        with _stage(f"building {source.name} sequences"):
            arrays = build_sequences(events, source=source.name)
            del events
        with _stage(f"writing cache {path}"):
            return cls.write(arrays, path, fingerprint=fingerprint, source=source.name)
