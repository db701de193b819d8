"""The training loss reaches the logger on logging steps and the progress bar once per epoch, with no
``self.log`` call on the other steps."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
from lightning.pytorch.loggers import Logger

from gr_lightning.data import RetrievalDataModule, Synthetic
from gr_lightning.loss_log import is_logging_step
from gr_lightning.module import GRModule
from gr_lightning.zoo.hstu import HSTU


class _MemoryLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


class _Steps(L.Callback):
    """Each step's loss and batch size, whether it logs, and the module's ``self.log`` calls during it."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        calls = []
        original = pl_module.log
        pl_module.log = lambda name, *a, **k: (calls.append(name), original(name, *a, **k))[1]
        self.steps.append({"logs": is_logging_step(trainer), "calls": calls, "size": batch.batch_size,
                           "epoch": trainer.current_epoch, "restore": original})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = self.steps[-1]
        pl_module.log = step.pop("restore")
        step["loss"] = float(outputs["loss"])


def test_loss_is_logged_on_logging_steps_and_its_epoch_mean_once_per_epoch(tmp_path):
    data = RetrievalDataModule(Synthetic(num_users=60, num_items=100, min_len=5, max_len=20), max_seq_len=16,
                               batch_size=16, cache_dir=str(tmp_path / "cache"))  # batches of 16, 16, 16, 12
    backbone = partial(HSTU, num_blocks=1, num_heads=2, attention_dim=4, linear_dim=6, kernel="pytorch")
    model = GRModule(backbone, num_items=data.num_items, max_seq_len=16, embedding_dim=8, num_negatives=10)
    logger, steps = _MemoryLogger(), _Steps()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        log_every_n_steps=3, callbacks=[steps])
    trainer.fit(model, datamodule=data)
    assert [s["logs"] for s in steps.steps] == [False, False, True] * 2 + [False, False]
    for s in steps.steps:
        assert s["calls"] == (["train/loss"] if s["logs"] else []), s
    logged = [(step, m["train/loss"]) for step, m in logger.rows if "train/loss" in m]
    assert [step for step, _ in logged] == [2, 5]
    assert [v for _, v in logged] == pytest.approx([steps.steps[2]["loss"], steps.steps[5]["loss"]], rel=1e-6)
    means = [m["train/loss_epoch"] for _, m in logger.rows if "train/loss_epoch" in m]
    want = []
    for epoch in (0, 1):
        mine = [s for s in steps.steps if s["epoch"] == epoch]
        want.append(sum(s["loss"] * s["size"] for s in mine) / sum(s["size"] for s in mine))
    assert means == pytest.approx(want, rel=1e-6)
    assert trainer.progress_bar_metrics["train/loss_epoch"] == pytest.approx(want[-1], rel=1e-6)
