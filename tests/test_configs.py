"""Every shipped YAML config runs: one training step, one validation batch, the test of the best checkpoint."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from gr_lightning.cli import main
from tests.conftest import REPO_ROOT

CONFIGS = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "conf").rglob("*.yaml"))


def _small_data_args(config: str, data: Path) -> list[str]:
    """Point each config's source at the small real data on this machine."""
    src = "--data.init_args.source"
    if config.startswith("conf/ml-1m/"):
        return [f"{src}.init_args.root={data / 'ml-1m'}", f"{src}.init_args.ratings_file=ratings_users_1-2999.dat.gz"]
    if config.startswith("conf/ml-20m/"):  # ML-20M is not on this machine: same reader family, ML-100K
        return [f"{src}=gr_lightning.data.MovieLens100K", f"{src}.init_args.root={data / 'ml-100k'}"]
    if config.startswith("conf/kuairand/"):  # KuaiRand is not on this machine: a tiny file in its format
        from tests.data.test_ranking_sources import kuairand_files

        root = kuairand_files(Path(tempfile.mkdtemp(prefix="kuairand-")))
        return [f"{src}.init_args.root={root}", "--data.init_args.num_candidates=2",
                f"{src}.init_args.context_columns=[user_active_degree,is_live_streamer]"]
    if config.startswith("conf/amzn-books/"):  # Books is not on this machine: a real Amazon 5-core set
        return [f"{src}.init_args.root={data / 'amazon-2014-musical-instruments-5core'}",
                f"{src}.init_args.file=Musical_Instruments.json.gz"]
    return []


def test_every_config_is_covered():
    assert "conf/demo.yaml" in CONFIGS
    for family in ("ml-1m", "ml-20m", "amzn-books"):
        for model in ("hstu", "hstu-large", "sasrec"):
            assert f"conf/{family}/{model}.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_config_runs_one_step(config, data_root, cache_root, mlflow_uri):
    first_line, second_line = (REPO_ROOT / config).read_text().splitlines()[:2]
    assert first_line.startswith("# ") and f"--config {config}" in second_line, "config must say how to run it"
    main([
        "fit", "--config", str(REPO_ROOT / config), *_small_data_args(config, data_root),
        f"--data.init_args.cache_dir={cache_root}", "--data.init_args.batch_size=8",
        "--data.init_args.eval_batch_size=16", "--trainer.accelerator=cpu", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
        "--trainer.num_sanity_val_steps=0", "--trainer.log_every_n_steps=1", "--rich=false",
    ])
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert math.isfinite(run.data.metrics["train/loss"])
    ranking = "ranking" in config  # ranking configs report per-task AUC instead of retrieval metrics
    assert 0.0 <= run.data.metrics["test/auc" if ranking else "test/hr_10"] <= 1.0
    assert ("val/auc" if ranking else "val/ndcg_10") in run.data.metrics
