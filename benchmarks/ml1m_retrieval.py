"""Train shipped ML-1M configs on the partial MovieLens-1M and record quality and epoch time as JSON.

Each config runs through the real CLI (``gr-lightning fit``, which tests the best-validation checkpoint
at the end) in its own process and its own MLflow store; the numbers are read back from MLflow.

    python benchmarks/ml1m_retrieval.py --data-root ../shared/data/ml-1m \
        --configs conf/ml-1m/hstu-large.yaml conf/ml-1m/sasrec.yaml --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METRICS = ("hr_1", "hr_10", "hr_50", "hr_200", "ndcg_10", "ndcg_50", "ndcg_200", "mrr")


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


def _run_one(config: str, args: argparse.Namespace, workdir: Path) -> dict:
    uri = f"sqlite:///{workdir / 'mlruns.db'}"
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
    start = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, check=True)
    wall = time.perf_counter() - start

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    rid = run.info.run_id
    val = client.get_metric_history(rid, "val/ndcg_10")
    best = max(val, key=lambda m: m.value)
    epoch_s = [m.value for m in client.get_metric_history(rid, "time/epoch_s")]
    train_s = [m.value for m in client.get_metric_history(rid, "time/train_epoch_s")]
    return {
        "config": config,
        "command": " ".join(cmd[1:]),
        "epochs_run": len(val),
        "max_minutes": args.max_minutes,
        "best_val_epoch": sorted(m.step for m in val).index(best.step),
        "best_val_ndcg_10": best.value,
        "test": {k: run.data.metrics[f"test/{k}"] for k in METRICS},
        "seconds_per_epoch_median": statistics.median(epoch_s),
        "seconds_per_epoch_first": epoch_s[0],
        "train_seconds_per_epoch_median": statistics.median(train_s),
        "wall_seconds_total": wall,
    }


def main() -> None:
    """Parse arguments, run each config, write the JSON and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--ratings-file", default="ratings_users_1-2999.dat.gz")
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=101)
    parser.add_argument("--kernel", default="pytorch")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--max-minutes", type=int, default=0, help="cap on training time per config (0: none)")
    parser.add_argument("--out", required=True)
    args, args.extra = parser.parse_known_args()  # unknown arguments are CLI overrides for every run

    result = {"benchmark": "ml1m-half retrieval", "date": dt.date.today().isoformat(), **_device(),
              "data": f"{args.data_root}/{args.ratings_file}", "epochs": args.epochs, "kernel": args.kernel,
              "precision": args.precision, "runs": []}
    for config in args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            result["runs"].append(_run_one(config, args, Path(tmp)))
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n{'config':32} {'epochs':>6} {'best':>5} {'s/epoch':>8} " + " ".join(f"{k:>8}" for k in METRICS))
    for r in result["runs"]:
        print(f"{r['config']:32} {r['epochs_run']:6d} {r['best_val_epoch']:5d} {r['seconds_per_epoch_median']:8.2f} "
              + " ".join(f"{r['test'][k]:8.4f}" for k in METRICS))


if __name__ == "__main__":
    main()
