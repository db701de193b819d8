"""Training-loss logging that costs the host almost nothing on most steps.

Two costs of ``self.log`` show next to a short training step (a graphed HSTU step is launched in a few
milliseconds):
- every call costs host time, because Lightning moves the logged result's state to the value's device
  by walking all of its attributes (0.5 ms a call on the CPU machine:
  ``benchmarks/results/lightning_overhead_cpu.json``);
- a progress-bar value logged per step is turned into a number after every batch, so the host waits
  for the GPU each step (Lightning issue #21232).

:class:`TrainingLossLogging` calls ``self.log`` only on the steps whose metrics reach the logger
(``train/loss``, every ``log_every_n_steps``) and once per epoch: the epoch's mean loss
(``train/loss_epoch``, on the progress bar), accumulated on the device in between.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from torch import Tensor


def is_logging_step(trainer: Trainer) -> bool:
    """Whether the current training step's logged metrics go to the logger (every ``log_every_n_steps``).

    Lightning's own test, private to its logger connector; right for any hook of the step up to
    ``on_train_batch_end``, since Lightning applies it right after that hook.
    """
    return trainer._logger_connector.should_update_logs


class TrainingLossLogging:
    """LightningModule mixin: ``self.log_training_loss(loss, batch_size)`` in ``training_step`` logs the loss.

    ``train/loss`` is logged on logging steps only; the epoch's mean, weighted by batch size, at the epoch's
    end as ``train/loss_epoch`` (progress bar too). The running sum is kept in checkpoints, so a mid-epoch
    resume logs the same epoch mean. Put it before ``LightningModule`` among the bases; a subclass that
    overrides ``on_train_epoch_end``, ``on_save_checkpoint`` or ``on_load_checkpoint`` must call ``super()``.
    """

    _CHECKPOINT_KEY = "training_loss_log"

    def log_training_loss(self, loss: Tensor, batch_size: int) -> None:
        """Add a step's loss to the epoch's mean; log it when the step's metrics reach the logger."""
        weighted = loss.detach() * batch_size
        total = getattr(self, "_loss_sum", None)
        if total is not None and total.device != weighted.device:  # restored from a checkpoint
            total = total.to(weighted.device)
        self._loss_sum = weighted if total is None else total + weighted  # stays on the device: no sync
        self._loss_weight = getattr(self, "_loss_weight", 0) + batch_size
        if self._trainer is not None and is_logging_step(self.trainer):
            self.log("train/loss", loss, batch_size=batch_size)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training loss and start the next epoch's."""
        if getattr(self, "_loss_sum", None) is not None:
            self.log("train/loss_epoch", self._loss_sum / self._loss_weight, prog_bar=True)
        self._loss_sum, self._loss_weight = None, 0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the epoch's running loss sum and weight."""
        total = getattr(self, "_loss_sum", None)
        checkpoint[self._CHECKPOINT_KEY] = {"sum": None if total is None else total.detach().cpu(),
                                            "weight": getattr(self, "_loss_weight", 0)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore them (checkpoints written before they were saved restart the epoch's mean)."""
        state = checkpoint.get(self._CHECKPOINT_KEY) or {"sum": None, "weight": 0}
        self._loss_sum, self._loss_weight = state["sum"], int(state["weight"])
