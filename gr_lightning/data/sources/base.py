"""The :class:`DataSource` interface and the shared logic of file-backed sources.

A source turns some interaction log into columns (``load_events``) and says when that log or its
settings changed (``fingerprint``, the cache key). Where files come from:

1. ``root`` when given;
2. otherwise ``$GR_DATA_DIR/<folder>``; ``GR_DATA_DIR`` defaults to ``../shared/data`` relative to
   the working directory when that folder exists (this project's convention for shared data);
   the default is used only if the dataset folder is there, an explicit ``GR_DATA_DIR`` always;
3. otherwise ``~/.cache/gr-lightning/datasets/<folder>``.

Missing files are downloaded from the publisher (checksum-verified) when the source knows a URL.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gr_lightning.data.errors import DataError
from gr_lightning.data.fetch import download, extract_zip
from gr_lightning.data.readers import find_file

_FINGERPRINT_VERSION = 1


def data_dir() -> Path | None:
    """Return ``$GR_DATA_DIR``, else ``./../shared/data`` if that folder exists, else None."""
    env = os.environ.get("GR_DATA_DIR")
    if env:
        return Path(env).expanduser()
    default = Path.cwd() / ".." / "shared" / "data"
    return default if default.is_dir() else None


def default_root(folder: str) -> Path:
    """Where a dataset lives when no ``root`` is configured (see the module docstring)."""
    explicit = bool(os.environ.get("GR_DATA_DIR"))
    shared = data_dir()
    if shared is not None and (explicit or (shared / folder).is_dir()):
        return shared / folder
    return Path("~/.cache/gr-lightning/datasets").expanduser() / folder


class DataSource(ABC):
    """An interaction log.

    Subclasses take plain typed ``__init__`` arguments, so LightningCLI / jsonargparse can build
    them from YAML.
    """

    #: Short name used in cache folder names and messages.
    name: ClassVar[str] = "source"

    @abstractmethod
    def load_events(self) -> dict[str, np.ndarray]:
        """Read all events.

        Returns:
            ``user_id``, ``item_id``, ``timestamp`` (seconds): ``(N,)`` int64 raw ids as in the file;
            optionally ``rating`` ``(N,)`` float32, and ``user_vocab`` / ``item_vocab`` (strings
            indexed by ``user_id`` / ``item_id``) for sources whose ids are strings.

        """

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the events (JSON-serialisable); part of the fingerprint."""

    def files(self) -> list[Path]:
        """Return the files the events are read from (downloading them if needed); part of the fingerprint."""
        return []

    def fingerprint(self) -> str:
        """Hash the class, its settings and each file's name, size and mtime."""
        stamp = []
        for path in self.files():
            info = path.stat()
            stamp.append([str(path.resolve()), info.st_size, info.st_mtime_ns])
        payload = {
            "version": _FINGERPRINT_VERSION,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "settings": self.settings(),
            "files": stamp,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


class DownloadableSource(DataSource):
    """A source reading named files from a folder that can be filled from a publisher's URL.

    Subclasses set ``folder`` (dataset folder name), ``url``, ``md5`` (None: size check only) and
    ``strip_components`` (leading folders to drop when unzipping), and list the needed file names
    in ``required_files``.
    """

    folder: ClassVar[str] = "dataset"
    url: ClassVar[str | None] = None
    md5: ClassVar[str | None] = None
    strip_components: ClassVar[int] = 1

    def __init__(self, root: str | None = None) -> None:
        self.root = root

    @property
    def root_dir(self) -> Path:
        """The folder the files are read from."""
        return Path(self.root).expanduser() if self.root else default_root(self.folder)

    def required_files(self) -> list[str]:
        """Names of the files ``load_events`` reads (each may also exist with ``.gz`` added)."""
        return []

    def download_url(self) -> str | None:
        """Where missing files come from; None when they cannot be downloaded."""
        return self.url

    def files(self) -> list[Path]:
        """Resolve the required files, downloading and unpacking the dataset if any is missing."""
        root = self.root_dir
        found = {name: find_file(root, name) for name in self.required_files()}
        missing = [name for name, path in found.items() if path is None]
        url = self.download_url()
        if missing and url:
            self._fetch(root, url)
            found = {name: find_file(root, name) for name in self.required_files()}
            missing = [name for name, path in found.items() if path is None]
        if missing:
            present = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
            raise DataError(
                f"{type(self).__name__}: file(s) {missing} (or .gz) not found in {root}; "
                f"it contains {present or 'nothing'}"
                + ("" if url else "; this source has no download URL, set `root` to a folder holding them")
            )
        return [path for path in found.values() if path is not None]

    def _fetch(self, root: Path, url: str) -> None:
        filename = url.rsplit("/", 1)[-1]
        target = download(url, root / filename, md5=self.md5)
        if filename.endswith(".zip"):
            extract_zip(target, root, strip_components=self.strip_components)

    def settings(self) -> dict[str, Any]:
        """Return the folder and file settings (subclasses add theirs)."""
        return {"root": str(self.root_dir.resolve()), "files": self.required_files()}
