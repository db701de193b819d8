"""Scale-out benchmark: DDP vs FSDP, bf16-mixed vs 32-true, on 1, 2 and 4 GPUs, with the real GRModule and Trainer.

Workload (ML-20M scale): 1M items with Zipf popularity, histories of 20..200 events (log-normal lengths,
median 70, like MovieLens-20M's heavy tail cut at 200), D=256, HSTU with 8 blocks of 2 heads x 128
(``heads x head_dim = D`` as in every HSTU config; 128-wide heads are the tensor-core-friendly width the
fused kernels are tuned for, and attention FLOPs depend only on ``heads x head_dim``), 128 negatives,
batch 128 per GPU. Each rank generates its own batches from ``(seed, rank, step)`` in numpy, so every
configuration trains on exactly the same data, with the same initial weights and negative streams.

One configuration per invocation (one JSON under ``--out``):

    python benchmarks/scale_out.py --strategy fsdp --precision bf16-mixed --devices 4 --out r.json

records per rank: CUDA-synchronised step times (the first ``--warmup`` steps excluded), samples/s,
tokens/s, TFLOP/s and MFU, ``torch.cuda.max_memory_allocated``, the train loss of every step, and the
bytes the item-embedding table's parameter, gradient and AdamW state take on that GPU.

``--sweep`` runs the matrix in subprocesses, one after the other, stops starting new ones when
``--max-minutes`` would be exceeded, and merges everything into one JSON with the DDP-vs-FSDP
comparisons (loss curves against the noise references below; embedding memory):

    NCCL_NVLS_ENABLE=0 python benchmarks/scale_out.py --sweep --max-minutes 8 \
        --out benchmarks/results/scale_out_h200.json

Every step also records where its time went: its phases (forward, backward with the wait for its
gradient reduction, optimizer; device time from CUDA events recorded at Lightning's hooks), and the
host time outside the step (fetching and moving the next batch, loop bookkeeping), which samples/s
leaves out and ``samples_per_s_incl_outside`` counts.

``--profile-steps K`` runs K more steps after the timed ones under ``torch.profiler`` on rank 0 and
stores a breakdown in the JSON: the top ops and kernels by self device time, the share of device time
in NCCL kernels, the NCCL time no compute kernel overlaps, and how long the GPU sat idle per step.
Profiled steps never enter the throughput numbers or the loss curve:

    python benchmarks/scale_out.py --devices 1 --precision bf16-mixed --profile-steps 5 --out p.json

DDP's gradient buckets (``--bucket-cap-mb``) and a compressing comm hook (``--ddp-comm-hook bf16``),
and FSDP's parameter dtype (``--param-dtype``), are options recorded in the run's config, with what
DDP/FSDP actually used read back from the wrapped model.

In a sweep, ``--noise-runs`` (on by default, lowest priority) reruns DDP with a different bucket size:
same seed, data and math, only the bucket boundaries (and so the float summation order of the
all-reduce over more than 2 ranks) and the run-to-run nondeterminism of atomic-add kernels differ.
Its loss-curve gap to the first DDP run is the chaos floor of training itself; ``compare`` judges
FSDP's gap to DDP against it and against DDP's bf16-vs-fp32 gap (see :func:`compare`).

``--smoke`` shrinks everything and runs on CPU processes (gloo) for the tests. NVLink multicast
(NVLS) is switched off unless ``NCCL_NVLS_ENABLE`` is already set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # before torch.distributed starts NCCL (children inherit it)

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from gr_lightning.batch import JaggedBatch
from gr_lightning.callbacks import training_flops
from gr_lightning.module import GRModule
from gr_lightning.strategies import BackboneFSDPStrategy
from gr_lightning.zoo.hstu import HSTU

# This file is both a script (``python benchmarks/scale_out.py``: its folder is already on sys.path) and a module
# that tests load by file path. benchmarks/ is not a package: put its folder on sys.path in both cases, so the
# helper modules beside this file import by their top-level names.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loss_curves import compare, noise_references
from _profile_summary import profile_breakdown

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("bf16-mixed", "32-true")
#: ``--ddp-comm-hook``: torch's hooks that compress each gradient bucket before the all-reduce (NCCL only).
COMM_HOOKS = {"none": None, "bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}
#: ``--param-dtype``: FSDP's gathered-parameter and reduction dtype (BackboneFSDPStrategy's ``param_dtype``).
PARAM_DTYPES = ("float32", "bfloat16")
#: ``main``: a configuration of the matrix; ``reorder``: DDP rerun with other bucket boundaries (noise floor).
VARIANTS = ("main", "reorder")
#: torch's DistributedDataParallel bucket size when none is given, MiB.
TORCH_DEFAULT_BUCKET_CAP_MB = 25.0
#: Step phases: between which of StepRecorder's marks (Lightning hooks) each one runs.
PHASES = {"forward": ("start", "before_backward"),  # training_step (loss included) and zero_grad
          "backward": ("before_backward", "after_backward"),  # autograd and the wait for the gradient reduction
          "between": ("after_backward", "before_optimizer_step"),  # unscaling/clipping: Lightning's bookkeeping
          "optimizer": ("before_optimizer_step", "end")}  # AdamW's update and the loop's end-of-step work

#: The GPU workload of the issue.
WORKLOAD = {"num_items": 1_000_000, "zipf": 1.0, "min_len": 20, "median_len": 70, "max_len": 200, "dim": 256,
            "blocks": 8, "heads": 2, "head_dim": 128, "batch_size": 128, "num_negatives": 128, "dropout": 0.2,
            "lr": 1e-3, "warmup": 10, "steps": 40}
#: The CPU smoke workload (tests): the same code path at toy sizes.
SMOKE = {"num_items": 2000, "zipf": 1.0, "min_len": 3, "median_len": 10, "max_len": 24, "dim": 32, "blocks": 2,
         "heads": 2, "head_dim": 16, "batch_size": 8, "num_negatives": 16, "dropout": 0.2, "lr": 1e-3, "warmup": 2,
         "steps": 4}


# --- data ----------------------------------------------------------------------------------------------


class ZipfHistories(Dataset):
    """Batches of synthetic histories for one rank, generated from ``(seed, rank, step)`` (nothing cached).

    Items are drawn by Zipf popularity ``p(r) ~ 1 / r^zipf`` over popularity ranks, which a fixed random
    permutation maps to item ids (popular rows are spread over the table, as in real catalogues).
    Lengths are log-normal (sigma 1) around ``median_len``, clipped to ``[min_len, max_len]``; timestamps
    increase by exponential gaps (mean 6 hours).

    Args:
        workload: Sizes (see :data:`WORKLOAD`).
        seed: Base seed.
        rank: Whose batches.
        num_steps: Length of the dataset, in batches.

    """

    def __init__(self, workload: dict[str, Any], seed: int, rank: int, num_steps: int) -> None:
        self.w, self.seed, self.rank, self.num_steps = workload, seed, rank, num_steps
        self._cdf: np.ndarray | None = None
        self._ids: np.ndarray | None = None

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cdf is None:  # built lazily: once per process (DataLoader workers included)
            weights = np.arange(1, self.w["num_items"] + 1, dtype=np.float64) ** -self.w["zipf"]
            self._cdf = np.cumsum(weights) / weights.sum()
            self._ids = np.random.default_rng(self.seed).permutation(self.w["num_items"]) + 1
        return self._cdf, self._ids

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, step: int) -> JaggedBatch:
        cdf, ids = self._tables()
        rng = np.random.default_rng([self.seed, self.rank, step])
        w = self.w
        lengths = rng.lognormal(math.log(w["median_len"]), 1.0, w["batch_size"])
        lengths = np.clip(np.rint(lengths), w["min_len"], w["max_len"]).astype(np.int64)  # (B,)
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        popularity = np.minimum(np.searchsorted(cdf, rng.random(total), side="right"), cdf.size - 1)  # (sum_N,)
        clock = np.cumsum(rng.exponential(6 * 3600.0, total).astype(np.int64) + 1)  # (sum_N,)
        start = 1_300_000_000 + rng.integers(0, 10**8, lengths.size)  # (B,)
        # Per-sequence clocks: subtract the running total at each sequence's start.
        timestamps = clock - np.repeat(clock[offsets[:-1]] - start, lengths)  # (sum_N,)
        return JaggedBatch(items=torch.from_numpy(ids[popularity]), timestamps=torch.from_numpy(timestamps),
                           offsets=torch.from_numpy(offsets), max_len=int(lengths.max()))


def _whole(batch: JaggedBatch) -> JaggedBatch:
    """``collate_fn``: the dataset already returns whole batches."""
    return batch


class ZipfDataModule(L.LightningDataModule):
    """Serves each rank its own :class:`ZipfHistories` (no distributed sampler: the data is rank-keyed)."""

    def __init__(self, workload: dict[str, Any], seed: int, num_steps: int, workers: int, pin: bool) -> None:
        super().__init__()
        self.workload, self.seed, self.num_steps, self.workers, self.pin = workload, seed, num_steps, workers, pin

    def train_dataloader(self) -> DataLoader:
        """This rank's batches."""
        data = ZipfHistories(self.workload, self.seed, self.trainer.global_rank, self.num_steps)
        return DataLoader(data, batch_size=None, shuffle=False, collate_fn=_whole, num_workers=self.workers,
                          pin_memory=self.pin, persistent_workers=False)


# --- measurement ----------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embedding_bytes(weight: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the item table on this rank: its (local) parameter, gradient and optimizer state tensors.

    Under FSDP the parameter outside a forward is this rank's flat shard, so these are per-GPU numbers.
    """
    state = optimizer.state.get(weight, {})
    sizes = {
        "param": weight.numel() * weight.element_size(),
        "grad": 0 if weight.grad is None else weight.grad.numel() * weight.grad.element_size(),
        "optimizer": sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t)),
    }
    sizes["total"] = sum(sizes.values())
    return sizes


class _PhaseClock:
    """Marks at Lightning's hooks inside one step, read back as phase durations once the step has synchronised.

    On CUDA the marks are CUDA events on the current stream (device time, no synchronisation inside the
    step); on CPU, where every op runs synchronously, host clock readings.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: dict[str, Any] = {}

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()

    def read(self) -> dict[str, float] | None:
        """Milliseconds per phase (None when a hook did not run, e.g. under manual optimisation)."""
        if not all(mark in self.marks for pair in PHASES.values() for mark in pair):
            return None
        if self.device.type == "cuda":
            return {phase: self.marks[a].elapsed_time(self.marks[b]) for phase, (a, b) in PHASES.items()}
        return {phase: (self.marks[b] - self.marks[a]) * 1e3 for phase, (a, b) in PHASES.items()}


class StepRecorder(L.Callback):
    """Per-rank step times, phases, losses, sizes, FLOPs and memory; rank 0 writes every rank's record as JSON.

    Steps ``[0, warmup)`` are warm-up, ``[warmup, warmup + steps)`` are timed, and the ``profile_steps``
    after them run under ``torch.profiler`` on rank 0 (recorded apart, never in the throughput).

    Args:
        warmup: Leading steps left out of the timing (and of the peak-memory window).
        steps: Timed steps after the warm-up.
        out: Where rank 0 writes the result.
        meta: Configuration and environment written with the records.
        profile_steps: Steps to profile after the timed ones.
        profile_trace: Where rank 0 exports the profiled steps' Chrome trace (None: not exported).

    """

    def __init__(self, warmup: int, steps: int, out: Path, meta: dict[str, Any], profile_steps: int = 0,
                 profile_trace: Path | None = None) -> None:
        super().__init__()
        self.warmup, self.timed_end, self.out, self.meta = warmup, warmup + steps, out, meta
        self.profile_steps, self.profile_trace = profile_steps, profile_trace
        self.steps: list[dict[str, Any]] = []
        self.profiled: list[dict[str, Any]] = []
        self.embedding: dict[str, int] = {}
        self.profile: dict[str, Any] | None = None
        self._start = 0.0
        self._last_end: float | None = None
        self._peak: tuple[int | None, int | None] = (None, None)
        self._phases: _PhaseClock | None = None
        self._profiler: torch.profiler.profile | None = None
        self._profile_began = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Start the step clock (synchronised, so it excludes earlier queued work)."""
        _sync(pl_module.device)
        if batch_idx == self.warmup and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = time.perf_counter()
        self._phases = _PhaseClock(pl_module.device)
        self._phases.mark("start")

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        """Forward (and ``zero_grad``) done."""
        if self._phases is not None:
            self._phases.mark("before_backward")

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Backward done, including the wait for DDP's all-reduce / FSDP's reduce-scatter."""
        if self._phases is not None:
            self._phases.mark("after_backward")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's update follows."""
        if self._phases is not None:
            self._phases.mark("before_optimizer_step")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Stop the clock and record the step; start or finish the profiled window; at the end, the table's bytes."""
        device = pl_module.device
        if self._phases is not None:
            self._phases.mark("end")
        _sync(device)
        now = time.perf_counter()
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        lengths = batch.lengths
        record = {"seconds": now - self._start, "loss": float(loss), "samples": batch.batch_size,
                  "tokens": int(batch.items.numel()), "max_len": batch.max_len,
                  "sum_sq_len": int((lengths * lengths).sum()), "flops": training_flops(pl_module, batch),
                  # Host time since the previous step ended: fetching and moving this batch, loop bookkeeping.
                  "outside_s": None if self._last_end is None else self._start - self._last_end,
                  "phases_ms": None if self._phases is None else self._phases.read()}
        (self.steps if batch_idx < self.timed_end else self.profiled).append(record)
        self._phases = None
        if batch_idx == self.timed_end - 1 and device.type == "cuda":  # before profiling can add to the peak
            self._peak = (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device))
        if trainer.global_step >= trainer.max_steps:  # gradients and optimizer state are still in place
            self.embedding = embedding_bytes(pl_module.item_embedding.weight, trainer.optimizers[0])
        if trainer.global_rank == 0 and self.profile_steps:
            if batch_idx == self.timed_end - 1:
                self._start_profile(device)
            elif batch_idx == self.timed_end + self.profile_steps - 1:
                self._finish_profile(device)
        self._last_end = time.perf_counter()

    def _start_profile(self, device: torch.device) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.start()
        self._profile_began = time.perf_counter()  # after start(): its set-up (CUPTI) is not a step's time

    def _finish_profile(self, device: torch.device) -> None:
        _sync(device)
        wall_s = time.perf_counter() - self._profile_began
        self._profiler.stop()
        if self.profile_trace is not None:
            self.profile_trace.parent.mkdir(parents=True, exist_ok=True)
            self._profiler.export_chrome_trace(str(self.profile_trace))
        self.profile = {"rank": 0, "activities": ["cpu", "cuda"] if device.type == "cuda" else ["cpu"],
                        **profile_breakdown(self._profiler.events(), wall_s, self.profile_steps,
                                            on_device=device.type == "cuda")}
        self._profiler = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather every rank's record on rank 0 and write the JSON."""
        mine = {"rank": trainer.global_rank, "steps": self.steps, "profiled_steps": self.profiled,
                "embedding_bytes": self.embedding, "peak_allocated_bytes": self._peak[0],
                "peak_reserved_bytes": self._peak[1]}
        records = [mine]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            records = [None] * dist.get_world_size()
            dist.all_gather_object(records, mine)
        if trainer.global_rank == 0:
            result = {**self.meta, "effective": _effective_settings(trainer), "ranks": records,
                      "summary": summarise(records, self.warmup, self.meta), "profile": self.profile}
            if self.profile is not None:
                self.profile["timed_median_step_ms"] = result["summary"]["median_step_s"] * 1e3
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(result, indent=1))


def _effective_settings(trainer: L.Trainer) -> dict[str, Any]:
    """What the wrapped model really uses: DDP's bucket cap, bucket sizes and comm hook; FSDP's dtypes."""
    model = trainer.strategy.model
    if isinstance(model, DistributedDataParallel):
        # DDP exposes its comm hook and rebuilt bucket sizes only through its logging data (a private method).
        # Buckets are rebuilt in gradient-ready order after the first step; before that all is one bucket.
        data = model._get_ddp_logging_data()
        return {"ddp_bucket_cap_bytes": data.get("bucket_cap_bytes"),
                "ddp_bucket_sizes": data.get("rebuilt_bucket_sizes", data.get("bucket_sizes")),
                "ddp_comm_hook": data.get("comm_hook")}
    if isinstance(trainer.strategy, FSDPStrategy):
        mixed = trainer.strategy.mixed_precision_config
        if mixed is None:
            return {"fsdp_param_dtype": "the module's (no MixedPrecision)"}
        return {"fsdp_param_dtype": str(mixed.param_dtype), "fsdp_reduce_dtype": str(mixed.reduce_dtype)}
    return {}


def summarise(records: list[dict[str, Any]], warmup: int, meta: dict[str, Any]) -> dict[str, Any]:
    """Throughput, memory, phases and the mean loss curve from the per-rank records (timed steps only)."""
    timed = [r["steps"][warmup:] for r in records]
    if not all(timed):
        raise ValueError(f"no timed steps: every rank needs more than warmup={warmup} steps")
    # The timed window of a rank is the sum of its synchronised step times; the run is as slow as its slowest rank.
    window = max(sum(s["seconds"] for s in steps) for steps in timed)
    with_outside = max(sum(s["seconds"] + (s.get("outside_s") or 0.0) for s in steps) for steps in timed)
    samples = sum(s["samples"] for steps in timed for s in steps)
    tokens = sum(s["tokens"] for steps in timed for s in steps)
    flops = sum(s["flops"] for steps in timed for s in steps)
    world = len(records)
    peak = [r["peak_allocated_bytes"] for r in records]
    curve = [float(np.mean([r["steps"][i]["loss"] for r in records])) for i in range(len(records[0]["steps"]))]
    outside = [[s["outside_s"] for s in steps if s.get("outside_s") is not None] for steps in timed]
    phases = [[s["phases_ms"] for s in steps if s.get("phases_ms")] for steps in timed]
    summary = {
        "world_size": world,
        "median_step_s": float(max(np.median([s["seconds"] for s in steps]) for steps in timed)),
        "samples_per_s": samples / window,
        "samples_per_s_per_gpu": samples / window / world,
        # Also counting the host time between steps (loading and moving the next batch), which the above leaves out.
        "samples_per_s_incl_outside": samples / with_outside,
        "median_outside_step_ms": float(max(np.median(o) for o in outside)) * 1e3 if all(outside) else None,
        # Per phase, the slowest rank's median over the timed steps (device time on CUDA).
        "median_phase_ms": ({phase: float(max(np.median([p[phase] for p in ph]) for ph in phases)) for phase in PHASES}
                            if all(phases) else None),
        "tokens_per_s": tokens / window,
        "tflops_per_gpu": flops / window / world / 1e12,
        "mfu": None,
        "peak_allocated_gib_max": None if None in peak else max(peak) / 2**30,
        "embedding_gib_per_gpu": max(r["embedding_bytes"].get("total", 0) for r in records) / 2**30,
        "loss_curve": curve,  # mean over ranks of each step's loss (the global objective)
    }
    if meta.get("peak_flops_per_gpu"):
        summary["mfu"] = summary["tflops_per_gpu"] * 1e12 / meta["peak_flops_per_gpu"]
    return summary


# --- one configuration ----------------------------------------------------------------------------------


def _environment(accelerator: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__,
        "numpy": np.__version__, "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
        "command": shlex.join([sys.executable, *sys.argv]),
    }
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                           cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    if accelerator == "cuda":
        env.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   nccl=str(torch.cuda.nccl.version()), gpus_visible=torch.cuda.device_count())
    else:
        env["device"] = "cpu"
    return env


def run_one(args: argparse.Namespace) -> None:
    """Train one configuration for ``warmup + steps (+ profile_steps)`` steps and write its JSON (rank 0)."""
    workload = dict(SMOKE if args.smoke else WORKLOAD)
    workload.update({k: v for k, v in vars(args).items() if k in workload and v is not None})
    accelerator = "cpu" if args.smoke else "cuda"
    if args.strategy == "fsdp" and accelerator == "cpu":
        raise SystemExit("FSDP needs CUDA devices (torch refuses CPU FSDP); the smoke mode runs ddp only")
    if accelerator == "cuda" and torch.cuda.device_count() < args.devices:
        raise SystemExit(f"--devices {args.devices} but only {torch.cuda.device_count()} CUDA devices are visible")
    if accelerator == "cuda":
        torch.set_float32_matmul_precision(args.matmul_precision)
    backend = "gloo" if accelerator == "cpu" else "nccl"
    if args.strategy == "ddp":
        # bucket_cap_mb goes through DDPStrategy's kwargs to DistributedDataParallel; absent, torch's default.
        buckets = {} if args.bucket_cap_mb is None else {"bucket_cap_mb": args.bucket_cap_mb}
        strategy = DDPStrategy(process_group_backend=backend, ddp_comm_hook=COMM_HOOKS[args.ddp_comm_hook], **buckets)
    else:
        strategy = BackboneFSDPStrategy(activation_checkpointing=args.activation_checkpointing,
                                        shard_embeddings=args.shard_embeddings, param_dtype=args.param_dtype,
                                        process_group_backend=backend)
    total_steps = workload["warmup"] + workload["steps"] + args.profile_steps
    L.seed_everything(args.seed, workers=True, verbose=False)
    backbone = partial(HSTU, num_blocks=workload["blocks"], num_heads=workload["heads"],
                       attention_dim=workload["head_dim"], linear_dim=workload["head_dim"],
                       dropout=workload["dropout"], kernel=args.kernel)
    # Built on the CPU from the same seed under every strategy, so all configurations start from equal weights.
    model = GRModule(backbone, num_items=workload["num_items"], max_seq_len=workload["max_len"],
                     embedding_dim=workload["dim"], num_negatives=workload["num_negatives"],
                     optimizer=partial(torch.optim.AdamW, lr=workload["lr"], betas=(0.9, 0.98), weight_decay=0.0),
                     compile_backbone=args.compile)
    meta = {
        "benchmark": "scale_out",
        "config": {"strategy": args.strategy, "precision": args.precision, "devices": args.devices,
                   "kernel": args.kernel, "compile": args.compile, "seed": args.seed, "smoke": args.smoke,
                   "activation_checkpointing": args.activation_checkpointing,
                   "shard_embeddings": args.shard_embeddings, "matmul_precision": args.matmul_precision,
                   "variant": args.variant, "bucket_cap_mb": args.bucket_cap_mb, "ddp_comm_hook": args.ddp_comm_hook,
                   "param_dtype": args.param_dtype, "profile_steps": args.profile_steps},
        "workload": workload,
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_table_bytes_fp32": model.item_embedding.weight.numel() * 4,
        "env": _environment(accelerator),
        "peak_flops_per_gpu": None,
    }
    if accelerator == "cuda":
        dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float32
        if dtype == torch.float32 and args.matmul_precision != "highest":
            dtype = "tf32"
        meta["peak_flops_per_gpu"] = get_available_flops(torch.device("cuda", 0), dtype)
    recorder = StepRecorder(workload["warmup"], workload["steps"], Path(args.out), meta, args.profile_steps,
                            None if args.profile_trace is None else Path(args.profile_trace))
    trainer = L.Trainer(accelerator=accelerator, devices=args.devices, strategy=strategy, precision=args.precision,
                        max_steps=total_steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[recorder],
                        default_root_dir=tempfile.mkdtemp(prefix="scale_out_"))
    data = ZipfDataModule(workload, args.seed, total_steps, args.workers, pin=accelerator == "cuda")
    trainer.fit(model, datamodule=data)
    # Lightning leaves the process group up. Left to interpreter exit, gloo's threads were seen to
    # abort the process ("terminate called without an active exception", exit -6) after a profiled
    # CPU run had written its result; end it here, while the ranks are still in step.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# --- the sweep ------------------------------------------------------------------------------------------


class RunSpec(NamedTuple):
    """One run of the sweep."""

    precision: str
    devices: int
    strategy: str
    variant: str = "main"

    @property
    def name(self) -> str:
        """File stem of its JSON."""
        suffix = "" if self.variant == "main" else f"_{self.variant}"
        return f"{self.strategy}_{self.precision}_{self.devices}gpu{suffix}"


def sweep_order(precisions: list[str], devices: list[int], strategies: list[str],
                noise_runs: bool = False) -> list[RunSpec]:
    """The runs by priority, so a time budget cuts the least informative ones.

    First each precision in turn, device counts ascending, DDP before FSDP (FSDP on one GPU excepted);
    then, with ``noise_runs``, DDP's reorder reruns on several GPUs; then FSDP on one GPU (nothing to
    shard, only its overhead to measure); last the one-GPU reorder reruns, whose only use is judging it.
    """
    main = [RunSpec(p, d, s) for p in precisions for d in sorted(devices) for s in strategies]
    noise = [RunSpec(p, d, "ddp", "reorder") for p in precisions for d in sorted(devices)] \
        if noise_runs and "ddp" in strategies else []

    def tier(run: RunSpec) -> int:
        if run.variant == "reorder":
            return 1 if run.devices > 1 else 3
        return 2 if run.strategy == "fsdp" and run.devices == 1 else 0

    return sorted(main + noise, key=tier)  # stable: within a tier the order above


def _run_flags(args: argparse.Namespace, run: RunSpec) -> list[str]:
    """Options of one sweep run beyond its configuration: the strategy-specific ones go to their strategy only."""
    flags = []
    if run.strategy == "ddp":
        if run.variant == "reorder":
            flags += ["--variant", "reorder", "--bucket-cap-mb", str(args.noise_bucket_cap_mb)]
        elif args.bucket_cap_mb is not None:
            flags += ["--bucket-cap-mb", str(args.bucket_cap_mb)]
        flags += ["--ddp-comm-hook", args.ddp_comm_hook]
    elif args.param_dtype is not None and run.precision == "bf16-mixed":  # 32-true FSDP has float32 params only
        flags += ["--param-dtype", args.param_dtype]
    return flags


def sweep(args: argparse.Namespace) -> None:
    """Run every configuration in its own subprocess within ``--max-minutes``; merge into ``--out``."""
    out = Path(args.out)
    parts = out.with_name(out.stem + "_runs")
    parts.mkdir(parents=True, exist_ok=True)
    runs = sweep_order(args.precisions, args.devices_list, args.strategies, args.noise_runs)
    passthrough = ["--kernel", args.kernel, "--seed", str(args.seed), "--workers", str(args.workers),
                   "--matmul-precision", args.matmul_precision, "--profile-steps", str(args.profile_steps)]
    passthrough += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in WORKLOAD and v is not None]
    flags = [f for f, on in (("--smoke", args.smoke), ("--compile", args.compile),
                             ("--activation-checkpointing", args.activation_checkpointing),
                             ("--shard-embeddings", args.shard_embeddings)) if on]
    environ = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK")}
    budget, start = args.max_minutes * 60.0, time.monotonic()
    merged: dict[str, Any] = {"benchmark": "scale_out", "command": shlex.join([sys.executable, *sys.argv]),
                              "max_minutes": args.max_minutes, "runs": [], "not_run": []}
    for run in runs:
        elapsed = time.monotonic() - start
        done = len(merged["runs"]) + sum(1 for r in merged["not_run"] if r.get("seconds"))
        estimate = elapsed / done if done else 0.0
        if elapsed + estimate > budget:
            merged["not_run"].append({"name": run.name,
                                      "reason": f"--max-minutes {args.max_minutes} would be exceeded"})
            continue
        target = parts / f"{run.name}.json"
        target.unlink(missing_ok=True)
        command = [sys.executable, str(Path(__file__).resolve()), "--strategy", run.strategy, "--precision",
                   run.precision, "--devices", str(run.devices), "--out", str(target), *passthrough,
                   *_run_flags(args, run), *flags]
        began = time.monotonic()
        proc = subprocess.Popen(command, env=environ, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            log, _ = proc.communicate(timeout=max(budget - (began - start), 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group: it and the ranks it launched
            log, _ = proc.communicate()
        seconds = time.monotonic() - began
        if proc.returncode == 0 and target.exists():
            result = json.loads(target.read_text())
            result["wall_s"] = seconds
            merged["runs"].append(result)
            print(f"{run.name}: {result['summary']['samples_per_s']:.0f} samples/s, "
                  f"peak {result['summary']['peak_allocated_gib_max']} GiB, {seconds:.0f} s", flush=True)
        else:
            merged["not_run"].append({"name": run.name, "reason": f"exit code {proc.returncode}", "seconds": seconds,
                                      "log_tail": (log or "")[-3000:]})
            print(f"{run.name}: failed ({proc.returncode}) after {seconds:.0f} s\n{(log or '')[-1500:]}", flush=True)
        merged["noise"] = noise_references(merged["runs"])
        merged["comparisons"] = compare(merged["runs"])
        out.write_text(json.dumps(merged, indent=1))  # after every run, so a cut-off sweep keeps what it measured
    merged["noise"] = noise_references(merged["runs"])
    merged["comparisons"] = compare(merged["runs"])
    out.write_text(json.dumps(merged, indent=1))


# --- command line ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (workload sizes default to :data:`WORKLOAD`, or :data:`SMOKE` with ``--smoke``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON to write (the merged file with --sweep)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="ddp")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed")
    parser.add_argument("--devices", type=int, default=1, help="GPUs (CPU processes with --smoke)")
    parser.add_argument("--kernel", default="pytorch", choices=("pytorch", "triton", "auto"))
    parser.add_argument("--compile", action="store_true", help="GRModule(compile_backbone=True)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="FSDP: recompute blocks")
    parser.add_argument("--shard-embeddings", action="store_true",
                        help="FSDP: tables as units of their own (GRModule needs them in the root unit)")
    parser.add_argument("--param-dtype", choices=PARAM_DTYPES, default=None,
                        help="FSDP: dtype of gathered parameters and of the gradient reduction (default: float32 "
                             "under bf16-mixed, autocast computing in bf16; the sweep applies it to bf16-mixed only)")
    parser.add_argument("--bucket-cap-mb", type=float, default=None,
                        help=f"DDP: gradient bucket size in MiB (default torch's {TORCH_DEFAULT_BUCKET_CAP_MB:g})")
    parser.add_argument("--ddp-comm-hook", choices=tuple(COMM_HOOKS), default="none",
                        help="DDP: compress gradient buckets to bf16/fp16 for the all-reduce (CUDA/NCCL only)")
    parser.add_argument("--variant", choices=VARIANTS, default="main",
                        help="'reorder': this DDP run is a sweep's noise rerun (needs --bucket-cap-mb)")
    parser.add_argument("--matmul-precision", default="highest", choices=("highest", "high", "medium"),
                        help="torch.set_float32_matmul_precision ('highest': 32-true is true fp32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 2 on GPU, 0 smoke)")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="after the timed steps, profile this many more on rank 0 (torch.profiler)")
    parser.add_argument("--profile-trace", default=None,
                        help="with --profile-steps: also export rank 0's Chrome trace to this path")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU processes (gloo)")
    parser.add_argument("--sweep", action="store_true", help="run the matrix in subprocesses and merge")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--devices-list", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--max-minutes", type=float, default=8.0, help="--sweep: start no run past this budget")
    parser.add_argument("--noise-runs", action=argparse.BooleanOptionalAction, default=True,
                        help="--sweep: rerun DDP with --noise-bucket-cap-mb as a noise reference (lowest priority)")
    parser.add_argument("--noise-bucket-cap-mb", type=float, default=2.0,
                        help="--sweep: the reorder reruns' DDP bucket size, MiB")
    for key, value in WORKLOAD.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                            help=f"workload override (default {value}; smoke {SMOKE[key]})")
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = 0 if args.smoke else 2
    problem = _invalid(args)
    if problem:
        parser.error(problem)
    return args


def _invalid(args: argparse.Namespace) -> str | None:
    """Why these options cannot run together, or None."""
    ddp_options = args.bucket_cap_mb is not None or args.ddp_comm_hook != "none"
    if args.devices < 1 or min(args.devices_list) < 1:
        return "device counts must be >= 1"
    if args.profile_steps < 0:
        return f"--profile-steps {args.profile_steps}: must be >= 0"
    if args.profile_trace is not None and not args.profile_steps:
        return "--profile-trace needs --profile-steps > 0"
    for flag, value in (("--bucket-cap-mb", args.bucket_cap_mb), ("--noise-bucket-cap-mb", args.noise_bucket_cap_mb)):
        if value is not None and value <= 0:
            return f"{flag} {value}: must be > 0"
    if args.smoke and args.ddp_comm_hook != "none":
        return ("--ddp-comm-hook needs CUDA: Lightning registers DDP comm hooks on CUDA devices only, and torch's "
                "bf16/fp16 hooks need NCCL; --smoke runs on CPU")
    strategies = args.strategies if args.sweep else [args.strategy]
    if ddp_options and "ddp" not in strategies:
        return "--bucket-cap-mb and --ddp-comm-hook are DDP options; they do nothing with --strategy fsdp"
    if args.param_dtype is not None and "fsdp" not in strategies:
        return "--param-dtype is an FSDP option (BackboneFSDPStrategy's param_dtype); DDP keeps float32 parameters"
    precisions = args.precisions if args.sweep else [args.precision]
    if args.param_dtype == "bfloat16" and "bf16-mixed" not in precisions:
        return "--param-dtype bfloat16 needs --precision bf16-mixed (32-true makes every FSDP parameter float32)"
    if args.sweep:
        if args.variant != "main":
            return "--variant is set by --sweep for its own runs; use --noise-runs"
        main_cap = TORCH_DEFAULT_BUCKET_CAP_MB if args.bucket_cap_mb is None else args.bucket_cap_mb
        if args.noise_runs and args.noise_bucket_cap_mb == main_cap:
            return (f"--noise-bucket-cap-mb {args.noise_bucket_cap_mb:g} equals the DDP runs' bucket size: the "
                    "reorder reruns would perturb nothing")
    elif args.variant == "reorder" and (args.strategy != "ddp" or args.bucket_cap_mb is None):
        return "--variant reorder is a DDP rerun with another bucket size: needs --strategy ddp and --bucket-cap-mb"
    return None


def main(argv: list[str] | None = None) -> None:
    """Run one configuration, or the sweep."""
    args = parse_args(argv)
    if args.sweep:
        sweep(args)
    else:
        run_one(args)


if __name__ == "__main__":
    main()
