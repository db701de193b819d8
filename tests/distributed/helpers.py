"""Shared pieces of the distributed tests: a tiny config, CLI subprocesses, a self-kill callback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_config(cache_dir: Path, *, max_epochs: int = 2) -> dict[str, Any]:
    """A tiny HSTU on a tiny synthetic log: seconds per epoch on one CPU core."""
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": max_epochs,
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "logger": {"class_path": "gr_lightning.tracking.GRMLFlowLogger",
                       "init_args": {"experiment_name": "distributed-test"}},
        },
        "model": {
            "class_path": "gr_lightning.module.GRModule",
            "init_args": {
                "embedding_dim": 16,
                "input_dropout": 0.1,
                "num_negatives": 16,
                "backbone": {"class_path": "gr_lightning.zoo.hstu.HSTU",
                             "init_args": {"num_blocks": 1, "num_heads": 2, "attention_dim": 8, "linear_dim": 8,
                                           "dropout": 0.1, "kernel": "pytorch"}},
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003}},
            },
        },
        "data": {
            "class_path": "gr_lightning.data.RetrievalDataModule",
            "init_args": {
                "source": {"class_path": "gr_lightning.data.Synthetic",
                           "init_args": {"num_users": 253, "num_items": 200, "min_len": 5, "max_len": 40, "seed": 0}},
                "max_seq_len": 32,
                "batch_size": 32,
                "eval_batch_size": 48,
                "cache_dir": str(cache_dir),
            },
        },
        "rich": False,
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML and return its path."""
    path.write_text(yaml.safe_dump(config))
    return path


def env(tmp: Path, mlflow_db: Path) -> dict[str, str]:
    """Subprocess environment: the repository importable, its own MLflow store, two CPU threads at most."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), out.get("PYTHONPATH", "")])
    out["MLFLOW_TRACKING_URI"] = f"sqlite:///{mlflow_db}"
    out["OMP_NUM_THREADS"] = "1"
    out["JSONARGPARSE_DEPRECATION_WARNINGS"] = "off"
    out.pop("LOCAL_RANK", None)
    return out


def ddp_args(config: Path, ckpt_dir: Path, *extra: str) -> list[str]:
    """``gr_lightning fit`` on 2 CPU processes (DDP, gloo), saving every 2 steps (mid-epoch) into ``ckpt_dir``."""
    return ["-m", "gr_lightning", "fit", "--config", str(config), "--trainer.devices=2", "--trainer.strategy=ddp",
            f"--checkpoint.dirpath={ckpt_dir}", "--checkpoint.every_n_train_steps=2", "--test_after_fit=false",
            *extra]


def run(args: list[str], cwd: Path, environ: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python <args>`` in ``cwd``; the output is kept for assertion messages."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=timeout, check=False)


class KillAtStep(Callback):
    """SIGKILL this process (no cleanup, no final checkpoint) when training reaches ``step``.

    Args:
        step: Global step after which the process dies (checked at the end of each training batch,
            before ModelCheckpoint, which Lightning runs last, could save that step).

    """

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Die at the chosen step."""
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
