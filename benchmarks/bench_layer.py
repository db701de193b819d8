"""Benchmark one HSTU layer (norm, UVQK projection, attention, norm-gate, output) with each kernel.

Issue 3's layer benchmark: D=1024, H=4, d_qk=d_v=256, B=32, N in {1024, 2048, 4096}, bf16 weights and
inputs, positional and temporal bias on (``--bias`` also measures without them), dropout 0.2 in
training mode, jagged lengths uniform in [0.9N, N]. Reports forward+backward median time, TFLOP/s and
the peak memory of one forward+backward above what the inputs and weights already hold, for
``kernel=triton`` against ``kernel=pytorch``.

FLOPs: the projections count ``2 * tokens * D * H * (2 d_v + 2 d_qk) + 2 * tokens * H * d_v * D`` and the
attention ``2 * H * (d_qk + d_v) * L^2 / 2`` per sequence (:func:`gr_lightning.callbacks.backbone_flops`);
forward+backward is 3x the projections plus 3.5x the attention (the attention convention of DESIGN.md).

    PYTHONPATH=$PWD python3 benchmarks/bench_layer.py --out benchmarks/results/layer_h100.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time

import torch
import triton
from _profile_summary import profile_breakdown  # benchmarks/ is on sys.path when run as a script
from triton.testing import do_bench

from gr_lightning.callbacks import backbone_flops
from gr_lightning.ops.pytorch.hstu_attention import attention_flops
from gr_lightning.ops.triton import hstu_attention as _  # noqa: F401 (loads the kernels' module)
from gr_lightning.zoo.hstu import HSTU

hstu_kernels = sys.modules["gr_lightning.ops.triton.hstu_attention"]

DIM, HEADS, HEAD_DIM, BATCH = 1024, 4, 256, 32


def make_inputs(batch: int, n: int, seed: int, device: str) -> dict:
    """Fresh random jagged activations, increasing timestamps and an output gradient."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(int(0.9 * n), n + 1, (batch,), generator=gen)
    offsets = torch.zeros(batch + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    total = int(offsets[-1])
    gaps = torch.randint(1, 200_000, (total,), generator=gen)
    return dict(
        x=torch.randn(total, DIM, generator=gen).to(device, torch.bfloat16),  # (sum_N, D)
        dout=torch.randn(total, DIM, generator=gen).to(device, torch.bfloat16),  # (sum_N, D)
        offsets=offsets.to(device), max_len=int(lengths.max()), lengths=lengths,
        timestamps=(1_600_000_000 + gaps.cumsum(0)).to(device),  # (sum_N,)
    )


#: ``--bias`` choices: which relative-bias tables the layer has.
BIAS = {"both": (True, True), "none": (False, False), "pos": (True, False), "time": (False, True)}


def make_layer(n: int, kernel: str, device: str, bias: str = "both") -> HSTU:
    """One HSTU block in bf16 with the ``bias`` tables, seeded so both kernels get equal weights."""
    torch.manual_seed(0)
    position_bias, time_bias = BIAS[bias]
    layer = HSTU(DIM, n, num_blocks=1, num_heads=HEADS, attention_dim=HEAD_DIM, linear_dim=HEAD_DIM,
                 dropout=0.2, kernel=kernel, position_bias=position_bias, time_bias=time_bias)
    return layer.to(device, torch.bfloat16).train()


def measure(n: int, kernel: str, device: str, bias: str, profile_steps: int = 0) -> dict:
    """Time and peak memory of one forward+backward of the layer; with ``profile_steps``, its top kernels."""
    inputs = make_inputs(BATCH, n, seed=0, device=device)
    layer = make_layer(n, kernel, device, bias)
    x = inputs["x"].requires_grad_()
    leaves = [x, *layer.parameters()]

    def fwd_bwd() -> None:
        out = layer(x, inputs["offsets"], inputs["max_len"], inputs["timestamps"])
        out.backward(inputs["dout"])

    sum_sq = int((inputs["lengths"] ** 2).sum())
    tokens = int(inputs["lengths"].sum())
    fwd_flops = backbone_flops(layer, tokens, sum_sq)
    attn = attention_flops(inputs["lengths"], HEADS, HEAD_DIM, HEAD_DIM)
    flops = 3.0 * (fwd_flops - attn) + 3.5 * attn
    record: dict = dict(kernel=kernel, bias=bias, tokens=tokens, fwd_bwd_flops=flops)
    try:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fwd_bwd()  # compile + autotune for triton
        torch.cuda.synchronize()
        record["first_call_ms"] = (time.perf_counter() - t0) * 1e3
        for p in leaves:
            p.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd()
        torch.cuda.synchronize()
        record["peak_mem_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9
        ms = do_bench(fwd_bwd, warmup=25, rep=200, grad_to_none=leaves, return_mode="median")
    except torch.OutOfMemoryError:
        record["skipped"] = "OOM"
        return record
    record.update(fwd_bwd_ms=ms, fwd_bwd_tflops=flops / ms * 1e-9)
    if kernel == "triton":
        tuned = {"fwd": hstu_kernels._fwd_tuned, "bwd": hstu_kernels._bwd_tuned, "dq": hstu_kernels._dq_tuned,
                 "bias_grad": hstu_kernels._bias_bwd_tuned}
        record["attention_configs"] = {k: str(t.best_config) for k, t in tuned.items()
                                       if getattr(t, "best_config", None) is not None}
    if profile_steps:
        record["profile"] = _profile(fwd_bwd, leaves, profile_steps)
    return record


def _profile(fwd_bwd, leaves: list, steps: int) -> dict:
    """Where ``steps`` forward+backward steps spend their device time, kernel by kernel."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            for p in leaves:
                p.grad = None
            fwd_bwd()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    summary = profile_breakdown(prof.events(), wall, steps, on_device=True, top=20)
    return {k: summary[k] for k in ("wall_ms_per_step", "top_kernels", "device")}


def main() -> None:
    """Measure every (N, kernel) pair and write the JSON after each one."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="layer_h100.json")
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--kernels", default="triton,pytorch")
    parser.add_argument("--bias", default="both", help=f"comma-separated, of {', '.join(BIAS)}")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="after timing, profile this many steps and record the top kernels")
    args = parser.parse_args()
    biases = args.bias.split(",")
    if not set(biases) <= set(BIAS):
        parser.error(f"--bias takes {', '.join(BIAS)}; got {args.bias!r}")
    device = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    result = dict(
        device=torch.cuda.get_device_name(0),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__, triton=triton.__version__, dim=DIM, heads=HEADS, d_qk=HEAD_DIM, d_v=HEAD_DIM,
        batch=BATCH, dtype="bfloat16", bias="per row: both = positional + temporal", dropout=0.2,
        lengths="uniform in [0.9N, N], seed 0", timing="triton.testing.do_bench median (warmup 25, rep 200 ms)",
        flops="3 x projections + 3.5 x attention forward", rows=[],
    )
    for bias, n, kernel in itertools.product(biases, (int(x) for x in args.lengths.split(",")),
                                             args.kernels.split(",")):
        record = dict(N=n, **measure(n, kernel, device, bias, args.profile_steps))
        result["rows"].append(record)
        shown = {k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in record.items() if k != "profile"}
        print(shown, flush=True)
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
