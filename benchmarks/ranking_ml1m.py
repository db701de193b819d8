"""Ranking on MovieLens-1M-half: HSTU with and without action tokens vs the item-mean-rating baseline.

Writes ``benchmarks/results/ranking_ml1m_half_<device>.json``. Usage::

    python benchmarks/ranking_ml1m.py [--epochs N] [--accelerator cpu|gpu] [--tag cpu] [CLI overrides ...]

Extra arguments (e.g. ``--model.init_args.optimizer.init_args.lr=0.002``) go to both HSTU runs and are recorded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from gr_lightning.cli import main
from gr_lightning.data import MovieLens1M, RankingDataModule
from gr_lightning.ranking.baselines import item_mean_auc
from gr_lightning.ranking.tasks import TaskSpec

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "ml-1m").resolve()


def run(name: str, extra: list[str], args: argparse.Namespace, uri: str) -> dict:
    start = time.perf_counter()
    main(["fit", "--config", str(ROOT / "conf/ml-1m/ranking.yaml"),
          f"--data.init_args.source.init_args.root={DATA}",
          "--data.init_args.source.init_args.ratings_file=ratings_users_1-2999.dat.gz",
          f"--data.init_args.cache_dir={args.cache}", f"--trainer.max_epochs={args.epochs}",
          f"--trainer.accelerator={args.accelerator}", "--rich=false",
          f"--trainer.logger.init_args.run_name={name}", f"--trainer.logger.init_args.tracking_uri={uri}", *extra])
    seconds = time.perf_counter() - start
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.mlflow.runName = '{name}'")
    metrics = runs[0].data.metrics
    return {"seconds": round(seconds, 1), **{k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")}}


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--cache", default=".cache/gr-lightning")
    args, overrides = parser.parse_known_args()
    uri = f"sqlite:///{Path(args.cache).resolve() / 'ranking-bench.db'}"
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    dm = RankingDataModule(MovieLens1M(str(DATA), "ratings_users_1-2999.dat.gz", actions=True, contextual=True),
                           max_seq_len=200, num_candidates=10, num_actions=6, cache_dir=args.cache)
    dm.setup()
    baseline = item_mean_auc(dm, TaskSpec("like", "binary", ">=4"), value="value")
    result = {
        "data": "ml-1m-half (users 1-2999)", "config": "conf/ml-1m/ranking.yaml", "epochs": args.epochs,
        "accelerator": args.accelerator,
        "item_mean_rating_baseline": {"test/auc_like": round(baseline, 4)},
        "overrides": overrides,
        "hstu": run("hstu-ranking", overrides, args, uri),
        "hstu_no_actions": run("hstu-ranking-no-actions", [*overrides, "--model.init_args.use_actions=false"],
                               args, uri),
    }
    result["margin_vs_baseline"] = round(result["hstu"]["test/auc_like"] - baseline, 4)
    no_actions = result["hstu_no_actions"]["test/auc_like"]
    result["margin_vs_no_actions"] = round(result["hstu"]["test/auc_like"] - no_actions, 4)
    out = ROOT / "benchmarks" / "results" / f"ranking_ml1m_half_{args.tag}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    cli()
