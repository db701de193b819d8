"""Shared fixtures: the real datasets beside the repository and an isolated MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

# The suite is CPU-only: Triton kernels run on its interpreter. This must be set before anything imports
# triton (lightning and torch may do so while other test folders are collected).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``<repo>/../shared/data``; a missing folder fails the test (CI must have it), never skips it."""
    assert SHARED_DATA.is_dir(), f"the shared datasets are expected at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One preprocessing cache for the whole session, so each dataset is prepared once."""
    return tmp_path_factory.mktemp("gr-cache")


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test, exported as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri
