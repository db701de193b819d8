"""Benchmark the fused Triton HSTU attention against the PyTorch reference and SDPA flash (a ceiling).

Run on a GPU:  ``PYTHONPATH=$PWD python3 benchmarks/bench_attention.py --out attention_h100.json``.
A correctness check against the float64 reference (fresh random bf16 and fp32 inputs) runs first; the
JSON is rewritten after every measurement so that a run cut short still leaves its numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from gr_lightning.ops.pytorch.hstu_attention import attention_flops
from gr_lightning.ops.pytorch.hstu_attention import hstu_attention as ref_attention
from gr_lightning.ops.triton import hstu_attention

hstu_mod = sys.modules["gr_lightning.ops.triton.hstu_attention"]

SHAPES = [(32, 4096), (32, 512), (32, 1024), (16, 2048), (8, 4096)]
H, D = 4, 128
NUM_BUCKETS = 128
REF_MEM_LIMIT = 30e9  # bytes the padded reference may use (fwd + bwd), estimated


def make_batch(batch, n, heads, d_qk, d_v, dtype, seed, targets=None, device="cuda"):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(int(0.9 * n), n + 1, (batch,), generator=gen)
    offsets = torch.zeros(batch + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    total = int(offsets[-1])
    qkv = torch.randn(total, heads, 2 * d_qk + d_v, generator=gen).to(dtype)
    q, k, v = (t.contiguous().to(device) for t in qkv.split([d_qk, d_qk, d_v], dim=-1))
    gaps = torch.randint(1, 200_000, (total,), generator=gen)
    ts = (1_600_000_000 + gaps.cumsum(0)).to(device)
    # a second event-time distribution, bursty: gaps log-uniform from 1 s to 11 days
    # (own generator, so the other tensors stay those of earlier runs with the same seed)
    bursty = (10 ** (torch.rand(total, generator=torch.Generator().manual_seed(seed + 1)) * 6)).long()
    ts_bursty = (1_600_000_000 + bursty.cumsum(0)).to(device)
    return dict(
        q=q, k=k, v=v, offsets=offsets.to(device), max_len=int(lengths.max()), lengths=lengths,
        timestamps=ts, timestamps_bursty=ts_bursty,
        pos_bias=(torch.randn(2 * n - 1, generator=gen) * 0.1).to(dtype).to(device),
        time_bias=(torch.randn(NUM_BUCKETS + 1, generator=gen) * 0.1).to(dtype).to(device),
        num_targets=None if targets is None else torch.full((batch,), targets, dtype=torch.int64).to(device),
        dout=torch.randn(total, heads, d_v, generator=gen).to(dtype).to(device),
    )


#: Variants measured at every shape (the issue's list); the first shape also gets EXTRA_VARIANTS.
VARIANTS = ("nobias", "bias", "targets", "reference", "sdpa_flash")
#: pos / time: one bias table alone (where the bias cost goes); bias_frozen: both tables without their
#: gradients (the q, k, v kernels' share of the bias cost); bias_bursty: both tables on bursty event times
#: (gaps log-uniform in [1 s, 11 days]), a second distribution for the uniform-time-tile shortcut.
#: ``*_heads_major``: the same call with the kernels' older grid order (``_TILE_MAJOR = False``).
EXTRA_VARIANTS = ("pos", "time", "bias_frozen", "bias_bursty", "nobias_heads_major", "bias_heads_major")
_HEADS_MAJOR = "_heads_major"
_BOTH_TABLES = ("bias", "bias_frozen", "bias_bursty")


def call_kwargs(b, n, variant):
    variant = variant.removesuffix(_HEADS_MAJOR)
    kw = dict(alpha=1.0 / D**0.5, scale_len=n)
    if variant in _BOTH_TABLES:
        ts = b["timestamps_bursty"] if variant == "bias_bursty" else b["timestamps"]
        kw.update(pos_bias=b["pos_bias"], time_bias=b["time_bias"], timestamps=ts)
    if variant == "pos":
        kw.update(pos_bias=b["pos_bias"])
    if variant == "time":
        kw.update(time_bias=b["time_bias"], timestamps=b["timestamps"])
    if variant == "targets":
        kw.update(num_targets=b["num_targets"])
    if variant == "all":
        kw.update(pos_bias=b["pos_bias"], time_bias=b["time_bias"], timestamps=b["timestamps"],
                  num_targets=b["num_targets"], num_contextual=5, window=40)
    return kw


def rel_err(x, ref):
    return float((x.detach().double() - ref.detach()).norm() / ref.detach().norm())


def check(dtype, variant, tol, seed, tuned_split=False):
    """Compare output and every gradient with the float64 reference on a small fresh batch.

    ``tuned_split``: the tuner's configurations (first call, tuning included) instead of one fixed
    configuration, and the backward in three passes unless ``--bwd-passes`` names the passes.
    """
    n = 300
    b = make_batch(4, n, 2, 64, 48, dtype, seed=seed, targets=7)
    kw = call_kwargs(b, n, variant)
    names = ["q", "k", "v"] + [x for x in ("pos_bias", "time_bias") if x in kw]
    ours = {x: (kw.get(x) if x in kw else b[x]).detach().clone().requires_grad_() for x in names}
    refs = {x: ours[x].detach().double().requires_grad_() for x in names}
    kw_o = {**kw, **{x: ours[x] for x in names if x in kw}}
    kw_r = {**kw, **{x: refs[x] for x in names if x in kw}}
    # one fixed tile config: the check is about correctness, and tuning every config for every dtype and
    # mask combination would take minutes of compilation
    fixed = None if tuned_split else {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    saved = hstu_mod._FIXED_CONFIG, hstu_mod._BWD_PASSES
    hstu_mod._FIXED_CONFIG = fixed
    if tuned_split and saved[1] is None:
        hstu_mod._BWD_PASSES = 3
    try:
        out = hstu_attention(ours["q"], ours["k"], ours["v"], b["offsets"], b["max_len"], **kw_o)
        out.backward(b["dout"])
    finally:
        hstu_mod._FIXED_CONFIG, hstu_mod._BWD_PASSES = saved
    ref = ref_attention(refs["q"], refs["k"], refs["v"], b["offsets"], b["max_len"], **kw_r)
    ref.backward(b["dout"].double())
    errs = {"out": rel_err(out, ref)}
    errs.update({f"d{x}": rel_err(ours[x].grad, refs[x].grad) for x in names})
    ok = all(e < tol for e in errs.values()) and all(torch.isfinite(ours[x].grad).all() for x in names)
    return ok, errs


def sdpa_fn(b, batch, n):
    """Padded causal softmax attention through SDPA's flash backend, same rows and heads."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def pad(x):
        out = x.new_zeros(batch, n, H, x.shape[-1])
        out_flat = out.view(batch * n, H, x.shape[-1])
        idx = torch.cat([torch.arange(int(s), int(e)) - int(s) + i * n for i, (s, e) in
                         enumerate(zip(b["offsets"][:-1].tolist(), b["offsets"][1:].tolist(), strict=True))])
        out_flat[idx.to(x.device)] = x
        return out.transpose(1, 2).contiguous()  # (B, H, N, d)

    q, k, v = (pad(b[x]).requires_grad_() for x in ("q", "k", "v"))
    dout = torch.randn_like(q)

    def fwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fwd_bwd():
        fwd().backward(dout)

    return fwd, fwd_bwd, [q, k, v]


def ours_fns(b, n, variant):
    kw = call_kwargs(b, n, variant)
    tables = [] if variant == "bias_frozen" else [kw[x] for x in ("pos_bias", "time_bias") if x in kw]
    leaves = [b["q"], b["k"], b["v"], *tables]
    for t in leaves:
        t.requires_grad_()
    for x in ("pos_bias", "time_bias"):
        if variant == "bias_frozen" and x in kw:
            kw[x] = kw[x].detach()

    def fwd():
        with torch.no_grad():
            return hstu_attention(b["q"], b["k"], b["v"], b["offsets"], b["max_len"], **kw)

    def fwd_bwd():
        hstu_attention(b["q"], b["k"], b["v"], b["offsets"], b["max_len"], **kw).backward(b["dout"])

    return fwd, fwd_bwd, leaves


def ref_fns(b, n):
    kw = call_kwargs(b, n, "nobias")
    for t in (b["q"], b["k"], b["v"]):
        t.requires_grad_()

    def fwd():
        with torch.no_grad():
            return ref_attention(b["q"], b["k"], b["v"], b["offsets"], b["max_len"], **kw)

    def fwd_bwd():
        ref_attention(b["q"], b["k"], b["v"], b["offsets"], b["max_len"], **kw).backward(b["dout"])

    return fwd, fwd_bwd, [b["q"], b["k"], b["v"]]


def timed_first_call(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def bench(fn, leaves):
    return do_bench(fn, warmup=25, rep=100, grad_to_none=leaves, return_mode="median")


def main():
    global D  # --head-dim: the timed shapes' head width, read by make_batch's callers and call_kwargs
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="attention_h100.json")
    parser.add_argument("--shapes", default=",".join(f"{b}x{n}" for b, n in SHAPES))
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting new shapes after this")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--check-dtypes", default="bfloat16,float32",
                        help="dtypes of the correctness check (fp32's IEEE dots compile for minutes)")
    parser.add_argument("--check-batches", type=int, default=1, help="fresh random batches per checked dtype")
    parser.add_argument("--head-dim", type=int, default=D, help="d_qk = d_v of the timed shapes")
    parser.add_argument("--check-tuned-split", action="store_true",
                        help="also check bf16 with the tuner's configurations and the split backward")
    parser.add_argument("--check-seed", type=int, default=None,
                        help="seed of the first checked batch (default: from the clock, a fresh batch per run)")
    parser.add_argument("--no-extra", action="store_true", help=f"skip {', '.join(EXTRA_VARIANTS)}")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variants to measure at every shape (default: the issue's list, "
                             "plus the extras at the first shape)")
    parser.add_argument("--dq-atomics", choices=("tma", "elementwise"), default=None,
                        help="how the backward adds dQ tiles: TMA bulk reductions (Hopper) or one atomic per "
                             "element (default: the library's choice, tma with a bias table)")
    parser.add_argument("--tile-loads", choices=("tma", "pointers"), default="tma",
                        help="how unmasked tiles load their streamed operands (default: TMA on Hopper)")
    parser.add_argument("--bwd-passes", choices=("auto", "1", "2", "3"), default="auto",
                        help="q, k, v backward: fused (1), dK+dV then dQ (2), dV, dK, dQ (3); checked and timed "
                             "(default: the library's choice)")
    args = parser.parse_args()
    hstu_mod._BWD_PASSES = None if args.bwd_passes == "auto" else int(args.bwd_passes)
    D = args.head_dim
    if args.dq_atomics is not None:
        hstu_mod._DQ_TMA = args.dq_atomics == "tma"
    hstu_mod._HEAD_TMA = args.tile_loads == "tma"
    if set(args.check_dtypes.split(",")) - {"bfloat16", "float32"}:
        parser.error(f"--check-dtypes takes bfloat16 and/or float32, not {args.check_dtypes!r}")
    unknown = set(args.variants.split(",")) - set(VARIANTS + EXTRA_VARIANTS) if args.variants else set()
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS + EXTRA_VARIANTS)}")
    start = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    result = dict(
        device=torch.cuda.get_device_name(0), sms=props.multi_processor_count,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=torch.__version__, triton=triton.__version__, heads=H, d_qk=D, d_v=D, dtype="bfloat16",
        lengths="uniform in [0.9N, N], seed 0",
        timing="triton.testing.do_bench median, warmup 25 ms, rep 100 ms",
        flops="fwd = sum_seq 2*H*(d_qk+d_v)*L^2/2; fwd+bwd = 3.5x", checks={},
        dq_atomics={None: "tma with a bias table", True: "tma", False: "elementwise"}[hstu_mod._DQ_TMA],
        tile_loads=args.tile_loads, bwd_passes=args.bwd_passes,
        shapes=[],
    )

    def save():
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    if not args.skip_check:
        hstu_mod._FIXED_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
        tols = {"bfloat16": 1e-2, "float32": 1e-4}
        for dtype, tol in ((getattr(torch, name), tols[name]) for name in args.check_dtypes.split(",")):
            for attempt in range(args.check_batches):
                seed = (int(time.time()) % 100000 if args.check_seed is None else args.check_seed) + attempt
                ok, errs = check(dtype, "all", tol, seed)
                result["checks"][f"{str(dtype)[6:]}/all/seed{seed}"] = dict(ok=ok, tol=tol, rel_err=errs)
                shown = {k: f"{e:.1e}" for k, e in errs.items()}
                print("check", dtype, "all", f"seed {seed}", "OK" if ok else "FAIL", shown, flush=True)
        if args.check_tuned_split:
            seed = int(time.time()) % 100000 if args.check_seed is None else args.check_seed
            ok, errs = check(torch.bfloat16, "all", tols["bfloat16"], seed, tuned_split=True)
            result["checks"][f"bfloat16/all/tuned-split/seed{seed}"] = dict(ok=ok, tol=tols["bfloat16"], rel_err=errs)
            print("check bf16 all tuned+split", f"seed {seed}", "OK" if ok else "FAIL",
                  {k: f"{e:.1e}" for k, e in errs.items()}, flush=True)
        hstu_mod._FIXED_CONFIG = None
        save()
        if not all(c["ok"] for c in result["checks"].values()):
            print("WARNING: correctness check failed; timings below are of a wrong kernel", flush=True)

    rows = []
    for shape in args.shapes.split(","):
        if time.perf_counter() - start > args.budget_s:
            print(f"budget reached: skipping {shape}", flush=True)
            result["shapes"].append(dict(shape=shape, skipped="time budget of this run"))
            continue
        batch, n = (int(x) for x in shape.split("x"))
        entry = dict(shape=shape, B=batch, N=n, variants={})
        result["shapes"].append(entry)
        variants = VARIANTS + (EXTRA_VARIANTS if not rows and not args.no_extra else ())
        if args.variants:
            variants = tuple(args.variants.split(","))
        for variant in variants:
            hstu_mod._TILE_MAJOR = not variant.endswith(_HEADS_MAJOR)
            b = make_batch(batch, n, H, D, D, torch.bfloat16, seed=0, targets=16)
            flops = attention_flops(b["lengths"], H, D, D)
            entry["fwd_flops"] = flops
            rec = {}
            if variant == "reference":
                need = batch * H * n * n * 2 * 12
                if need > REF_MEM_LIMIT:
                    entry["variants"][variant] = {"skipped": f"OOM estimate ({need / 1e9:.0f} GB)"}
                    continue
                fwd, fwd_bwd, leaves = ref_fns(b, n)
            elif variant == "sdpa_flash":
                fwd, fwd_bwd, leaves = sdpa_fn(b, batch, n)
                rec["padded_fwd_flops"] = 2 * batch * H * 2 * D * n * n / 2
            else:
                fwd, fwd_bwd, leaves = ours_fns(b, n, variant)
                rec["first_call_fwd_ms"] = timed_first_call(fwd)  # compile + autotune
                rec["first_call_fwd_bwd_ms"] = timed_first_call(fwd_bwd)
                # A new batch, same length bucket: must neither re-tune nor recompile.
                b2 = make_batch(batch, n, H, D, D, torch.bfloat16, seed=1, targets=16)
                fwd2, fwd_bwd2, _ = ours_fns(b2, n, variant)
                rec["new_batch_first_call_fwd_bwd_ms"] = timed_first_call(fwd_bwd2)
                del b2, fwd2, fwd_bwd2
            try:
                t_f = bench(fwd, leaves)
                t_fb = bench(fwd_bwd, leaves)
            except torch.OutOfMemoryError:
                entry["variants"][variant] = {"skipped": "OOM"}
                continue
            rec.update(fwd_ms=t_f, fwd_bwd_ms=t_fb, fwd_tflops=flops / t_f * 1e-9,
                       fwd_bwd_tflops=3.5 * flops / t_fb * 1e-9)
            if variant == "sdpa_flash":
                rec["fwd_tflops_padded"] = rec["padded_fwd_flops"] / t_f * 1e-9
                rec["fwd_bwd_tflops_padded"] = 3.5 * rec["padded_fwd_flops"] / t_fb * 1e-9
            if variant not in ("reference", "sdpa_flash"):
                rec["best_fwd_config"] = str(hstu_mod._fwd_tuned.best_config)
                rec["best_bwd_config"] = str(hstu_mod._bwd_tuned.best_config)
                if variant in ("bias", "time", "pos"):
                    rec["best_bias_grad_config"] = str(hstu_mod._bias_bwd_tuned.best_config)
            entry["variants"][variant] = rec
            rows.append((shape, variant, t_f, t_fb, rec["fwd_tflops"], rec["fwd_bwd_tflops"]))
            print(f"{shape:>8} {variant:>10}: fwd {t_f:8.3f} ms {rec['fwd_tflops']:6.1f} TF/s | fwd+bwd "
                  f"{t_fb:8.3f} ms {rec['fwd_bwd_tflops']:6.1f} TF/s  {time.perf_counter() - start:.0f}s",
                  flush=True)
            del b, fwd, fwd_bwd, leaves
            torch.cuda.empty_cache()
            save()
    result["wall_s"] = time.perf_counter() - start
    save()
    print("\n| shape | variant | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for shape, variant, t_f, t_fb, tf, tfb in rows:
        print(f"| {shape} | {variant} | {t_f:.3f} | {tf:.0f} | {t_fb:.3f} | {tfb:.0f} |")


if __name__ == "__main__":
    main()
