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
comparisons (loss curves against the bf16-vs-fp32 gap of DDP, the "bf16 noise"; embedding memory):

    NCCL_NVLS_ENABLE=0 python benchmarks/scale_out.py --sweep --max-minutes 8 \
        --out benchmarks/results/scale_out_h200.json

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
from typing import Any

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # before torch.distributed starts NCCL (children inherit it)

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Dataset

from gr_lightning.batch import JaggedBatch
from gr_lightning.callbacks import training_flops
from gr_lightning.module import GRModule
from gr_lightning.strategies import BackboneFSDPStrategy
from gr_lightning.zoo.hstu import HSTU

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("bf16-mixed", "32-true")

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


class StepRecorder(L.Callback):
    """Per-rank step times, losses, sizes, FLOPs and memory; rank 0 writes every rank's record as JSON.

    Args:
        warmup: Leading steps left out of the timing (and of the peak-memory window).
        out: Where rank 0 writes the result.
        meta: Configuration and environment written with the records.

    """

    def __init__(self, warmup: int, out: Path, meta: dict[str, Any]) -> None:
        super().__init__()
        self.warmup, self.out, self.meta = warmup, out, meta
        self.steps: list[dict[str, float]] = []
        self.embedding: dict[str, int] = {}
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Start the step clock (synchronised, so it excludes earlier queued work)."""
        _sync(pl_module.device)
        if batch_idx == self.warmup and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Stop the clock; record the loss, the sizes and, after the last step, the embedding table's bytes."""
        _sync(pl_module.device)
        seconds = time.perf_counter() - self._start
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        lengths = batch.lengths
        self.steps.append({"seconds": seconds, "loss": float(loss), "samples": batch.batch_size,
                           "tokens": int(batch.items.numel()), "max_len": batch.max_len,
                           "sum_sq_len": int((lengths * lengths).sum()), "flops": training_flops(pl_module, batch)})
        if trainer.global_step >= trainer.max_steps:  # gradients and optimizer state are still in place
            self.embedding = embedding_bytes(pl_module.item_embedding.weight, trainer.optimizers[0])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather every rank's record on rank 0 and write the JSON."""
        device = pl_module.device
        mine = {"rank": trainer.global_rank, "steps": self.steps, "embedding_bytes": self.embedding,
                "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None}
        records = [mine]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            records = [None] * dist.get_world_size()
            dist.all_gather_object(records, mine)
        if trainer.global_rank == 0:
            result = {**self.meta, "ranks": records, "summary": summarise(records, self.warmup, self.meta)}
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(result, indent=1))


def summarise(records: list[dict[str, Any]], warmup: int, meta: dict[str, Any]) -> dict[str, Any]:
    """Throughput, memory and the mean loss curve from the per-rank records."""
    timed = [r["steps"][warmup:] for r in records]
    if not all(timed):
        raise ValueError(f"no timed steps: every rank needs more than warmup={warmup} steps")
    # The timed window of a rank is the sum of its synchronised step times; the run is as slow as its slowest rank.
    window = max(sum(s["seconds"] for s in steps) for steps in timed)
    samples = sum(s["samples"] for steps in timed for s in steps)
    tokens = sum(s["tokens"] for steps in timed for s in steps)
    flops = sum(s["flops"] for steps in timed for s in steps)
    world = len(records)
    peak = [r["peak_allocated_bytes"] for r in records]
    curve = [float(np.mean([r["steps"][i]["loss"] for r in records])) for i in range(len(records[0]["steps"]))]
    summary = {
        "world_size": world,
        "median_step_s": float(max(np.median([s["seconds"] for s in steps]) for steps in timed)),
        "samples_per_s": samples / window,
        "samples_per_s_per_gpu": samples / window / world,
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
    """Train one configuration for ``warmup + steps`` steps and write its JSON (rank 0)."""
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
        strategy = DDPStrategy(process_group_backend=backend)
    else:
        strategy = BackboneFSDPStrategy(activation_checkpointing=args.activation_checkpointing,
                                        shard_embeddings=args.shard_embeddings, process_group_backend=backend)
    total_steps = workload["warmup"] + workload["steps"]
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
                   "shard_embeddings": args.shard_embeddings, "matmul_precision": args.matmul_precision},
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
    recorder = StepRecorder(workload["warmup"], Path(args.out), meta)
    trainer = L.Trainer(accelerator=accelerator, devices=args.devices, strategy=strategy, precision=args.precision,
                        max_steps=total_steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[recorder],
                        default_root_dir=tempfile.mkdtemp(prefix="scale_out_"))
    data = ZipfDataModule(workload, args.seed, total_steps, args.workers, pin=accelerator == "cuda")
    trainer.fit(model, datamodule=data)


# --- the sweep ------------------------------------------------------------------------------------------


def curve_gap(a: list[float], b: list[float]) -> dict[str, float]:
    """How far two loss curves are apart: max and mean absolute difference, and max relative difference."""
    if len(a) != len(b) or not a:
        raise ValueError(f"loss curves of different or zero length: {len(a)} vs {len(b)}")
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = np.abs(x - y)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "max_rel": float((diff / np.maximum(np.abs(x), 1e-12)).max())}


def compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FSDP against DDP at each device count and precision: loss curves and per-GPU memory.

    "Within bf16 noise" is judged against the gap between DDP's own bf16-mixed and 32-true curves at the
    same device count: FSDP agrees when its curve is no further from DDP's than that.
    """
    by_key = {(r["config"]["strategy"], r["config"]["precision"], r["config"]["devices"]): r for r in runs}
    out = []
    for (strategy, precision, devices), fsdp in sorted(by_key.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        ddp = by_key.get(("ddp", precision, devices))
        if strategy != "fsdp" or ddp is None:
            continue
        row: dict[str, Any] = {"devices": devices, "precision": precision,
                               "loss_gap": curve_gap(ddp["summary"]["loss_curve"], fsdp["summary"]["loss_curve"]),
                               "embedding_gib_per_gpu": {"ddp": ddp["summary"]["embedding_gib_per_gpu"],
                                                         "fsdp": fsdp["summary"]["embedding_gib_per_gpu"]},
                               "peak_allocated_gib_max": {"ddp": ddp["summary"]["peak_allocated_gib_max"],
                                                          "fsdp": fsdp["summary"]["peak_allocated_gib_max"]},
                               "samples_per_s": {"ddp": ddp["summary"]["samples_per_s"],
                                                 "fsdp": fsdp["summary"]["samples_per_s"]}}
        bf16, fp32 = by_key.get(("ddp", "bf16-mixed", devices)), by_key.get(("ddp", "32-true", devices))
        if bf16 is not None and fp32 is not None:
            noise = curve_gap(bf16["summary"]["loss_curve"], fp32["summary"]["loss_curve"])
            row["bf16_noise"] = noise
            row["within_bf16_noise"] = row["loss_gap"]["max_abs"] <= noise["max_abs"]
        out.append(row)
    return out


def sweep_order(precisions: list[str], devices: list[int], strategies: list[str]) -> list[tuple[str, int, str]]:
    """``(precision, devices, strategy)`` by priority, so a time budget cuts the least informative runs.

    Each precision in turn, device counts ascending, DDP before FSDP; FSDP on one GPU (nothing to shard,
    only its overhead to measure) comes last of all.
    """
    ordered = [(p, d, s) for p in precisions for d in sorted(devices) for s in strategies]
    return sorted(ordered, key=lambda c: c[2] == "fsdp" and c[1] == 1)  # stable: the rest keep their order


def sweep(args: argparse.Namespace) -> None:
    """Run every configuration in its own subprocess within ``--max-minutes``; merge into ``--out``."""
    out = Path(args.out)
    parts = out.with_name(out.stem + "_runs")
    parts.mkdir(parents=True, exist_ok=True)
    configs = sweep_order(args.precisions, args.devices_list, args.strategies)
    passthrough = ["--kernel", args.kernel, "--seed", str(args.seed), "--workers", str(args.workers),
                   "--matmul-precision", args.matmul_precision]
    passthrough += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in WORKLOAD and v is not None]
    flags = [f for f, on in (("--smoke", args.smoke), ("--compile", args.compile),
                             ("--activation-checkpointing", args.activation_checkpointing),
                             ("--shard-embeddings", args.shard_embeddings)) if on]
    environ = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK")}
    budget, start = args.max_minutes * 60.0, time.monotonic()
    merged: dict[str, Any] = {"benchmark": "scale_out", "command": shlex.join([sys.executable, *sys.argv]),
                              "max_minutes": args.max_minutes, "runs": [], "not_run": []}
    for precision, devices, strategy in configs:
        name = f"{strategy}_{precision}_{devices}gpu"
        elapsed = time.monotonic() - start
        done = len(merged["runs"]) + sum(1 for r in merged["not_run"] if r.get("seconds"))
        estimate = elapsed / done if done else 0.0
        if elapsed + estimate > budget:
            merged["not_run"].append({"name": name, "reason": f"--max-minutes {args.max_minutes} would be exceeded"})
            continue
        target = parts / f"{name}.json"
        target.unlink(missing_ok=True)
        command = [sys.executable, str(Path(__file__).resolve()), "--strategy", strategy, "--precision", precision,
                   "--devices", str(devices), "--out", str(target), *passthrough, *flags]
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
            run = json.loads(target.read_text())
            run["wall_s"] = seconds
            merged["runs"].append(run)
            print(f"{name}: {run['summary']['samples_per_s']:.0f} samples/s, "
                  f"peak {run['summary']['peak_allocated_gib_max']} GiB, {seconds:.0f} s", flush=True)
        else:
            merged["not_run"].append({"name": name, "reason": f"exit code {proc.returncode}", "seconds": seconds,
                                      "log_tail": (log or "")[-3000:]})
            print(f"{name}: failed ({proc.returncode}) after {seconds:.0f} s\n{(log or '')[-1500:]}", flush=True)
        merged["comparisons"] = compare(merged["runs"])
        out.write_text(json.dumps(merged, indent=1))  # after every run, so a cut-off sweep keeps what it measured
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
    parser.add_argument("--matmul-precision", default="highest", choices=("highest", "high", "medium"),
                        help="torch.set_float32_matmul_precision ('highest': 32-true is true fp32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 2 on GPU, 0 smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU processes (gloo)")
    parser.add_argument("--sweep", action="store_true", help="run the matrix in subprocesses and merge")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--devices-list", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--max-minutes", type=float, default=8.0, help="--sweep: start no run past this budget")
    for key, value in WORKLOAD.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                            help=f"workload override (default {value}; smoke {SMOKE[key]})")
    args = parser.parse_args(argv)
    if args.workers is None:
        args.workers = 0 if args.smoke else 2
    if args.devices < 1 or min(args.devices_list) < 1:
        parser.error("device counts must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run one configuration, or the sweep."""
    args = parse_args(argv)
    if args.sweep:
        sweep(args)
    else:
        run_one(args)


if __name__ == "__main__":
    main()
