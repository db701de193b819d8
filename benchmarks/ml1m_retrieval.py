"""Train shipped ML-1M configs on the partial MovieLens-1M and record quality and epoch time as JSON.

Each (config, seed) runs through the real CLI (``gr-lightning fit``, which tests the best-validation
checkpoint at the end) in its own process, temporary directory and MLflow store; the numbers are read back
from MLflow. One run per config with the config's own seed:

    python benchmarks/ml1m_retrieval.py --data-root ../shared/data/ml-1m \
        --configs conf/ml-1m/hstu-large.yaml conf/ml-1m/sasrec.yaml --out benchmarks/results/x.json

Several seeds (``--seed_everything=S`` appended to each run), up to ``--parallel`` runs at a time on the
same GPU; unknown arguments are CLI overrides passed to every run:

    python benchmarks/ml1m_retrieval.py --data-root .gr-data/ml-1m --configs conf/ml-1m/hstu-large.yaml \
        --kernel triton --seeds 0 1 2 --parallel 3 --model.init_args.cuda_graphs=true \
        --out benchmarks/results/x.json

The JSON is rewritten after every finished run. A failed run is recorded with its exit code and the tail of
its stderr, the others go on, and the script exits non-zero at the end. With two or more seeds the JSON gets a
per-config ``summary``: mean, sample standard deviation, standard error and n of every test metric. Runs that
share the GPU (``concurrent_runs`` > 1) do not measure solo epoch times: their seconds per epoch are labelled
"concurrent" here and in ``results_table.py``.

Two such files are compared per config and metric against an equivalence margin:

    python benchmarks/ml1m_retrieval.py --compare A.json B.json [--tolerance 0.005]

The primary analysis pairs the runs by seed: over the seeds that succeeded in both files, the mean of the
per-seed differences A - B, their sample standard deviation, standard error sd / sqrt(n) and a 95% Student-t
interval with n - 1 degrees of freedom. Both kernels take a seed's initial weights and batch order, so the
part of the seed-to-seed spread those cause cancels in each difference; seeds that succeeded in one file only
are left out of it (and listed). Beside it, a Welch comparison of all successful seeds of each file:
mean(A) - mean(B), Welch standard error and a 95% Student-t interval with Welch-Satterthwaite degrees of
freedom. For both, "supported" means the whole interval lies inside +-tolerance, "contradicted" that it
lies wholly outside, "undecided" anything else, including fewer than two pairs, or fewer than two successful
seeds on either side (no spread estimate).

``--cold-triton-cache`` gives each run an empty Triton cache of its own, so its first epoch includes every
compile and autotuning benchmark a new user's first run waits for; the JSON then counts, per run, the
compiled variants of each kernel.

``--resume`` keeps the successful runs already in ``--out`` (made with the same settings) and runs only the
missing or failed (config, seed) pairs, e.g. after a time limit stopped the first invocation.
"""

from __future__ import annotations

import argparse
import codecs
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

METRICS = ("hr_1", "hr_10", "hr_50", "hr_200", "ndcg_10", "ndcg_50", "ndcg_200", "mrr")
_SEED_RANGE = (0, 2**32 - 1)  # Lightning's seed_everything silently draws a random seed outside this range
_TAIL_CHARS = 4000  # how much of a failed run's stderr the JSON keeps
# What a resumed file must share with the invocation that adds runs to it.
_SAME_ON_RESUME = ("benchmark", "device", "torch", "triton", "data", "epochs", "kernel", "precision", "max_minutes",
                   "overrides", "cold_triton_cache")


def _device() -> dict[str, str]:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "absent"
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return info


def _cli_command(config: str, seed: int | None, args: argparse.Namespace, workdir: Path) -> list[str]:
    """The ``gr-lightning fit`` command line of one run; the seed, if any, comes last so that it wins."""
    cmd = [
        sys.executable, "-m", "gr_lightning", "fit", "--config", str(Path(config).resolve()),
        f"--data.init_args.source.init_args.root={Path(args.data_root).resolve()}",
        f"--data.init_args.source.init_args.ratings_file={args.ratings_file}",
        f"--data.init_args.cache_dir={workdir / 'cache'}",
        f"--trainer.max_epochs={args.epochs}", f"--trainer.precision={args.precision}", "--rich=false",
        *args.extra,
    ]
    if args.max_minutes:  # stop training gracefully (the best checkpoint is still tested) within the budget
        cmd.append(f"--trainer.max_time=00:00:{args.max_minutes:02d}:00")
    if "hstu" in Path(config).stem:
        cmd.append(f"--model.backbone.init_args.kernel={args.kernel}")
    if seed is not None:
        cmd.append(f"--seed_everything={seed}")
    return cmd


def _clean_tail(raw: bytes) -> str:
    """The last ``_TAIL_CHARS`` characters of a process's stderr, progress-bar redraws (``\\r``) collapsed."""
    lines = raw.decode(errors="replace").split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in lines)[-_TAIL_CHARS:]


def _run_cli(cmd: list[str], workdir: Path, env: dict[str, str], echo: bool) -> tuple[int, str]:
    """Run one CLI process to its end.

    Args:
        cmd: The command line.
        workdir: Its working directory.
        env: Its environment.
        echo: Pass its stdout and stderr through to ours (one run at a time); otherwise its stdout is
            discarded (concurrent runs would interleave) and only the stderr tail is kept.

    Returns:
        The exit code and the tail of its stderr.
    """
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=None if echo else subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = b""
    for chunk in iter(lambda: proc.stderr.read1(1 << 16), b""):
        if echo:
            sys.stderr.write(decoder.decode(chunk))
            sys.stderr.flush()
        tail = (tail + chunk)[-16 * _TAIL_CHARS:]
    proc.stderr.close()
    return proc.wait(), _clean_tail(tail)


def _read_mlflow(uri: str) -> dict:
    """Quality and epoch times of the single run in the MLflow store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    rid = run.info.run_id
    val = client.get_metric_history(rid, "val/ndcg_10")
    best = max(val, key=lambda m: m.value)
    epoch_s = [m.value for m in client.get_metric_history(rid, "time/epoch_s")]
    train_s = [m.value for m in client.get_metric_history(rid, "time/train_epoch_s")]
    return {
        "epochs_run": len(val),
        "best_val_epoch": sorted(m.step for m in val).index(best.step),
        "best_val_ndcg_10": best.value,
        "test": {k: run.data.metrics[f"test/{k}"] for k in METRICS},
        "seconds_per_epoch_median": statistics.median(epoch_s),
        "seconds_per_epoch_first": epoch_s[0],
        "train_seconds_per_epoch_median": statistics.median(train_s),
    }


def triton_compiled(cache_dir: Path) -> dict[str, int]:
    """The number of compiled variants of each kernel in a Triton cache directory, by kernel name.

    A variant (one per tuned configuration and specialisation) leaves one ``<name>.json`` of metadata in a
    folder of its own; ``__grp__*.json`` (Triton's index of a variant's files) and ``*.autotune.json``
    (cached tuning results) are not variants.
    """
    return dict(Counter(meta.stem for meta in sorted(cache_dir.glob("*/*.json"))
                        if not meta.name.startswith("__grp__") and not meta.name.endswith(".autotune.json")))


def _run_one(config: str, seed: int | None, args: argparse.Namespace, concurrent: int, t0: float) -> dict:
    """Train and test one (config, seed) in a fresh temporary directory; a failure becomes a ``failed`` entry."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        uri = f"sqlite:///{workdir / 'mlruns.db'}"
        cmd = _cli_command(config, seed, args, workdir)
        entry = {"config": config, "seed": seed, "command": " ".join(cmd[1:]), "concurrent_runs": concurrent,
                 "max_minutes": args.max_minutes}
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        if args.cold_triton_cache:  # nothing compiled before: the first epoch includes every compile and tuning
            env["TRITON_CACHE_DIR"] = str(workdir / "triton-cache")
        start = time.perf_counter()
        entry["start_offset_s"] = start - t0  # with concurrent runs, when this one began after the first
        code, tail = _run_cli(cmd, workdir, env, echo=concurrent == 1)
        wall = time.perf_counter() - start
        if args.cold_triton_cache:
            entry["triton_compiled"] = triton_compiled(workdir / "triton-cache")
        if code != 0:
            return {**entry, "failed": True, "returncode": code, "stderr_tail": tail, "wall_seconds_total": wall}
        try:
            measured = _read_mlflow(uri)
        except Exception as err:  # any unreadable store must not lose the other runs
            return {**entry, "failed": True, "returncode": code, "error": f"reading MLflow: {err!r}",
                    "stderr_tail": tail, "wall_seconds_total": wall}
    return {**entry, **measured, "wall_seconds_total": wall}


def _stats(values: list[float]) -> dict:
    """Mean, sample standard deviation (n - 1), standard error of the mean and n; no spread below n = 2."""
    n = len(values)
    if n == 0:
        return {"mean": None, "sd": None, "se": None, "n": 0}
    if n == 1:
        return {"mean": values[0], "sd": None, "se": None, "n": 1}
    sd = statistics.stdev(values)
    return {"mean": statistics.fmean(values), "sd": sd, "se": sd / math.sqrt(n), "n": n}


def _summaries(runs: list[dict]) -> dict[str, dict]:
    """Per config: seeds, failures and ``_stats`` of each test metric and of the median seconds per epoch."""
    out = {}
    for config in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == config]
        ok = [r for r in mine if not r.get("failed")]
        out[config] = {
            "seeds": [r.get("seed") for r in ok],
            "failed_seeds": [r.get("seed") for r in mine if r.get("failed")],
            "test": {k: _stats([r["test"][k] for r in ok]) for k in METRICS},
            "seconds_per_epoch_median": _stats([r["seconds_per_epoch_median"] for r in ok]),
        }
    return out


def _interval_verdict(diff: float, se: float, df: float, tolerance: float) -> dict:
    """The 95% Student-t interval ``diff +- t(0.975, df) * se`` and its verdict against +-``tolerance``."""
    from scipy.stats import t as student_t

    half = student_t.ppf(0.975, df) * se
    lo, hi = diff - half, diff + half
    if -tolerance <= lo and hi <= tolerance:
        verdict, reason = "supported", f"95% interval inside +-{tolerance:g}"
    elif lo > tolerance or hi < -tolerance:
        verdict, reason = "contradicted", f"95% interval outside +-{tolerance:g}"
    else:
        verdict, reason = "undecided", f"95% interval overlaps the +-{tolerance:g} boundary"
    return {"se": se, "df": df, "ci95": [lo, hi], "verdict": verdict, "reason": reason}


def _compare_stats(a: dict, b: dict, tolerance: float) -> dict:
    """Welch comparison of two ``_stats``: the difference of means, its SE, df, 95% interval and the verdict."""
    row = {"mean_a": a["mean"], "n_a": a["n"], "mean_b": b["mean"], "n_b": b["n"],
           "diff": None if a["mean"] is None or b["mean"] is None else a["mean"] - b["mean"]}
    if a["n"] < 2 or b["n"] < 2:
        return {**row, "se": None, "df": None, "ci95": None, "verdict": "undecided",
                "reason": "fewer than 2 successful seeds on a side: no standard error"}
    va, vb = a["se"] ** 2, b["se"] ** 2
    denominator = va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1)
    df = (va + vb) ** 2 / denominator if denominator > 0 else a["n"] + b["n"] - 2  # Welch-Satterthwaite
    return {**row, **_interval_verdict(row["diff"], math.sqrt(va + vb), df, tolerance)}


def _paired_stats(a: list[float], b: list[float], tolerance: float) -> dict:
    """Paired comparison of one metric over seeds that succeeded in both files (``a[i]`` and ``b[i]``: one seed).

    Args:
        a: File A's values, one per paired seed.
        b: File B's values for the same seeds, in the same order.
        tolerance: Equivalence margin on |mean(A - B)|.

    Returns:
        n pairs, the means of A and B over those seeds, the mean ``diff`` and sample ``sd`` of the differences,
        ``se = sd / sqrt(n)``, ``df = n - 1``, the 95% interval and the verdict.
    """
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    row = {"n": n, "mean_a": statistics.fmean(a) if n else None, "mean_b": statistics.fmean(b) if n else None,
           "diff": statistics.fmean(diffs) if n else None}
    if n < 2:
        return {**row, "sd": None, "se": None, "df": None, "ci95": None, "verdict": "undecided",
                "reason": f"{n} seed(s) succeeded in both files, fewer than 2: no standard error"}
    sd = statistics.stdev(diffs)
    return {**row, "sd": sd, **_interval_verdict(row["diff"], sd / math.sqrt(n), n - 1, tolerance)}


def _successful_by_seed(runs: list[dict], config: str) -> dict[int, dict]:
    """One config's successful runs keyed by seed; runs without a recorded seed cannot be paired and are left out.

    Raises:
        ValueError: A seed succeeded twice for the config (which of the two to pair would be arbitrary).
    """
    out: dict[int, dict] = {}
    for r in runs:
        if r["config"] != config or r.get("failed") or r.get("seed") is None:
            continue
        if r["seed"] in out:
            raise ValueError(f"{config}: seed {r['seed']} succeeded twice in one file; cannot pair it")
        out[r["seed"]] = r
    return out


def compare(a: dict, b: dict, tolerance: float = 0.005) -> dict[str, dict[str, Any]]:
    """Compare two result files config by config and metric by metric, paired by seed and by Welch.

    Configs are paired by name; two files of one config each are paired whatever their names.

    Args:
        a: Result JSON A.
        b: Result JSON B.
        tolerance: Equivalence margin on the difference A - B.

    Returns:
        ``{config: {"paired": {metric: _paired_stats row}, "paired_seeds": [...], "a_only_seeds": [...],
        "b_only_seeds": [...], "welch": {metric: _compare_stats row}}}``; the config key is A's name. The
        paired rows use the seeds that succeeded in both files; the ``*_only_seeds`` succeeded in one file
        only (absent or failed in the other). The Welch rows use every successful run of each file.

    Raises:
        ValueError: No config to pair, or a seed that succeeded twice for one config of a file.
    """
    sa, sb = _summaries(a["runs"]), _summaries(b["runs"])
    pairs = [(c, c) for c in sa if c in sb]
    if not pairs and len(sa) == len(sb) == 1:
        pairs = [(next(iter(sa)), next(iter(sb)))]
    if not pairs:
        raise ValueError(f"no config to compare: A has {sorted(sa)}, B has {sorted(sb)}")
    out = {}
    for ca, cb in pairs:
        by_a, by_b = _successful_by_seed(a["runs"], ca), _successful_by_seed(b["runs"], cb)
        seeds = sorted(by_a.keys() & by_b.keys())
        out[ca] = {
            "paired": {k: _paired_stats([by_a[s]["test"][k] for s in seeds], [by_b[s]["test"][k] for s in seeds],
                                        tolerance) for k in METRICS},
            "paired_seeds": seeds,
            "a_only_seeds": sorted(by_a.keys() - by_b.keys()),
            "b_only_seeds": sorted(by_b.keys() - by_a.keys()),
            "welch": {k: _compare_stats(sa[ca]["test"][k], sb[cb]["test"][k], tolerance) for k in METRICS},
        }
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval_cells(r: dict) -> tuple[str, str]:
    """The signed difference and the 95% interval of a comparison row as table cells."""
    diff = "-" if r["diff"] is None else f"{r['diff']:+.4f}"
    return diff, "-" if r["ci95"] is None else f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]"


def _print_compare(path_a: str, path_b: str, tolerance: float) -> None:
    a, b = (json.loads(Path(p).read_text()) for p in (path_a, path_b))
    for side, path, data in (("A", path_a, a), ("B", path_b, b)):
        print(f"{side}: {path}: kernel={data.get('kernel')} precision={data.get('precision')} "
              f"device={data.get('device')} seeds={data.get('seeds')}")
    for key in ("data", "epochs"):
        if a.get(key) != b.get(key):
            print(f"warning: the files differ in {key}: {a.get(key)!r} vs {b.get(key)!r}")
    for config, result in compare(a, b, tolerance).items():
        seeds = result["paired_seeds"]
        print(f"\n{config}\npaired by seed: {len(seeds)} pairs, seeds {seeds}; successful in A only: "
              f"{result['a_only_seeds']}, in B only: {result['b_only_seeds']} (not paired)")
        _print_rows("95% interval: mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n), d = A - B of one seed",
                    f"{'mean A':>7} {'mean B':>7} {'mean d':>8} {'sd(d)':>7}", result["paired"], tolerance,
                    _paired_cells)
        print("\nWelch, every successful seed of each file")
        _print_rows("95% interval: diff +- t(0.975, Welch df) * sqrt(se_A^2 + se_B^2)",
                    f"{'mean A':>7} {'nA':>3} {'mean B':>7} {'nB':>3} {'A-B':>8}", result["welch"], tolerance,
                    _welch_cells)


def _paired_cells(r: dict, diff: str) -> str:
    return f"{_fmt(r['mean_a']):>7} {_fmt(r['mean_b']):>7} {diff:>8} {_fmt(r['sd']):>7}"


def _welch_cells(r: dict, diff: str) -> str:
    return f"{_fmt(r['mean_a']):>7} {r['n_a']:3d} {_fmt(r['mean_b']):>7} {r['n_b']:3d} {diff:>8}"


def _print_rows(formula: str, head: str, rows: dict[str, dict], tolerance: float, cells) -> None:
    """One comparison table: its interval formula, a header, and per metric ``cells(row, diff)`` then the
    standard error, degrees of freedom, interval and verdict."""
    print(formula)
    print(f"{'metric':9} {head} {'SE':>7} {'df':>5} {'95% interval':>20}  verdict (|A-B| <= {tolerance:g})")
    for metric, r in rows.items():
        diff, ci = _interval_cells(r)
        print(f"{metric:9} {cells(r, diff)} {_fmt(r['se']):>7} {_fmt(r['df'], 1):>5} {ci:>20}  "
              f"{r['verdict']}: {r['reason']}")


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; unknown ones (``--a.b=c``) are CLI overrides kept in ``extra``."""
    # allow_abbrev=False: a pass-through override must never be taken for an abbreviation of ours.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--data-root")
    parser.add_argument("--ratings-file", default="ratings_users_1-2999.dat.gz")
    parser.add_argument("--configs", nargs="+")
    parser.add_argument("--epochs", type=int, default=101)
    parser.add_argument("--kernel", default="pytorch")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--max-minutes", type=int, default=0, help="cap on training time per run (0: none)")
    parser.add_argument("--seeds", type=int, nargs="+", help="one run per config and seed (default: the config's)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time, sharing the GPU (default 1)")
    parser.add_argument("--cold-triton-cache", action="store_true",
                        help="each run compiles into an empty Triton cache of its own (its first epoch then includes "
                             "every compile and tuning); the JSON counts the compiled variants per kernel")
    parser.add_argument("--out")
    parser.add_argument("--resume", action="store_true",
                        help="keep the successful runs already in --out (same settings) and run only the others")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="compare two result files")
    parser.add_argument("--tolerance", type=float, default=0.005, help="equivalence margin for --compare")
    args, args.extra = parser.parse_known_args(argv)
    if args.compare:
        if args.extra:
            parser.error(f"--compare takes no training overrides, got {args.extra}")
        if not args.tolerance > 0:
            parser.error(f"--tolerance must be > 0, got {args.tolerance}")
        return args
    missing = [f"--{k.replace('_', '-')}" for k in ("data_root", "configs", "out") if not getattr(args, k)]
    if missing:
        parser.error(f"{', '.join(missing)} required (unless --compare)")
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.max_minutes < 0:
        parser.error(f"--max-minutes must be >= 0, got {args.max_minutes}")
    if len(set(args.configs)) != len(args.configs):
        parser.error(f"--configs lists a config twice: {args.configs}")
    if args.seeds is not None:
        if len(set(args.seeds)) != len(args.seeds):
            parser.error(f"--seeds lists a seed twice: {args.seeds}")
        bad = [s for s in args.seeds if not _SEED_RANGE[0] <= s <= _SEED_RANGE[1]]
        if bad:
            parser.error(f"--seeds must lie in [{_SEED_RANGE[0]}, {_SEED_RANGE[1]}], got {bad}")
        if any(e.startswith("--seed_everything") for e in args.extra):
            parser.error("--seeds and a --seed_everything override both set the seed; give one")
    return args


def _write(path: str, result: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)  # a reader (or a kill) never sees half a file


def _print_table(result: dict) -> None:
    n = result["concurrent_runs"]
    seconds = "s/epoch" if n == 1 else f"s/epoch ({n} concurrent, not solo)"
    width = max(8, len(seconds))
    print(f"\n{'config':32} {'seed':>6} {'epochs':>6} {'best':>5} {seconds:>{width}} "
          + " ".join(f"{k:>8}" for k in METRICS))
    for r in result["runs"]:
        seed = "-" if r["seed"] is None else str(r["seed"])
        if r.get("failed"):
            print(f"{r['config']:32} {seed:>6} FAILED (exit {r['returncode']}) {r.get('error', '')}")
            continue
        print(f"{r['config']:32} {seed:>6} {r['epochs_run']:6d} {r['best_val_epoch']:5d} "
              f"{r['seconds_per_epoch_median']:{width}.2f} " + " ".join(f"{r['test'][k]:8.4f}" for k in METRICS))
    for config, s in result.get("summary", {}).items():
        n_ok = s["test"]["hr_10"]["n"]
        print(f"\n{config}: mean +- sample sd over {n_ok} seeds {s['seeds']}"
              + (f" ({len(s['failed_seeds'])} failed: {s['failed_seeds']})" if s["failed_seeds"] else ""))
        for k in METRICS:
            st = s["test"][k]
            print(f"  {k:9} {_fmt(st['mean'])} +- {_fmt(st['sd'])} (se {_fmt(st['se'])})")


def _resumed_runs(args: argparse.Namespace, result: dict) -> list[dict]:
    """The successful runs already in ``--out`` when resuming, after checking they were made the same way."""
    path = Path(args.out)
    if not args.resume or not path.exists():
        return []
    old = {"cold_triton_cache": False, **json.loads(path.read_text())}  # files written before that option
    for key in _SAME_ON_RESUME:
        if old.get(key) != result[key]:
            sys.exit(f"--resume: {path} has {key}={old.get(key)!r}, this invocation {result[key]!r}; "
                     "write to another --out")
    if (old.get("seeds") is None) != (args.seeds is None):
        sys.exit(f"--resume: {path} and this invocation differ in using --seeds; write to another --out")
    return [r for r in old["runs"] if not r.get("failed")]


def _update(result: dict, kept: list[dict], done: dict[int, dict]) -> None:
    """Refresh the runs (grouped by config, in seed order), the largest concurrency among them and the summary."""
    runs = [*kept, *(done[j] for j in sorted(done))]
    configs = list(dict.fromkeys(r["config"] for r in runs))
    seeds = result["seeds"] or [None]
    result["runs"] = sorted(runs, key=lambda r: (configs.index(r["config"]), seeds.index(r["seed"])))
    result["concurrent_runs"] = max([result["concurrent_runs"], *(r["concurrent_runs"] for r in result["runs"])])
    if len(result["seeds"] or []) >= 2:
        result["summary"] = _summaries(result["runs"])


def main(argv: list[str] | None = None) -> None:
    """Run every (config, seed), writing the JSON after each; or compare two result files."""
    args = _parse_args(argv)
    if args.compare:
        _print_compare(*args.compare, args.tolerance)
        return
    result = {"benchmark": "ml1m-half retrieval", "date": dt.date.today().isoformat(), **_device(),
              "data": f"{args.data_root}/{args.ratings_file}", "epochs": args.epochs, "kernel": args.kernel,
              "precision": args.precision, "max_minutes": args.max_minutes, "overrides": args.extra,
              "cold_triton_cache": args.cold_triton_cache, "seeds": args.seeds, "concurrent_runs": 1, "runs": []}
    kept = _resumed_runs(args, result)
    finished = {(r["config"], r["seed"]) for r in kept}
    plan = [(c, s) for c in args.configs for s in (args.seeds or [None]) if (c, s) not in finished]
    if args.resume:
        print(f"--resume: {len(kept)} finished runs kept from {args.out}, {len(plan)} to run", flush=True)
    if args.seeds is not None:
        result["seeds"] = list(dict.fromkeys([*(r["seed"] for r in kept), *args.seeds]))
    concurrent = min(args.parallel, max(len(plan), 1))
    result["concurrent_runs"] = concurrent
    done: dict[int, dict] = {}
    _update(result, kept, done)
    _write(args.out, result)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        futures = {pool.submit(_run_one, config, seed, args, concurrent, t0): i
                   for i, (config, seed) in enumerate(plan)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                entry = future.result()
            except Exception as err:  # e.g. the process could not start: record it, keep the others
                entry = {"config": plan[i][0], "seed": plan[i][1], "concurrent_runs": concurrent, "failed": True,
                         "returncode": None, "error": repr(err)}
            done[i] = entry
            _update(result, kept, done)
            _write(args.out, result)
            failed = entry.get("failed")
            status = f"FAILED (exit {entry['returncode']})" if failed else f"hr_10={entry['test']['hr_10']:.4f}"
            print(f"[{len(done)}/{len(plan)}] {entry['config']} seed={entry['seed']}: {status}", flush=True)
    _print_table(result)
    failed = [r for r in result["runs"] if r.get("failed")]
    if failed:
        for r in failed:
            print(f"\nFAILED {r['config']} seed={r['seed']} (exit {r['returncode']}) {r.get('error', '')}\n"
                  f"{r.get('stderr_tail', '')}", file=sys.stderr)
        sys.exit(f"{len(failed)} of {len(result['runs'])} runs failed; the others are in {args.out} "
                 "(rerun with --resume to retry only the failed ones)")


if __name__ == "__main__":
    main()
