"""The ``gr-lightning`` command: zoo listing, config printing, the demo run end to end."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from gr_lightning.baselines import most_popular_metrics
from gr_lightning.cli import main
from tests.conftest import REPO_ROOT

DEMO = str(REPO_ROOT / "conf" / "demo.yaml")


def test_zoo_lists_every_backbone(capsys):
    main(["zoo"])
    out = capsys.readouterr().out
    assert "hstu" in out and "gr_lightning.zoo.hstu.HSTU" in out
    assert "sasrec" in out and "SASRec" in out


def test_print_config_resolves_the_demo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO, "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["backbone"]["class_path"] == "gr_lightning.zoo.hstu.HSTU"
    assert config["model"]["init_args"]["backbone"]["init_args"]["num_blocks"] == 2
    assert config["data"]["init_args"]["source"]["class_path"].endswith("Synthetic")
    assert "num_items" not in config["model"]["init_args"]  # linked from the DataModule, not written by hand


def test_backbone_by_short_class_name(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO, "--model.init_args.backbone=SASRec", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["backbone"]["class_path"] == "gr_lightning.zoo.sasrec.SASRec"


def test_bad_config_value_is_reported(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO, "--model.init_args.embedding_dim=wide"])
    assert exit_info.value.code != 0
    assert "embedding_dim" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_fit_tracks_validation_and_test_and_beats_popularity(mlflow_uri, tmp_path):
    """Acceptance: the demo run holds val + test metrics in MLflow, test HR@10 >= 3x most-popular.

    Its training steps that do not log wait for no device value (the recorder fails the run otherwise).
    """
    main(["fit", "--config", DEMO, "--rich=false", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
          "--trainer.callbacks+=tests.host_reads.HostReadsRecorder", "--trainer.callbacks.init_args.fail=true"])

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    metrics = run.data.metrics
    for key in ("val/hr_10", "val/ndcg_10", "val/mrr", "test/hr_10", "test/ndcg_10", "test/hr_200", "test/mrr",
                "train/loss", "train/loss_epoch", "time/epoch_s"):
        assert key in metrics, key
    assert run.data.params["model.init_args.backbone.class_path"] == "gr_lightning.zoo.hstu.HSTU"
    assert run.data.tags["best_checkpoint"].endswith(".ckpt")
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in artifacts
    history = client.get_metric_history(run.info.run_id, "val/ndcg_10")
    assert len(history) == 6  # one per epoch

    # The most-popular baseline on the very same split and evaluation rules.
    from gr_lightning.data import RetrievalDataModule, Synthetic

    config = yaml.safe_load(Path(DEMO).read_text())["data"]["init_args"]
    dm = RetrievalDataModule(Synthetic(seed=0), max_seq_len=config["max_seq_len"], cache_dir=str(tmp_path / "cache"))
    dm.setup("test")
    popular = most_popular_metrics(dm.item_counts(), dm.test_dataloader())
    print(f"demo test HR@10 {metrics['test/hr_10']:.4f} vs most-popular {float(popular['hr_10']):.4f}")
    assert metrics["test/hr_10"] >= 3 * float(popular["hr_10"])
    assert mlflow.get_tracking_uri() == mlflow_uri


def test_resuming_into_the_same_mlflow_run(mlflow_uri, tmp_path):
    """A resumed fit logs into the run it continues (run_id), keeping the original params."""
    common = ["--config", DEMO, "--rich=false", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
              "--trainer.limit_test_batches=1", f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
    main(["fit", *common, "--trainer.max_epochs=1"])
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    (ckpt,) = tmp_path.glob(f"outputs/*/{run.info.run_id}/checkpoints/last.ckpt")
    main(["fit", *common, "--trainer.max_epochs=2", f"--ckpt_path={ckpt}",
          f"--trainer.logger.init_args.run_id={run.info.run_id}"])
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    assert len(client.get_metric_history(run.info.run_id, "val/ndcg_10")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "config-resumed.yaml"} <= artifacts
