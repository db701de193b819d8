"""Acceptance of the ranking demo: wall time of `gr-lightning fit --config conf/demo-ranking.yaml` and each
task's test AUC against the generator's Bayes-optimal AUC on the same test candidates.

Writes ``benchmarks/results/ranking_demo_<tag>.json``. Usage: ``python benchmarks/ranking_demo.py --tag cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from gr_lightning.cli import main
from gr_lightning.ranking.bayes import bayes_optimal_auc

ROOT = Path(__file__).resolve().parents[1]


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--workdir", default="/tmp/gr-ranking-demo")
    args, extra = parser.parse_known_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    uri = f"sqlite:///{work / 'mlruns.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    start = time.perf_counter()
    main(["fit", "--config", str(ROOT / "conf/demo-ranking.yaml"), "--rich=false", *extra])
    seconds = time.perf_counter() - start
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             order_by=["attributes.start_time DESC"])[0]
    bayes = bayes_optimal_auc(ROOT / "conf/demo-ranking.yaml", cache_dir=str(work / ".cache/gr-lightning"))
    tasks = {name: {"model": round(run.data.metrics[f"test/auc_{name}"], 4), "bayes": round(auc, 4),
                    "gap": round(auc - run.data.metrics[f"test/auc_{name}"], 4)} for name, auc in bayes.items()}
    result = {"command": "gr-lightning fit --config conf/demo-ranking.yaml", "seconds": round(seconds, 1),
              "tasks": tasks, "max_gap": max(t["gap"] for t in tasks.values())}
    out = ROOT / "benchmarks" / "results" / f"ranking_demo_{args.tag}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    cli()
