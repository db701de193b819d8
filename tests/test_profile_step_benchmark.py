"""``benchmarks/profile_step.py`` builds a shipped config's model with its own kernel and CUDA-graph flags."""

from __future__ import annotations

import importlib.util

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
