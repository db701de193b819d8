"""Latency of candidate scoring with and without a KV cache (HSTU paper Sec. 3.4, M-FALCON).

The seed's inference model (8 HSTU blocks, width 1024, 4 heads of d_qk = d_v = 256, max_seq_len 4352,
positional and temporal bias, bf16, eval mode) scores 256 candidates behind a 4096-event history, batch
1 and 8, with fresh random inputs:

- full: one forward pass over history + candidates with the target-aware mask (what a ranking request
  costs without a cache);
- prefill: encoding the histories into a cache of capacity max_seq_len (once per user, reported separately);
- cached: scoring the candidates from the prefilled cache (``HSTU.score_candidates``);
- full_graph, cached_graph (CUDA only): the same two calls captured once as CUDA graphs
  (``gr_lightning.serving.graphs``) and replayed: small batches are bound by kernel launches, which a graph
  replays with one call. The replayed outputs are compared with the eager ones.

Both kernels (pytorch reference, triton). The cached outputs are compared with the full ones (max abs
error, and that over the largest full output), in bf16 at the benchmark shape and in fp32 on a smaller
model (2 blocks, width 256, 2 heads of 64; fp32 kernels at d = 256 take minutes to compile and tune).
Timings: ``triton.testing.do_bench`` medians on CUDA. The JSON is rewritten after each measurement, so a
run cut short keeps what it measured.

GPU:   ``PYTHONPATH=$PWD python3 benchmarks/bench_kv_cache.py --out benchmarks/results/kv_cache_h100.json``
Smoke: ``python benchmarks/bench_kv_cache.py --smoke --out /tmp/kv.json`` (tiny shapes on CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import triton

from gr_lightning.serving.graphs import GraphedCall, candidate_scoring_graph
from gr_lightning.zoo.hstu import HSTU


@dataclass
class Shape:
    dim: int
    num_blocks: int
    num_heads: int
    head_dim: int
    max_seq_len: int
    history: int
    candidates: int
    batches: tuple[int, ...]


FULL = Shape(dim=1024, num_blocks=8, num_heads=4, head_dim=256, max_seq_len=4352, history=4096, candidates=256,
             batches=(1, 8))
# The fp32 equality check runs on a smaller model (see the module docstring).
FULL_CHECK = Shape(dim=256, num_blocks=2, num_heads=2, head_dim=64, max_seq_len=640, history=512, candidates=64,
                   batches=(2,))
SMOKE = Shape(dim=16, num_blocks=2, num_heads=2, head_dim=8, max_seq_len=20, history=12, candidates=4,
              batches=(1, 2))
SMOKE_CHECK = Shape(dim=16, num_blocks=2, num_heads=2, head_dim=8, max_seq_len=20, history=6, candidates=3,
                    batches=(2,))


def build(shape: Shape, kernel: str, dtype: torch.dtype, device: str, seed: int = 0) -> HSTU:
    torch.manual_seed(seed)
    model = HSTU(shape.dim, shape.max_seq_len, num_blocks=shape.num_blocks, num_heads=shape.num_heads,
                 attention_dim=shape.head_dim, linear_dim=shape.head_dim, dropout=0.0, kernel=kernel)
    return model.to(device=device, dtype=dtype).eval()


def make_inputs(shape: Shape, batch: int, history: int, candidates: int, dtype, device, seed: int) -> dict:
    """Fresh random tokens and increasing timestamps: ``history`` then ``candidates`` rows per user."""
    gen = torch.Generator().manual_seed(seed)
    per_user = history + candidates
    x = torch.randn(batch, per_user, shape.dim, generator=gen)  # (B, L, D)
    ts = 1_600_000_000 + torch.randint(1, 200_000, (batch, per_user), generator=gen).cumsum(1)  # (B, L)
    query_times = ts[:, -1] + torch.randint(1, 1000, (batch,), generator=gen)  # (B,)
    step = torch.arange(batch + 1)
    to = dict(device=device)
    return dict(
        x_full=x.reshape(-1, shape.dim).to(dtype=dtype, **to), ts_full=ts.reshape(-1).to(**to),  # (B * L, D)
        offsets_full=(step * per_user).to(**to), num_targets=torch.full((batch,), candidates, **to),
        x_hist=x[:, :history].reshape(-1, shape.dim).to(dtype=dtype, **to),  # (B * history, D)
        ts_hist=ts[:, :history].reshape(-1).to(**to), offsets_hist=(step * history).to(**to),
        x_cand=x[:, history:].reshape(-1, shape.dim).to(dtype=dtype, **to),  # (B * K, D)
        ts_cand=ts[:, history:].reshape(-1).to(**to), offsets_cand=(step * candidates).to(**to),
        query_times=query_times.to(**to), history=history, candidates=candidates, batch=batch,
    )


def full_scores(model: HSTU, inp: dict) -> torch.Tensor:
    """Outputs at the candidate rows of a full forward pass. ``(B * K, D)``."""
    with torch.no_grad():
        out = model(inp["x_full"], inp["offsets_full"], inp["history"] + inp["candidates"], inp["ts_full"],
                    inp["query_times"], num_targets=inp["num_targets"])
    per_user = inp["history"] + inp["candidates"]
    return out.view(inp["batch"], per_user, -1)[:, inp["history"]:].reshape(-1, out.shape[-1])


def prefill(model: HSTU, inp: dict):
    return model.prefill(inp["x_hist"], inp["offsets_hist"], inp["history"], inp["ts_hist"])


def cached_scores(model: HSTU, cache, inp: dict) -> torch.Tensor:
    return model.score_candidates(cache, inp["x_cand"], inp["offsets_cand"], inp["candidates"], inp["ts_cand"],
                                  inp["query_times"])


def full_graph(model: HSTU, inp: dict) -> GraphedCall:
    """:func:`full_scores` captured as a CUDA graph; replay with the batch's tensors."""
    per_user = inp["history"] + inp["candidates"]

    def run(x, offsets, ts, num_targets, query_times):
        out = model(x, offsets, per_user, ts, query_times, num_targets=num_targets)
        return out.view(inp["batch"], per_user, -1)[:, inp["history"]:].reshape(-1, out.shape[-1])

    return GraphedCall(run, dict(x=inp["x_full"], offsets=inp["offsets_full"], ts=inp["ts_full"],
                                 num_targets=inp["num_targets"], query_times=inp["query_times"]))


def replay_full(graph: GraphedCall, inp: dict) -> torch.Tensor:
    return graph(x=inp["x_full"], offsets=inp["offsets_full"], ts=inp["ts_full"], num_targets=inp["num_targets"],
                 query_times=inp["query_times"])


def cached_graph(model: HSTU, cache, inp: dict) -> GraphedCall:
    return candidate_scoring_graph(model, cache, inp["x_cand"], inp["offsets_cand"], inp["candidates"],
                                   inp["ts_cand"], inp["query_times"])


def replay_cached(graph: GraphedCall, inp: dict) -> torch.Tensor:
    return graph(x=inp["x_cand"], offsets=inp["offsets_cand"], timestamps=inp["ts_cand"],
                 query_times=inp["query_times"])


def errors(got: torch.Tensor, want: torch.Tensor) -> dict:
    diff = (got.double() - want.double()).abs()
    scale = want.double().abs().max().clamp_min(1e-30)
    return {"max_abs_err": float(diff.max()), "max_rel_err": float(diff.max() / scale)}


def measure(fn, device: str, timed: bool = True) -> tuple[dict, object]:
    """``({"ms": median}, fn's output)``, or ``({"error": "OOM" or the failure}, None)``; untimed: ``({}, out)``."""
    try:
        if not timed:
            return {}, fn()
        if device == "cuda":
            from triton.testing import do_bench

            ms = float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
            return {"ms": ms}, fn()
        t0 = time.perf_counter()  # CPU smoke mode: one call shows the code runs (Triton is interpreted here)
        out = fn()
        return {"ms": (time.perf_counter() - t0) * 1e3}, out
    except torch.OutOfMemoryError:
        if device == "cuda":
            torch.cuda.empty_cache()
        return {"error": "OOM"}, None
    except Exception as err:  # e.g. a kernel without a launch config for this shape: record it, go on
        if device != "cuda":
            raise
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}, None


def bench_batch(model: HSTU, shape: Shape, batch: int, dtype: torch.dtype, device: str) -> dict:
    """Full recompute, prefill and cached scoring of one batch; errors of the cached outputs."""
    inp = make_inputs(shape, batch, shape.history, shape.candidates, dtype, device, seed=100 + batch)
    run = dict(kernel=model.kernel, batch=batch, history=shape.history, candidates=shape.candidates)
    run["full"], full = measure(lambda: full_scores(model, inp), device)
    run["prefill"], cache = measure(lambda: prefill(model, inp), device)
    if cache is None:
        run["cached"] = {"error": "no cache (prefill OOM)"}
        return run
    run["cache_bytes"] = cache.nbytes
    run["cached"], cached = measure(lambda: cached_scores(model, cache, inp), device)
    if full is not None and cached is not None:
        run.update(errors(cached, full))
        run["speedup"] = run["full"]["ms"] / run["cached"]["ms"]
    if device != "cuda":
        run["graphs"] = {"skipped": "CUDA graphs need a CUDA device"}
        return run
    # Fresh inputs of the same shapes for the replays, so a graph that ignored its inputs would fail the check.
    again = make_inputs(shape, batch, shape.history, shape.candidates, dtype, device, seed=200 + batch)
    cache = prefill(model, again)
    graphs: dict = {}
    status, graph = measure(lambda: full_graph(model, inp), device, timed=False)
    if graph is not None:
        graphs["full_graph"], replayed = measure(lambda: replay_full(graph, again), device)
        if replayed is not None:
            graphs["full_graph_vs_eager"] = errors(replayed, full_scores(model, again))
        del graph
    else:
        graphs["full_graph"] = status
    status, graph = measure(lambda: cached_graph(model, cache, inp), device, timed=False)
    if graph is not None:
        graphs["cached_graph"], replayed = measure(lambda: replay_cached(graph, again), device)
        if replayed is not None:
            graphs["cached_graph_vs_eager"] = errors(replayed, cached_scores(model, cache, again))
            graphs["cached_graph_vs_full"] = errors(replayed, full_scores(model, again))
    else:
        graphs["cached_graph"] = status
    ms = {k: graphs[k].get("ms") for k in ("full_graph", "cached_graph")}
    if ms["cached_graph"] and ms["full_graph"]:
        graphs["speedup"] = ms["full_graph"] / ms["cached_graph"]
    if ms["cached_graph"] and "ms" in run["full"]:
        graphs["speedup_over_eager_full"] = run["full"]["ms"] / ms["cached_graph"]
    run["graphs"] = graphs
    return run


def check_kernel(kernel: str, shape: Shape, device: str) -> dict:
    """Cached vs full outputs in fp32: equal up to summation order."""
    model = build(shape, kernel, torch.float32, device)
    batch = shape.batches[0]
    inp = make_inputs(shape, batch, shape.history, shape.candidates, torch.float32, device, seed=1)
    check = dict(dtype="float32", model=asdict(shape))
    status, full = measure(lambda: full_scores(model, inp), device, timed=False)
    if full is None:
        return dict(check, error=f"full: {status['error']}")
    status, cached = measure(lambda: cached_scores(model, prefill(model, inp), inp), device, timed=False)
    if cached is None:
        return dict(check, error=f"cached: {status['error']}")
    return dict(check, **errors(cached, full))


def kernels_available(device: str) -> dict[str, str | None]:
    """Kernel name -> None if it runs here, else why not."""
    triton_ok = device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    return {"pytorch": None, "triton": None if triton_ok else "needs CUDA or TRITON_INTERPRET=1"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (tests)")
    parser.add_argument("--skip-checks", action="store_true",
                        help="skip the fp32 equality checks (each run still reports its bf16 error)")
    args = parser.parse_args(argv)
    shape, check_shape = (SMOKE, SMOKE_CHECK) if args.smoke else (FULL, FULL_CHECK)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; use --smoke for the CPU check")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    result = dict(
        benchmark="bench_kv_cache.py",
        command=" ".join(["benchmarks/bench_kv_cache.py", *(sys.argv[1:] if argv is None else argv)]),
        device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__, triton=triton.__version__, smoke=args.smoke,
        model=dict(asdict(shape), dtype=str(dtype).removeprefix("torch."), position_bias=True, time_bias=True,
                   dropout=0.0),
        timing=("triton.testing.do_bench median (warmup 25 ms, rep 200 ms)" if device == "cuda"
                else "one wall-clock run (smoke: not a measurement)"),
        errors="max_abs_err = max |cached - full| over candidate outputs; max_rel_err = that / max |full|",
        checks={}, runs=[],
    )

    def save():
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    available = kernels_available(device)
    for kernel, why in available.items():
        if why is not None or args.skip_checks:
            result["checks"][kernel] = {"skipped": why or "--skip-checks"}
            continue
        result["checks"][kernel] = check_kernel(kernel, check_shape, device)
        print("check", kernel, result["checks"][kernel], flush=True)
        save()

    for kernel, why in available.items():
        if why is not None:
            result["runs"].append({"kernel": kernel, "skipped": why})
            continue
        model = build(shape, kernel, dtype, device)
        for batch in shape.batches:
            result["runs"].append(bench_batch(model, shape, batch, dtype, device))
            print(result["runs"][-1], flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
            save()
    save()
    print("\n| kernel | batch | full ms | prefill ms | cached ms | speedup | max rel err | graphs: full ms | "
          "cached ms | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in result["runs"]:
        if "skipped" in run:
            print(f"| {run['kernel']} | skipped: {run['skipped']} | | | | | |")
            continue
        cells = [run[k].get("ms", run[k].get("error")) for k in ("full", "prefill", "cached")]
        cells = [f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells]
        speed = f"{run['speedup']:.1f}x" if "speedup" in run else "-"
        err = f"{run['max_rel_err']:.1e}" if "max_rel_err" in run else "-"
        g = run.get("graphs", {})
        gcells = [g.get(k, {}).get("ms") for k in ("full_graph", "cached_graph")]
        gcells = [f"{c:.3f}" if isinstance(c, float) else "-" for c in gcells]
        gspeed = f"{g['speedup']:.1f}x" if "speedup" in g else "-"
        print(f"| {run['kernel']} | {run['batch']} | {' | '.join(cells)} | {speed} | {err} | {' | '.join(gcells)} "
              f"| {gspeed} |")
    return result


if __name__ == "__main__":
    main()
