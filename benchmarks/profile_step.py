"""Time and profile GRModule training and evaluation steps on real ML-1M-half batches (diagnostics).

    python benchmarks/profile_step.py --data-root ../shared/data/ml-1m --config conf/ml-1m/hstu-large.yaml
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import yaml

from gr_lightning.data import MovieLens1M, RetrievalDataModule
from gr_lightning.module import GRModule
from gr_lightning.zoo import registry

# A script and a module that tests load by file path: its folder goes on sys.path (as in scale_out.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _profile_summary import profile_breakdown


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sync_report(step, batches: list) -> dict:
    """Run ``step`` on each batch under ``torch.cuda.set_sync_debug_mode("warn")``: the host syncs, by place.

    Every op that makes the host wait for the GPU (``.item()``, a blocking copy, a data-dependent shape)
    raises a warning there, attributed to the Python line that called it.

    Returns:
        ``steps``, ``syncs_per_step`` and ``places``: ``{"file:line": count}`` over all the steps.

    """
    places: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for b in batches:
                step(b)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{Path(w.filename).name}:{w.lineno}"
            places[key] = places.get(key, 0) + 1
    return {"steps": len(batches), "syncs_per_step": sum(places.values()) / max(len(batches), 1), "places": places}


def _graph_check(model: GRModule, batch) -> dict:
    """Max relative error of a replayed backbone forward and backward against the eager one (dropout off)."""
    from gr_lightning.graphed_backbone import GraphedBackbone

    blocks = [m for m in model.backbone.modules() if isinstance(getattr(m, "dropout", None), float)]
    saved = [m.dropout for m in blocks]
    for m in blocks:
        m.dropout = 0.0
    gen = torch.Generator(device=batch.items.device).manual_seed(0)
    x = torch.randn(batch.items.numel(), model.hparams.embedding_dim, device=batch.items.device, generator=gen)
    weights = torch.randn(x.shape, device=x.device, generator=gen)
    params = [p for p in model.backbone.parameters() if p.requires_grad]

    def run(fn):
        leaf = x.clone().requires_grad_(True)
        out = fn(leaf, batch.offsets, batch.max_len, batch.timestamps, batch.query_times)
        grads = torch.autograd.grad((out * weights).sum(), [leaf, *params], allow_unused=True)
        # Detached: a live eager autograd graph keeps the parameters' AccumulateGrad nodes on the default
        # stream, and a later capture on the graph's side stream would then have to sync with it (illegal).
        return [out.detach(), *grads]

    graphed = GraphedBackbone(model.backbone)
    run(graphed)  # captures (in training, the first step's graph is the first backward too)
    replay = run(graphed)
    eager = run(model.backbone)
    for m, p in zip(blocks, saved, strict=True):
        m.dropout = p
    errs = [float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(replay, eager, strict=True)
            if b is not None]
    return {"max_rel_err_output": errs[0], "max_rel_err_grads": max(errs[1:]), "tensors_compared": len(errs)}


def model_from_config(cfg: dict, kernel: str, cuda_graphs: bool, num_items: int, max_seq_len: int) -> GRModule:
    """The config's GRModule, with this script's backbone kernel and CUDA-graph choice over the config's own.

    Args:
        cfg: A shipped config as loaded from YAML (``model`` as class_path + init_args, or flat).
        kernel: Backbone kernel, for backbones that take one.
        cuda_graphs: Replay the backbone from CUDA graphs.
        num_items: Item vocabulary of the data.
        max_seq_len: Longest training sequence.
    """
    model_cfg = dict(cfg["model"].get("init_args", cfg["model"]))
    bb = model_cfg.pop("backbone")
    model_cfg.pop("optimizer", None)
    cls = next(c for c in registry().values() if f"{c.__module__}.{c.__qualname__}" == bb["class_path"])
    bb_args = dict(bb.get("init_args", {}))
    if "kernel" in bb_args:
        bb_args["kernel"] = kernel
    model_cfg["cuda_graphs"] = cuda_graphs  # the flag wins over the config's value
    return GRModule(partial(cls, **bb_args), num_items, max_seq_len, **model_cfg)


def main() -> None:
    """Build the model of a config, time train and eval steps, print the top profiler rows."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--kernel", default="pytorch")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the backbone from CUDA graphs (GRModule(cuda_graphs=True)); first checks a "
                             "replayed forward and backward against an eager one")
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"),
                        help="bf16-mixed: the training and validation steps run under bfloat16 autocast, as "
                             "Lightning's bf16-mixed does")
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True): one kernel per step")
    parser.add_argument("--out", default=None)
    parser.add_argument("--host-profile-rows", type=int, default=30,
                        help="Python functions (cProfile, by own time) to keep in the JSON")
    args = parser.parse_args()

    cfg = yaml.safe_load(Path(args.config).read_text())
    dm = RetrievalDataModule(MovieLens1M(root=args.data_root, ratings_file="ratings_users_1-2999.dat.gz"),
                             max_seq_len=cfg["data"]["init_args"]["max_seq_len"], cache_dir="/tmp/gr-cache")
    dm.setup("fit")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_config(cfg, args.kernel, args.cuda_graphs, dm.num_items, dm.max_seq_len).to(device)
    opt_args = dict(cfg["model"].get("init_args", cfg["model"]).get("optimizer", {}).get("init_args", {}))
    opt_args.setdefault("lr", 1e-3)
    if args.fused_adamw:
        opt_args["fused"] = True
    opt = torch.optim.AdamW(model.parameters(), **opt_args)
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    train = [b for b in dm.train_dataloader()]
    val = [b for b in dm.val_dataloader()]
    move = model.transfer_batch_to_device

    def train_step(batch):
        batch = move(batch, device, 0)
        with autocast():
            loss = model.training_step(batch, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.log = lambda *a, **k: None  # no trainer attached: skip Lightning logging
    model.train()
    graph_check = _graph_check(model, move(train[0], device, 0)) if args.cuda_graphs else None
    if graph_check is not None:
        print("graph check", graph_check, flush=True)
    # Warm up on every batch once, so that the timed steps exclude compiling and autotuning each length
    # bucket (the Triton kernels tune once per power-of-two bucket of max_len); that cost is reported apart.
    t = time.perf_counter()
    for b in train:
        train_step(b)
    _sync()
    warmup_s = time.perf_counter() - t
    # Two timed passes: the first one after the warm-up has been seen to run 10x slower on the GPU (a one-off
    # after tuning, not understood yet), so both are recorded and the second one is the step time.
    passes_ms = []
    for _ in range(2):
        t = time.perf_counter()
        for b in train[: args.steps]:
            train_step(b)
        _sync()
        passes_ms.append((time.perf_counter() - t) / args.steps * 1e3)
    train_ms = passes_ms[-1]
    syncs = sync_report(train_step, train[: args.steps]) if device.type == "cuda" else None
    if syncs is not None:
        print("host syncs", syncs, flush=True)
    model.eval()
    with torch.no_grad(), autocast():
        for b in val:
            model.validation_step(move(b, device, 0), 0)
        _sync()
        t = time.perf_counter()
        for b in val:
            model.validation_step(move(b, device, 0), 0)
        _sync()
        val_s = time.perf_counter() - t
    model.train()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    _sync()
    with torch.profiler.profile(activities=activities) as prof:
        t = time.perf_counter()
        for b in train[:3]:
            train_step(b)
        _sync()
        profiled_s = time.perf_counter() - t
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    # Per step: wall time under the profiler, and the GPU's busy and idle time within it (idle: the device
    # waited for the host).
    breakdown = profile_breakdown(prof.events(), profiled_s, 3, on_device=device.type == "cuda")
    if breakdown["device"] is not None:
        print("per profiled step:", {k: round(v, 3) for k, v in breakdown["device"].items()})
    events = prof.key_averages()
    print(events.table(sort_by=sort, row_limit=25))
    # The profiled steps' totals and top operators go into the JSON, so that notes can cite them.
    device_us = [getattr(e, "self_device_time_total", 0.0) for e in events]
    top = sorted(events, key=lambda e: getattr(e, "device_time_total", 0.0) if device.type == "cuda"
                 else e.cpu_time_total, reverse=True)[:25]
    # Host time by op, from every thread: the autograd engine runs a CUDA backward on a thread of its own,
    # where cProfile (below) cannot attribute time reliably.
    top_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    profile = {"steps": 3, "self_cpu_ms": sum(e.self_cpu_time_total for e in events) / 1e3,
               "self_device_ms": sum(device_us) / 1e3,
               "top": [{"name": e.key, "calls": e.count, "cpu_ms": e.cpu_time_total / 1e3,
                        "device_ms": getattr(e, "device_time_total", 0.0) / 1e3} for e in top],
               "top_self_cpu": [{"name": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3}
                                for e in top_host],
               "breakdown": breakdown}
    # Host side: which Python functions of the main thread take the step's wall time (a host sync shows up
    # as the function that waits, e.g. Tensor.item or __int__, with a large own time).
    host = cProfile.Profile()
    t = time.perf_counter()
    host.enable()
    for b in train[: args.steps]:
        train_step(b)
    _sync()
    host.disable()
    host_ms = (time.perf_counter() - t) / args.steps * 1e3
    stats = pstats.Stats(host)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[: args.host_profile_rows]
    profile["host"] = {
        "steps": args.steps, "step_ms_under_cprofile": host_ms,
        "top_own_time": [{"function": f"{Path(f).name}:{line}:{name}", "calls": nc, "own_ms": tt * 1e3 / args.steps,
                          "cumulative_ms": ct * 1e3 / args.steps}
                         for (f, line, name), (_, nc, tt, ct, _) in rows],
    }
    for row in profile["host"]["top_own_time"][:15]:
        print(f"{row['own_ms']:8.2f} ms/step own {row['cumulative_ms']:8.2f} cum {row['calls']:6d} {row['function']}")
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "config": args.config, "kernel": args.kernel, "precision": args.precision,
              "optimizer": {"class": "AdamW", **opt_args}, "train_batches": len(train),
              "cuda_graphs": args.cuda_graphs, "graph_check": graph_check,
              "graphs_captured": model._graphed.num_graphs if model._graphed is not None else 0,
              "train_step_ms": train_ms, "timed_passes_ms": passes_ms, "host_syncs": syncs, "val_pass_s": val_s,
              "first_pass_over_train_s": warmup_s,
              "epoch_estimate_s": train_ms * len(train) / 1e3 + val_s, "profile": profile}
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
