"""`gr-lightning predict` streams top-K recommendations to Parquet/CSV; `test --ckpt_path` rebuilds the model."""

from __future__ import annotations

from functools import partial

import lightning as L
import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

from gr_lightning.analysis import load_model
from gr_lightning.batch import JaggedBatch
from gr_lightning.cli import main
from gr_lightning.data import RetrievalDataModule, Synthetic
from gr_lightning.module import GRModule
from gr_lightning.prediction import PredictionWriter, predictions_table
from gr_lightning.zoo.hstu import HSTU
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

    # Brute force on the first batch with the checkpoint's weights: full score matrix, history masked, sorted.
    model = load_model(checkpoint)
    with torch.no_grad():
        scores = model.score_catalogue(first).double()  # (B, num_items + 1)
    for b in range(first.batch_size):
        seen = set(first.items[int(first.offsets[b]) : int(first.offsets[b + 1])].tolist()) | {0}
        ranked = [i for i in scores[b].argsort(descending=True, stable=True).tolist() if i not in seen][:7]
        assert (table["item_id"].to_numpy()[7 * b : 7 * b + 7] == raw_items[ranked]).all()
        np.testing.assert_allclose(table["score"].to_numpy()[7 * b : 7 * b + 7], scores[b, ranked].numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_test_subcommand_rebuilds_the_model_from_a_checkpoint(checkpoint, tmp_path, mlflow_uri):
    main(["test", "--config", DEMO, f"--ckpt_path={checkpoint}", "--rich=false",
          f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--trainer.limit_test_batches=1"])


def test_bad_prediction_settings_are_rejected():
    with pytest.raises(ValueError, match="format must be 'parquet' or 'csv'"):
        PredictionWriter(format="json")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        PredictionWriter(chunk_size=0)


def _tiny_retrieval(tmp_path, **model_kwargs) -> tuple[RetrievalDataModule, GRModule]:
    dm = RetrievalDataModule(Synthetic(num_users=50, num_items=30, seed=2), max_seq_len=16, eval_batch_size=8,
                             cache_dir=str(tmp_path / "cache"))
    torch.manual_seed(0)
    backbone = partial(HSTU, num_blocks=1, num_heads=1, attention_dim=8, linear_dim=8)
    return dm, GRModule(backbone, num_items=dm.num_items, max_seq_len=16, embedding_dim=8, **model_kwargs)


class _FileSizes(L.Callback):
    """Size of the writer's temporary file after every predict batch."""

    def __init__(self, writer: PredictionWriter) -> None:
        self.writer, self.sizes = writer, []

    def on_predict_batch_end(self, *args, **kwargs) -> None:
        self.sizes.append(self.writer._tmp.stat().st_size)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_rows_reach_the_file_batch_by_batch(tmp_path, fmt):
    dm, model = _tiny_retrieval(tmp_path)
    writer = PredictionWriter(str(tmp_path / f"out.{fmt}"), format=fmt, top_k=4, chunk_size=7)
    probe = _FileSizes(writer)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[writer, probe])
    trainer.predict(model, datamodule=dm, return_predictions=False)
    assert len(probe.sizes) == 7  # 50 users in batches of 8
    assert all(b > a for a, b in zip(probe.sizes, probe.sizes[1:], strict=False))  # streamed, not held back
    assert model.predict_top_k == 4 and model.predict_chunk_size == 7
    table = (pq.read_table if fmt == "parquet" else pcsv.read_csv)(tmp_path / f"out.{fmt}")
    assert table.num_rows == 4 * 50


def test_a_user_with_few_items_left_gets_fewer_rows():
    torch.manual_seed(0)
    model = GRModule(partial(HSTU, num_blocks=1, num_heads=1, attention_dim=8, linear_dim=8), num_items=6,
                     max_seq_len=8, embedding_dim=8).eval()
    model.predict_top_k = 5
    batch = JaggedBatch.from_sequences([[1, 2, 3, 4], [6]])
    batch.users = torch.tensor([3, 9])
    out = model.predict_step(batch, 0)
    assert out["user_id"].tolist() == [3, 3] + [9] * 5
    assert out["rank"].tolist() == [1, 2, 1, 2, 3, 4, 5]
    assert sorted(out["item_id"][:2].tolist()) == [5, 6] and 6 not in out["item_id"][2:].tolist()


def test_prediction_columns_are_checked():
    good = {"user_id": torch.tensor([0, 0]), "score": torch.rand(2, dtype=torch.bfloat16)}
    table = predictions_table(good, {"user_id": np.array([70, 71])})
    assert table.column("user_id").to_pylist() == [70, 70] and str(table.schema.field("score").type) == "float"
    with pytest.raises(ValueError, match="'score' must be a 1-D tensor"):
        predictions_table({"user_id": torch.tensor([0, 0]), "score": torch.rand(2, 3)})
    with pytest.raises(ValueError, match="differ in length"):
        predictions_table({"user_id": torch.tensor([0, 0]), "score": torch.rand(3)})
    with pytest.raises(ValueError, match="dict of columns"):
        predictions_table([torch.tensor([0])])


def test_a_failed_predict_leaves_no_file(tmp_path):
    dm, model = _tiny_retrieval(tmp_path)
    calls = []

    def failing_step(batch, batch_idx):
        calls.append(batch_idx)
        if batch_idx == 2:
            raise RuntimeError("boom")
        return GRModule.predict_step(model, batch, batch_idx)

    model.predict_step = failing_step
    writer = PredictionWriter(str(tmp_path / "out.parquet"))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[writer])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.predict(model, datamodule=dm, return_predictions=False)
    assert calls == [0, 1, 2]
    assert list(tmp_path.glob("*out.parquet*")) == []
