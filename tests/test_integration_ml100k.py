"""Acceptance: HSTU trained a few epochs on real MovieLens-100K beats the most-popular baseline clearly."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from gr_lightning.baselines import most_popular_metrics
from gr_lightning.cli import main
from gr_lightning.data import MovieLens100K, RetrievalDataModule
from tests.conftest import REPO_ROOT

EPOCHS = 8


@pytest.mark.slow
def test_hstu_on_ml100k_beats_most_popular(data_root, cache_root, mlflow_uri):
    main([
        "fit", "--config", str(REPO_ROOT / "conf" / "ml-1m" / "hstu.yaml"),
        "--data.init_args.source=gr_lightning.data.MovieLens100K",
        f"--data.init_args.source.init_args.root={data_root / 'ml-100k'}",
        f"--data.init_args.cache_dir={cache_root}", "--trainer.accelerator=cpu",
        f"--trainer.max_epochs={EPOCHS}", "--data.init_args.batch_size=64", "--rich=false",
    ])
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    model_hr10 = run.data.metrics["test/hr_10"]

    dm = RetrievalDataModule(MovieLens100K(root=str(data_root / "ml-100k")), max_seq_len=200,
                             cache_dir=str(cache_root))
    dm.setup("test")
    popular_hr10 = float(most_popular_metrics(dm.item_counts(), dm.test_dataloader())["hr_10"])
    print(f"ML-100K test HR@10: HSTU {model_hr10:.4f} vs most-popular {popular_hr10:.4f}")
    assert model_hr10 >= 1.3 * popular_hr10 and model_hr10 - popular_hr10 >= 0.02
