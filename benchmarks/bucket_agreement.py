"""How often the Triton kernels' temporal bucket differs from the reference's, on the GPU.

For bf16 and fp16 inputs the kernels bucket a gap with ``lg2.approx`` and one ``fma.rm`` (``time_code``
with FAST); the reference with float32 ``log`` and a multiply (``time_buckets``). Near a bucket boundary
the two can disagree by one. This counts the disagreements over fresh random integer gaps in three
ranges, for that path, for the fp32 path (``time_code`` without FAST: libdevice ``logf``, which must
agree exactly) and for the session-4 form (``lg2.approx``, a rounded multiply and a truncation), and
writes JSON:

    PYTHONPATH=$PWD python3 benchmarks/bucket_agreement.py --out benchmarks/results/bucket_agreement_h100.json
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch
import triton
import triton.language as tl

from gr_lightning.ops.pytorch.hstu_attention import TIME_BUCKET_WIDTH, time_buckets
from gr_lightning.ops.triton._common import TIME_CODE0, time_code

_LN2_OVER_WIDTH: tl.constexpr = tl.constexpr(0.6931471805599453 / TIME_BUCKET_WIDTH)


@triton.jit
def _current(G, Out, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(G + o, mask=o < n, other=1.0)
    tl.store(Out + o, time_code(g, True) - TIME_CODE0, mask=o < n)


@triton.jit
def _exact(G, Out, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(G + o, mask=o < n, other=1.0)
    tl.store(Out + o, time_code(g, False) - TIME_CODE0, mask=o < n)


@triton.jit
def _rounded_multiply(G, Out, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    g = tl.maximum(tl.load(G + o, mask=o < n, other=1.0), 1.0)
    lg2 = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [g], dtype=tl.float32, is_pure=True, pack=1)
    tl.store(Out + o, (lg2 * _LN2_OVER_WIDTH).to(tl.int32), mask=o < n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=1 << 24, help="gaps per range")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bucket_agreement.py needs a CUDA GPU (the kernels' lg2.approx is a GPU instruction)")
    result = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, triton=triton.__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  samples_per_range=args.samples, ranges=[])
    gen = torch.Generator(device="cuda").manual_seed(0)
    for lo, hi in [(1, 10**6), (10**6, 3 * 10**7), (3 * 10**7, 2 * 10**9)]:
        gaps = torch.randint(lo, hi, (args.samples,), device="cuda", generator=gen)
        ref = time_buckets(gaps, torch.zeros_like(gaps), 10**6).int()  # no upper clamp in reach
        entry = dict(gaps=[lo, hi])
        for name, kernel in (("time_code", _current), ("time_code_fp32", _exact),
                             ("rounded_multiply", _rounded_multiply)):
            out = torch.empty_like(ref)
            kernel[(triton.cdiv(args.samples, 1024),)](gaps.float(), out, args.samples, BLOCK=1024)
            bad = out != ref
            entry[name] = dict(mismatches=int(bad.sum()), fraction=float(bad.float().mean()),
                               max_abs_diff=int((out - ref).abs().max()), examples=gaps[bad][:5].tolist())
        result["ranges"].append(entry)
        print(entry, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
