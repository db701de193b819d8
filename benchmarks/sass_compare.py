"""Compare the sm_90 SASS of the attention kernels between two revisions, without a GPU.

Compiles ``_hstu_fwd_kernel`` and the fused ``_hstu_bwd_kernel`` (bf16, d=128, no masks; no bias and both
tables; element dQ atomics), and the three backward passes of d=256 heads, of each revision's
``gr_lightning`` with the installed Triton for sm_90, with the TMA descriptors the runtime passes where a
revision has them (K, V in the forward and the dQ pass, Q, dO in the d=256 passes). Disassembles them
with the ``nvdisasm`` bundled with Triton and reports per kernel whether the instruction sequences are
identical, identical up to register names, or different (with the changed opcode counts). A check that a refactor left
already-timed kernels alone; not a timing::

    python benchmarks/sass_compare.py 545abbc HEAD
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: Kernel variants: (name, kernel, constants, warps, stages), in the tiles the H100 tuner picked at 32x4096
#: (``best_*_config`` in ``results/attention_h100_inv_scale.json``).
_BASE = dict(D_QK=128, D_V=128, BLOCK_DQK=128, BLOCK_DV=128, HAS_TARGETS=False, HAS_CONTEXT=False,
             HAS_WINDOW=False, PREC="tf32", UPCAST=False, FAST=True, FAST_LOG=True, TILE_MAJOR=True,
             DQ_TMA=False, WITH_DK=True, WITH_DV=True, WITH_DQ=True, KV_TMA=True, QO_TMA=False)
_NO_BIAS = dict(HAS_POS=False, HAS_TIME=False)
_BOTH = dict(HAS_POS=True, HAS_TIME=True)
_VARIANTS = [
    ("fwd_nobias", "fwd", dict(_NO_BIAS, BLOCK_M=128, BLOCK_N=64), 8, 3),
    ("fwd_both", "fwd", dict(_BOTH, BLOCK_M=64, BLOCK_N=64), 4, 2),
    ("bwd_nobias", "bwd", dict(_NO_BIAS, BLOCK_M=64, BLOCK_N=128), 8, 3),
    ("bwd_both", "bwd", dict(_BOTH, BLOCK_M=64, BLOCK_N=128), 8, 2),
]
#: The layer's head width (d = 256, no bias): the backward's three passes in the tiles of
#: ``results/layer_h100_silu_split.json``.
_WIDE = dict(_NO_BIAS, D_QK=256, D_V=256, BLOCK_DQK=256, BLOCK_DV=256, BLOCK_M=64, BLOCK_N=64)
_VARIANTS += [
    ("bwd_dv_d256", "bwd", dict(_WIDE, WITH_DK=False, WITH_DQ=False, QO_TMA=True), 4, 2),
    ("bwd_dk_d256", "bwd", dict(_WIDE, WITH_DV=False, WITH_DQ=False, QO_TMA=True), 4, 2),
    ("dq_d256", "dq", _WIDE, 8, 2),
]
_POINTERS = {"Offsets": "*i64", "NumTargets": "*i64", "Ts": "*i64", "NextTs": "*i64", "TimeBias": "*fp32",
             "DQ": "*fp32"}
#: TMA descriptor arguments (revisions since session 8): the constant that turns each on, and its tile rows
#: and columns as the runtime's ``_descriptor_block_hook`` sets them.
_DESCRIPTORS = {"KDesc": ("KV_TMA", "BLOCK_N", "BLOCK_DQK"), "VDesc": ("KV_TMA", "BLOCK_N", "BLOCK_DV"),
                "QDesc": ("QO_TMA", "BLOCK_M", "BLOCK_DQK"), "DODesc": ("QO_TMA", "BLOCK_M", "BLOCK_DV")}


def _dump(out_dir: str) -> None:
    """In a child process whose ``sys.path`` starts at one revision: write each variant's SASS text."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import gr_lightning.ops.triton.hstu_attention  # noqa: F401 (the module, not the function)

    mod = sys.modules["gr_lightning.ops.triton.hstu_attention"]
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    for name, which, consts, warps, stages in _VARIANTS:
        kernels = {"fwd": mod._hstu_fwd_kernel, "bwd": mod._hstu_bwd_kernel,
                   "dq": getattr(mod, "_hstu_dq_kernel", None)}
        kern = kernels[which]
        if kern is None:  # a revision before the dQ pass
            continue
        consts = {k: v for k, v in (_BASE | consts).items() if k in kern.arg_names}
        sig, attrs = {}, {}
        for i, arg in enumerate(kern.arg_names):
            if arg in consts:
                sig[arg] = "constexpr"
            elif arg in _DESCRIPTORS and consts.get(_DESCRIPTORS[arg][0]):
                _, rows, cols = _DESCRIPTORS[arg]
                sig[arg] = f"tensordesc<bf16[{consts[rows]}, {consts[cols]}]>"
            elif arg[0].isupper() and arg not in ("H", "MAX_LEN_BUCKET"):
                sig[arg] = _POINTERS.get(arg, "*bf16")
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif arg in ("alpha", "inv_scale"):
                sig[arg] = "fp32"
            else:
                sig[arg] = "i32"
                if arg.startswith("stride") or arg == "MAX_LEN_BUCKET":
                    attrs[(i,)] = [["tt.divisibility", 16]]
        src = ASTSource(fn=kern, signature=sig, attrs=attrs,
                        constexprs={(kern.arg_names.index(k),): v for k, v in consts.items()})
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=warps, num_stages=stages))
        cubin = Path(out_dir) / f"{name}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        text = subprocess.run([str(nvdisasm), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
        # one instruction per line, without addresses, encodings and comments
        lines = [re.sub(r"/\*[0-9a-f]*\*/|;.*", "", line).strip() for line in text.splitlines()]
        (Path(out_dir) / f"{name}.sass").write_text("\n".join(x for x in lines if x and not x.startswith(".")))


def _sass_of(rev: str, work: Path) -> Path:
    """Export ``rev``'s package and dump its SASS; returns the folder of ``<variant>.sass`` files."""
    tree = work / rev.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(["git", "archive", rev, "gr_lightning"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    env = os.environ | {"PYTHONPATH": str(tree), "TRITON_INTERPRET": "0"}
    subprocess.run([sys.executable, __file__, "--dump", str(tree)], env=env, check=True)
    return tree


def _compare(a: Path, b: Path) -> dict:
    result = {}
    for name, *_ in _VARIANTS:
        if not all((p / f"{name}.sass").exists() for p in (a, b)):
            continue
        x, y = ((p / f"{name}.sass").read_text().splitlines() for p in (a, b))
        opcodes = [collections.Counter(line.split()[0] if not line.startswith("@") else line.split()[1]
                                       for line in s) for s in (x, y)]
        unnamed = [[re.sub(r"\bU?R\d+\b", "R", line) for line in s] for s in (x, y)]
        if x == y:
            verdict = "identical"
        elif unnamed[0] == unnamed[1]:
            verdict = "identical up to register names"
        else:
            verdict = "different"
        changed = {op: [opcodes[0][op], opcodes[1][op]] for op in opcodes[0] | opcodes[1]
                   if opcodes[0][op] != opcodes[1][op]}
        result[name] = dict(verdict=verdict, instructions=[len(x), len(y)], changed_opcodes=changed)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs="*", help="two git revisions")
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dump:
        _dump(args.dump)
        return
    if len(args.revs) != 2:
        parser.error("give two revisions, e.g. 545abbc HEAD")
    with tempfile.TemporaryDirectory() as work:
        a, b = (_sass_of(rev, Path(work)) for rev in args.revs)
        revs = [subprocess.run(["git", "rev-parse", "--short", r], capture_output=True, text=True,
                               check=True).stdout.strip() for r in args.revs]
        import triton

        print(json.dumps(dict(revisions=revs, target="sm_90", triton=triton.__version__,
                              kernels=_compare(a, b)), indent=1))


if __name__ == "__main__":
    main()
