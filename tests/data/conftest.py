"""Fixtures for the data tests: the shared real datasets and small event files."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture
def shared_data(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point GR_DATA_DIR at ``<repo>/../shared/data``; fail loudly (never skip) if it is absent."""
    assert SHARED_DATA.is_dir(), f"the shared datasets are expected at {SHARED_DATA}"
    monkeypatch.setenv("GR_DATA_DIR", str(SHARED_DATA))
    return SHARED_DATA


@pytest.fixture
def write_text(tmp_path: Path):
    """Write a small text file (gzipped when the name ends with .gz) and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        return path

    return _write
