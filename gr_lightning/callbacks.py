"""Training callbacks that are not in Lightning itself."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import torch
from lightning.fabric.utilities.throughput import _plugin_to_compute_dtype, get_available_flops
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import nn

from gr_lightning.batch import JaggedBatch


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
            torch.cuda.synchronize(pl_module.device)


def backbone_flops(backbone: nn.Module, tokens: int, sum_sq_len: int) -> float:
    """Forward FLOPs of a zoo backbone on a batch of ``tokens`` events whose lengths' squares sum to ``sum_sq_len``.

    Dense part: ``2 * tokens * (weights of every nn.Linear)``. Attention, per sequence of length L with its
    causal half: HSTU blocks (modules with ``num_heads``, ``attention_dim`` and ``linear_dim``) do
    ``2 * H * (d_qk + d_v) * L^2 / 2`` (the paper's formula, as in the kernel benchmarks); other modules with
    ``num_heads`` (softmax attention of the backbone width D, e.g. SASRec) do ``2 * 2 * D * L^2 / 2``.

    Args:
        backbone: The sequence encoder.
        tokens: Events in the batch (``sum_N``).
        sum_sq_len: ``sum_b L_b^2``.

    Returns:
        Estimated forward FLOPs.

    """
    # Shapes from in/out_features, not weight.numel(): under FSDP a weight outside its forward is a flat shard.
    linear = sum(m.in_features * m.out_features for m in backbone.modules() if isinstance(m, nn.Linear))
    flops = 2.0 * tokens * linear
    width = int(getattr(backbone, "dim", 0))
    for module in backbone.modules():
        heads = getattr(module, "num_heads", None)
        if not isinstance(heads, int) or module is backbone:
            continue
        d_qk, d_v = getattr(module, "attention_dim", None), getattr(module, "linear_dim", None)
        if isinstance(d_qk, int) and isinstance(d_v, int):
            flops += 2.0 * heads * (d_qk + d_v) * sum_sq_len / 2
        else:
            flops += 2.0 * 2 * width * sum_sq_len / 2
    return flops


def training_flops(pl_module: LightningModule, batch: JaggedBatch) -> float:
    """Estimated FLOPs of one training step (forward + backward = 3x forward) of a :class:`GRModule`.

    The forward is the backbone (:func:`backbone_flops`) plus the sampled-softmax scores: every position
    with a next item against its positive and ``num_negatives + in_batch_negatives`` negatives, ``2 * D``
    each. Embedding lookups, norms and activations are not counted (they are memory-bound).
    """
    lengths = batch.lengths.to(torch.int64)
    tokens = int(lengths.sum())
    flops = backbone_flops(pl_module.backbone, tokens, int((lengths * lengths).sum()))
    loss = getattr(pl_module, "loss_fn", None)
    embedding = getattr(pl_module, "item_embedding", None)
    if loss is not None and embedding is not None:
        scored = 1 + int(getattr(loss, "num_negatives", 0)) + int(getattr(loss, "in_batch_negatives", 0))
        positions = tokens - int((lengths > 0).sum())
        flops += 2.0 * positions * scored * embedding.embedding_dim
    return 3.0 * flops


class Throughput(Callback):
    """Log training samples/s, tokens/s, achieved TFLOP/s and MFU over a sliding window of steps.

    Time runs from one training batch's end to the next (data loading included; the first batch of an
    epoch counts from its start), so validation is excluded. FLOPs follow :func:`training_flops`. MFU is
    achieved FLOP/s over the device's peak dense FLOP/s for the run's precision (Lightning's table, e.g.
    989 TFLOP/s for an H100 SXM in bf16), or over ``peak_flops`` when given; when neither is known (CPU)
    MFU is not logged at all rather than a made-up number.

    Keys: ``throughput/samples_per_s``, ``throughput/tokens_per_s`` (all ranks: per-device value times the
    world size, the sampler balances ranks), ``throughput/device_samples_per_s``,
    ``throughput/device_tokens_per_s``, ``throughput/device_tflops``, ``throughput/mfu``.

    Args:
        window: Steps averaged (at least 1).
        peak_flops: Peak FLOP/s of one device, overriding the lookup.

    """

    def __init__(self, window: int = 20, peak_flops: float | None = None) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if peak_flops is not None and peak_flops <= 0:
            raise ValueError(f"peak_flops must be positive, got {peak_flops}")
        self.window = window
        self.peak_flops = peak_flops
        self._steps: deque[tuple[float, int, int, float]] = deque(maxlen=window)
        self._last_end: float | None = None
        self._available: float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Resolve the device's peak FLOP/s once."""
        self._available = self.peak_flops
        if self._available is None and trainer.strategy.root_device.type != "cpu":
            dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
            found = get_available_flops(trainer.strategy.root_device, dtype)
            self._available = float(found) if found else None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Restart the window clock (validation and epoch boundaries are not training time)."""
        self._last_end = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Do not count a mid-epoch validation as training time."""
        self._last_end = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Start the clock when no batch ended right before this one."""
        if self._last_end is None:
            EpochTimer._sync(pl_module)
            self._last_end = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Record the step and log the window's rates."""
        EpochTimer._sync(pl_module)
        now = time.perf_counter()
        start, self._last_end = self._last_end if self._last_end is not None else now, now
        if not isinstance(batch, JaggedBatch):
            return
        self._steps.append((now - start, batch.batch_size, int(batch.items.numel()), training_flops(pl_module, batch)))
        seconds = sum(s[0] for s in self._steps)
        if seconds <= 0:
            return
        samples, tokens, flops = (sum(s[i] for s in self._steps) for i in (1, 2, 3))
        world = trainer.world_size
        metrics = {
            "throughput/device_samples_per_s": samples / seconds,
            "throughput/device_tokens_per_s": tokens / seconds,
            "throughput/samples_per_s": world * samples / seconds,
            "throughput/tokens_per_s": world * tokens / seconds,
            "throughput/device_tflops": flops / seconds / 1e12,
        }
        if self._available:
            metrics["throughput/mfu"] = flops / seconds / self._available
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=batch.batch_size)
