"""Training callbacks that are not in Lightning itself."""

from __future__ import annotations

import time

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback


class EpochTimer(Callback):
    """Log wall-clock seconds of each training epoch and each validation pass.

    Keys: ``time/train_epoch_s``, ``time/val_epoch_s``, ``time/epoch_s`` (train + its validation).
    """

    def __init__(self) -> None:
        super().__init__()
        self._train_start = self._val_start = 0.0
        self._train_s = self._val_s = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the epoch clock."""
        self._sync(pl_module)
        self._train_start, self._val_s = time.perf_counter(), 0.0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the validation clock."""
        self._sync(pl_module)
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the validation clock."""
        self._sync(pl_module)
        self._val_s += time.perf_counter() - self._val_start
        if not trainer.sanity_checking:
            pl_module.log("time/val_epoch_s", self._val_s)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the epoch clock; Lightning runs validation before this hook."""
        self._sync(pl_module)
        total = time.perf_counter() - self._train_start
        pl_module.log("time/train_epoch_s", total - self._val_s)
        pl_module.log("time/epoch_s", total)

    @staticmethod
    def _sync(pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            import torch

            torch.cuda.synchronize(pl_module.device)
