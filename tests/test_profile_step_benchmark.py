"""``benchmarks/profile_step.py`` builds a shipped config's model with its own kernel and CUDA-graph flags."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import yaml

from tests.conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("profile_step", REPO_ROOT / "benchmarks" / "profile_step.py")
profile_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile_step)


@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("kernel", ["pytorch", "triton"])
def test_flags_win_over_the_config(kernel, cuda_graphs):
    """hstu-large.yaml sets cuda_graphs and a kernel itself; the script's flags replace them (it used to pass
    cuda_graphs twice and stop with a TypeError)."""
    cfg = yaml.safe_load((REPO_ROOT / "conf" / "ml-1m" / "hstu-large.yaml").read_text())
    assert "cuda_graphs" in cfg["model"]["init_args"]
    model = profile_step.model_from_config(cfg, kernel, cuda_graphs, num_items=37, max_seq_len=20)
    assert model.hparams["cuda_graphs"] is cuda_graphs
    assert model.backbone.kernel == kernel
    assert model.hparams["num_items"] == 37


def test_sync_report_counts_the_warnings_of_sync_debug_mode_by_place(monkeypatch):
    """On a GPU, ``set_sync_debug_mode("warn")`` warns at every host sync; here a fake step warns instead."""
    modes = []
    monkeypatch.setattr(profile_step.torch.cuda, "set_sync_debug_mode", modes.append)

    def step(batch):
        for _ in range(batch):
            warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
        warnings.warn("an unrelated warning", stacklevel=1)

    report = profile_step.sync_report(step, [2, 0, 1])
    assert modes == ["warn", "default"]  # switched back afterwards
    assert report["steps"] == 3 and report["syncs_per_step"] == 1.0
    (place, count), = report["places"].items()
    assert place.startswith("test_profile_step_benchmark.py:") and count == 3
