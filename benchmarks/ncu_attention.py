"""One forward+backward of the fused attention inside a CUDA profiler range, for Nsight Compute.

A diagnosis tool, not a timer: the tuner runs first, outside the range, so that ``ncu`` sees only the
kernels of one tuned step. On a GPU::

    ncu --profile-from-start off --kernel-name regex:bias_bwd --set full --import-source yes \\
        -o bias_grad python3 benchmarks/ncu_attention.py --variant bias --shape 32x4096
"""

from __future__ import annotations

import argparse

import torch
from bench_attention import D, H, make_batch, ours_fns  # benchmarks/ is on sys.path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="bias", help="a bench_attention.py variant of ours")
    parser.add_argument("--shape", default="32x4096", help="BxN")
    parser.add_argument("--head-dim", type=int, default=D, help="d_qk = d_v")
    args = parser.parse_args()
    batch, n = (int(x) for x in args.shape.split("x"))
    b = make_batch(batch, n, H, args.head_dim, args.head_dim, torch.bfloat16, seed=0, targets=16)
    _, fwd_bwd, leaves = ours_fns(b, n, args.variant)
    for _ in range(2):  # compile and tune outside the profiled range
        fwd_bwd()
    for t in leaves:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    fwd_bwd()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
