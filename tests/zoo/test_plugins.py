"""A third-party backbone package registers through the entry point and trains, selected by name in YAML."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PLUGIN_MODULE = '''
"""A GRU backbone living outside gr-lightning."""

from torch import Tensor, nn

from gr_lightning.ops import jagged_to_padded, padded_to_jagged
from gr_lightning.zoo import Backbone


class TinyGRU(Backbone):
    """Causal GRU over each sequence."""

    description = "test plugin: a one-layer GRU"

    def __init__(self, dim: int, max_seq_len: int, hidden: int = 16) -> None:
        super().__init__(dim, max_seq_len)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor,
                query_times: Tensor | None = None) -> Tensor:
        out, _ = self.gru(jagged_to_padded(x, offsets, max_len))
        return padded_to_jagged(self.proj(out), offsets, x.shape[0])
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "gr-tiny-gru-plugin"
version = "0.0.1"

[project.entry-points."gr_lightning.zoo"]
tinygru = "gr_tiny_gru.backbone:TinyGRU"

[tool.setuptools]
packages = ["gr_tiny_gru"]
'''


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


@pytest.fixture
def installed_plugin(tmp_path: Path):
    pkg = tmp_path / "plugin"
    (pkg / "gr_tiny_gru").mkdir(parents=True)
    (pkg / "gr_tiny_gru" / "__init__.py").write_text("")
    (pkg / "gr_tiny_gru" / "backbone.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    (pkg / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(pkg))
    yield
    _pip("uninstall", "-y", "gr-tiny-gru-plugin")


@pytest.mark.slow
def test_out_of_tree_backbone_is_listed_and_trains(installed_plugin, tmp_path):
    cli = [sys.executable, "-m", "gr_lightning"]
    env_cwd = {"cwd": tmp_path, "capture_output": True, "text": True}
    listing = subprocess.run([*cli, "zoo"], check=True, **env_cwd).stdout
    assert "tinygru" in listing and "gr_tiny_gru.backbone.TinyGRU" in listing

    fit = subprocess.run([
        *cli, "fit", "--config", str(REPO_ROOT / "conf" / "demo.yaml"), "--model.backbone=TinyGRU",
        "--model.backbone.init_args.hidden=8", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--rich=false",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--trainer.logger.init_args.tracking_uri="
        f"sqlite:///{tmp_path / 'mlruns.db'}",
    ], **env_cwd)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "TinyGRU" in fit.stdout + fit.stderr and "test/hr_10" in fit.stdout
