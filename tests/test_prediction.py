"""`gr-lightning predict` streams top-K recommendations to Parquet/CSV; `test --ckpt_path` rebuilds the model."""

from __future__ import annotations

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from gr_lightning.cli import main
from gr_lightning.data import RetrievalDataModule, Synthetic
from tests.conftest import REPO_ROOT

DEMO = str(REPO_ROOT / "conf" / "demo.yaml")


@pytest.fixture
def checkpoint(mlflow_uri, tmp_path):
    main(["fit", "--config", DEMO, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
          "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--rich=false",
          f"--data.init_args.cache_dir={tmp_path / 'cache'}"])
    (ckpt,) = tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")
    return ckpt


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_predict_writes_top_k_per_user_in_input_order(checkpoint, tmp_path, fmt):
    out = tmp_path / f"preds.{fmt}"
    main(["predict", "--config", DEMO, f"--ckpt_path={checkpoint}", f"--prediction.output={out}",
          f"--prediction.format={fmt}", "--prediction.top_k=7", "--rich=false",
          f"--data.init_args.cache_dir={tmp_path / 'cache'}"])
    table = (pq.read_table(out) if fmt == "parquet" else pcsv.read_csv(out)).to_pandas()
    assert not list(tmp_path.glob(".preds*tmp*"))  # the temporary file was moved into place

    dm = RetrievalDataModule(Synthetic(seed=0), max_seq_len=64, cache_dir=str(tmp_path / "cache"))
    dm.setup("predict")
    users = np.concatenate([b.users.numpy() for b in dm.predict_dataloader()])
    assert len(table) == 7 * len(users)
    assert (table["user_id"].to_numpy()[::7] == dm.user_raw_ids()[users]).all()  # input order, raw ids
    assert (table["rank"].to_numpy() == np.tile(np.arange(1, 8), len(users))).all()
    scores = table["score"].to_numpy().reshape(-1, 7)
    assert (np.diff(scores, axis=1) <= 0).all()
    raw_items = dm.item_raw_ids()
    first = next(iter(dm.predict_dataloader()))
    history = set(raw_items[first.items[: int(first.offsets[1])].numpy()].tolist())
    assert history.isdisjoint(table["item_id"].to_numpy()[:7].tolist())  # history filtered


def test_test_subcommand_rebuilds_the_model_from_a_checkpoint(checkpoint, tmp_path, mlflow_uri):
    main(["test", "--config", DEMO, f"--ckpt_path={checkpoint}", "--rich=false",
          f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--trainer.limit_test_batches=1"])


def test_bad_prediction_format_is_rejected():
    from gr_lightning.prediction import PredictionWriter

    with pytest.raises(ValueError, match="format must be 'parquet' or 'csv'"):
        PredictionWriter(format="json")
