"""Shared fixtures: the real datasets beside the repository, isolated MLflow stores, tiny real runs."""

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


DEMO = str(REPO_ROOT / "conf" / "demo.yaml")
ML1M_HSTU = str(REPO_ROOT / "conf" / "ml-1m" / "hstu.yaml")
TINY = ["--rich=false", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false"]


def tiny_fit(workdir: Path, uri: str, config: str, *extra: str) -> None:
    """Run ``gr-lightning fit`` in-process with ``workdir`` as the working directory and ``uri`` as the store."""
    old_cwd, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(workdir)
    try:
        from gr_lightning.cli import main  # imported here: collecting the suite must not load the CLI

        main(["fit", "--config", config, *TINY, f"--data.init_args.cache_dir={workdir / 'cache'}", *extra])
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


def ml100k_args(data_root: Path) -> list[str]:
    """Overrides turning the ML-1M HSTU config into a one-epoch ML-100K run."""
    return ["--trainer.max_epochs=1", "--trainer.accelerator=cpu",
            "--data.init_args.source=gr_lightning.data.MovieLens100K",
            f"--data.init_args.source.init_args.root={data_root / 'ml-100k'}",
            "--trainer.logger.init_args.experiment_name=ml-100k"]


@pytest.fixture(scope="session")
def analysis_runs(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[Path, str]:
    """A demo run (2 epochs) and an ML-100K run (1 epoch) in one fresh SQLite store: ``(workdir, uri)``.

    Shared by the analysis-function tests and the notebook tests, which read the same kind of runs.
    """
    workdir = tmp_path_factory.mktemp("analysis-runs")
    uri = f"sqlite:///{workdir / 'mlruns.db'}"
    tiny_fit(workdir, uri, DEMO, "--trainer.max_epochs=2")
    tiny_fit(workdir, uri, ML1M_HSTU, *ml100k_args(data_root))
    return workdir, uri
