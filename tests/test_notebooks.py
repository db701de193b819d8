"""Every notebook in notebooks/ runs top to bottom against tiny runs in a temporary MLflow store, and plots."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

from tests.conftest import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def runs(analysis_runs: tuple[Path, str], data_root: Path) -> dict[str, str]:
    """The environment the notebooks read: the shared tiny runs' store and the ML-100K run's checkpoint."""
    workdir, uri = analysis_runs
    from gr_lightning.analysis import runs_table

    ckpt = runs_table(uri, experiment="ml-100k")["best_checkpoint"].iloc[0]
    return {"MLFLOW_TRACKING_URI": uri, "GR_CHECKPOINT": ckpt, "GR_DATA_DIR": str(data_root),
            "GR_DATASET": "ml-100k", "GR_CACHE_DIR": str(workdir / "cache")}


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == [
        "compare_backbones", "inspect_recommendations", "kernel_benchmarks"]


@pytest.mark.parametrize("name", ["compare_backbones", "inspect_recommendations", "kernel_benchmarks"])
def test_notebook_runs_and_plots(name, runs, monkeypatch):
    for key, value in runs.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend turns figures into outputs
    path = NOTEBOOKS / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        f"{path.name} is committed with outputs"
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    images = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert images, f"{path.name} produced no plot"
