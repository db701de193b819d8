"""Ranking predictions: one row per (user, candidate), scores equal to the model's forward, in user order."""

from __future__ import annotations

import lightning as L
import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch

from gr_lightning.cli import main
from gr_lightning.data import RankingDataModule, SyntheticRanking
from gr_lightning.prediction import PredictionWriter
from gr_lightning.ranking import RankingModule, TaskSpec
from gr_lightning.zoo.hstu import HSTU
from tests.conftest import REPO_ROOT

DEMO_RANKING = str(REPO_ROOT / "conf" / "demo-ranking.yaml")
TASKS = [TaskSpec("click", "binary", "bit:0"), TaskSpec("like", "binary", "bit:1"),
         TaskSpec("level", "regression", "value", 0.5)]


def _data_and_model(tmp_path) -> tuple[RankingDataModule, RankingModule]:
    dm = RankingDataModule(SyntheticRanking(num_users=90, num_items=30, min_len=12, max_len=30, seed=5),
                           max_seq_len=16, num_candidates=3, num_actions=8, eval_batch_size=16,
                           cache_dir=str(tmp_path / "cache"))
    torch.manual_seed(0)
    backbone = lambda d, n: HSTU(d, n, num_blocks=1, num_heads=2, attention_dim=8, linear_dim=8, dropout=0.0)  # noqa: E731
    model = RankingModule(backbone, TASKS, num_items=dm.num_items, max_seq_len=16, data_spec=dm.ranking_spec,
                          embedding_dim=16, input_dropout=0.0)
    return dm, model


def test_predictions_equal_the_forward_in_user_order(tmp_path):
    dm, model = _data_and_model(tmp_path)
    out = tmp_path / "ranking.parquet"
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[PredictionWriter(str(out))])
    trainer.predict(model, datamodule=dm, return_predictions=False)
    table = pq.read_table(out).to_pandas()
    assert list(table.columns) == ["user_id", "item_id", "timestamp", "score_click", "score_like", "score_level",
                                   "label_click", "label_like", "label_level"]

    # Reference: the forward on the length-grouped test batches (other batch mates, other order).
    model.eval()
    rows: dict[str, list[np.ndarray]] = {"user": [], "item": [], "time": [], "pred": [], "label": []}
    with torch.no_grad():
        for batch in dm.test_dataloader():
            pred = model(batch)  # (sum_K, T) logits of binary tasks
            rows["pred"].append(torch.where(model.is_binary, torch.sigmoid(pred), pred).numpy())
            rows["user"].append(batch.users.repeat_interleave(batch.num_candidates).numpy())
            rows["item"].append(batch.candidates.numpy())
            rows["time"].append(batch.candidate_timestamps.numpy())
            rows["label"].append(model.task_labels(batch.labels).numpy())
    ref = {key: np.concatenate(value) for key, value in rows.items()}
    split_users = dm.split("test").users
    assert not np.array_equal(np.unique(ref["user"], return_index=True)[1], np.arange(0, len(ref["user"]), 3))
    position = np.searchsorted(split_users, ref["user"])  # split users are sorted: input order
    order = np.argsort(position, kind="stable")  # (rows,) the reference in user order, candidates in order
    assert len(table) == 3 * len(split_users)
    assert (table["user_id"].to_numpy() == dm.user_raw_ids()[np.repeat(split_users, 3)]).all()
    assert (table["item_id"].to_numpy() == dm.item_raw_ids()[ref["item"][order]]).all()
    assert (table["timestamp"].to_numpy() == ref["time"][order]).all()
    scores = table[["score_click", "score_like", "score_level"]].to_numpy()
    np.testing.assert_allclose(scores, ref["pred"][order], rtol=1e-5, atol=1e-6)
    assert ((scores[:, :2] > 0) & (scores[:, :2] < 1)).all()  # probabilities for binary tasks
    assert (table[["label_click", "label_like", "label_level"]].to_numpy() == ref["label"][order]).all()


def test_predict_cli_on_the_ranking_demo(mlflow_uri, tmp_path):
    common = ["--config", DEMO_RANKING, "--rich=false", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
              "--data.init_args.source.init_args.num_users=120"]
    main(["fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
          "--trainer.limit_val_batches=1", "--test_after_fit=false"])
    (ckpt,) = tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")
    out = tmp_path / "preds" / "ranking.csv"
    main(["predict", *common, f"--ckpt_path={ckpt}", f"--prediction.output={out}", "--prediction.format=csv"])
    table = pcsv.read_csv(out).to_pandas()
    assert not list(out.parent.glob(".*tmp*"))
    assert list(table.columns) == ["user_id", "item_id", "timestamp", "score_click", "score_like", "score_share",
                                   "label_click", "label_like", "label_share"]
    dm = RankingDataModule(SyntheticRanking(num_users=120, seed=0), max_seq_len=40, num_candidates=4,
                           num_actions=8, cache_dir=str(tmp_path / "cache"))
    users = dm.split("test").users
    assert (table["user_id"].to_numpy() == dm.user_raw_ids()[np.repeat(users, 4)]).all()
    scores = table[["score_click", "score_like", "score_share"]].to_numpy()
    assert ((scores > 0) & (scores < 1)).all()
