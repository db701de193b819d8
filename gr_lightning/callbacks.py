"""Training callbacks that are not in Lightning itself."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.fabric.utilities.throughput import _plugin_to_compute_dtype, get_available_flops
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import nn

from gr_lightning.batch import JaggedBatch
from gr_lightning.loss_log import is_logging_step


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA): the host clock then reads the device's time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        _synchronize(pl_module.device)
        self._train_start, self._val_s = time.perf_counter(), 0.0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the validation clock."""
        _synchronize(pl_module.device)
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the validation clock."""
        _synchronize(pl_module.device)
        self._val_s += time.perf_counter() - self._val_start
        if not trainer.sanity_checking:
            pl_module.log("time/val_epoch_s", self._val_s)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the epoch clock; Lightning runs validation before this hook."""
        _synchronize(pl_module.device)
        total = time.perf_counter() - self._train_start
        pl_module.log("time/train_epoch_s", total - self._val_s)
        pl_module.log("time/epoch_s", total)


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

    Reads the batch's lengths on the host; :func:`training_flops_of_counts` takes them as numbers.
    """
    lengths = batch.lengths.to(torch.int64)
    return training_flops_of_counts(pl_module, int(lengths.sum()), int((lengths * lengths).sum()),
                                    int((lengths > 0).sum()))


def training_flops_of_counts(pl_module: LightningModule, tokens: int, sum_sq_len: int, sequences: int) -> float:
    """Estimated training FLOPs of batches with these totals (linear in each, so steps' totals may be summed).

    The forward is the backbone (:func:`backbone_flops`) plus the sampled-softmax scores: every position
    with a next item against its positive and ``num_negatives + in_batch_negatives`` negatives, ``2 * D``
    each. Embedding lookups, norms and activations are not counted (they are memory-bound). The backward
    is twice the forward.

    Args:
        pl_module: A :class:`GRModule` (or any module with a ``backbone``).
        tokens: Events, ``sum_N``.
        sum_sq_len: ``sum_b L_b^2``.
        sequences: Non-empty sequences (each has one event without a next item).

    """
    flops = backbone_flops(pl_module.backbone, tokens, sum_sq_len)
    loss = getattr(pl_module, "loss_fn", None)
    embedding = getattr(pl_module, "item_embedding", None)
    if loss is not None and embedding is not None:
        scored = 1 + int(getattr(loss, "num_negatives", 0)) + int(getattr(loss, "in_batch_negatives", 0))
        flops += 2.0 * (tokens - sequences) * scored * embedding.embedding_dim
    return 3.0 * flops


class Throughput(Callback):
    """Log training samples/s, tokens/s, achieved TFLOP/s and MFU on every step that logs.

    Rates cover the steps since the previous logging step (``log_every_n_steps``), data loading included,
    validation excluded: the clock restarts at each epoch's first batch and after validation. The device
    is synchronised only where the clock starts or reads, so between logging steps the host queues work
    ahead of the GPU as it would without this callback (a per-step sync serialises host and device, which
    costs most where a step is short, e.g. a graphed backbone). The batches' lengths are summed on the
    device meanwhile and read once per interval.

    FLOPs follow :func:`training_flops_of_counts`. MFU is achieved FLOP/s over the device's peak dense
    FLOP/s for the run's precision (Lightning's table, e.g. 989 TFLOP/s for an H100 SXM in bf16), or over
    ``peak_flops`` when given; when neither is known (CPU) MFU is not logged at all rather than a made-up
    number.

    Keys: ``throughput/samples_per_s``, ``throughput/tokens_per_s`` (all ranks: per-device value times the
    world size, the sampler balances ranks), ``throughput/device_samples_per_s``,
    ``throughput/device_tokens_per_s``, ``throughput/device_tflops``, ``throughput/mfu``.

    Args:
        peak_flops: Peak FLOP/s of one device, overriding the lookup.

    """

    def __init__(self, peak_flops: float | None = None) -> None:
        super().__init__()
        if peak_flops is not None and peak_flops <= 0:
            raise ValueError(f"peak_flops must be positive, got {peak_flops}")
        self.peak_flops = peak_flops
        self._available: float | None = None
        self._start: float | None = None  # host clock where the interval began; None: restart at the next batch
        self._samples = self._tokens = 0
        self._lengths: torch.Tensor | None = None  # (2,) int64 on the batches' device: sum L^2, non-empty sequences

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Resolve the device's peak FLOP/s once."""
        self._available = self.peak_flops
        if self._available is None and trainer.strategy.root_device.type != "cpu":
            dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
            found = get_available_flops(trainer.strategy.root_device, dtype)
            self._available = float(found) if found else None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Restart the interval (epoch boundaries are not training time)."""
        self._start = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Do not count a mid-epoch validation as training time."""
        self._start = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Start the clock after a restart."""
        if self._start is None:
            self._restart(pl_module.device)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Count the batch; on a logging step, read the interval's clock and log its rates."""
        if not isinstance(batch, JaggedBatch) or self._start is None:
            return
        lengths = batch.lengths.to(torch.int64)  # (B,)
        counts = torch.stack([(lengths * lengths).sum(), (lengths > 0).sum()])  # (2,) stays on the device
        self._lengths = counts if self._lengths is None else self._lengths + counts
        self._samples += batch.batch_size
        self._tokens += batch.items.numel()
        if not is_logging_step(trainer):
            return
        _synchronize(pl_module.device)
        seconds = time.perf_counter() - self._start
        sum_sq, sequences = self._lengths.tolist()
        flops = training_flops_of_counts(pl_module, self._tokens, sum_sq, sequences)
        samples, tokens = self._samples, self._tokens
        self._restart(pl_module.device, synced=True)
        if seconds <= 0:
            return
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
        # Host tensors: a Python float would become a device tensor, a blocking copy per metric.
        pl_module.log_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()}, on_step=True,
                           on_epoch=False, batch_size=batch.batch_size)

    def _restart(self, device: torch.device, synced: bool = False) -> None:
        if not synced:
            _synchronize(device)
        self._start = time.perf_counter()
        self._samples = self._tokens = 0
        self._lengths = None
