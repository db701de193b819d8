"""Item-embedding export: inner-product search over the exported file reproduces `predict`'s top-K."""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gr_lightning.analysis import load_model
from gr_lightning.cli import main
from gr_lightning.data import RetrievalDataModule, Synthetic
from gr_lightning.export import export_item_embeddings, read_metadata
from gr_lightning.module import GRModule
from gr_lightning.ranking import RankingModule, TaskSpec
from gr_lightning.zoo.hstu import HSTU
from tests.conftest import REPO_ROOT

DEMO = str(REPO_ROOT / "conf" / "demo.yaml")
BACKBONE = partial(HSTU, num_blocks=1, num_heads=1, attention_dim=8, linear_dim=8)


def _read(path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))  # (N, D)
    return table.column("item_id").to_numpy(), vectors


def test_export_writes_the_scored_vectors_with_raw_ids(tmp_path):
    torch.manual_seed(0)
    model = GRModule(BACKBONE, num_items=23, max_seq_len=8, embedding_dim=6)
    raw = np.concatenate([[-1], np.arange(23) * 10 + 5])
    path = export_item_embeddings(model, tmp_path / "out" / "items.parquet", raw, chunk_size=5,
                                  extra_metadata={"checkpoint": "x.ckpt"})
    ids, vectors = _read(path)
    assert (ids == raw[1:]).all()
    assert vectors.dtype == np.float32 and vectors.shape == (23, 6)
    assert np.array_equal(vectors, model.item_table()[1:].detach().numpy())  # bit for bit what predict scores
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    assert pq.ParquetFile(path).num_row_groups == 5
    meta = read_metadata(path)
    assert meta["dim"] == 6 and meta["num_items"] == 23 and meta["checkpoint"] == "x.ckpt"
    assert meta["normalization"] == "l2" and meta["similarity"] == "inner_product" and meta["filter_history"]
    assert not list(path.parent.glob(".*tmp*"))


def test_export_rejects_bad_inputs(tmp_path):
    model = GRModule(BACKBONE, num_items=5, max_seq_len=8, embedding_dim=4)
    with pytest.raises(ValueError, match=r"item_ids must have shape \(6,\)"):
        export_item_embeddings(model, tmp_path / "a.parquet", np.arange(5))
    ranking = RankingModule(BACKBONE, [TaskSpec("click")], num_items=5, max_seq_len=4)
    with pytest.raises(TypeError, match="needs a retrieval model"):
        export_item_embeddings(ranking, tmp_path / "a.parquet")
    pq.write_table(pq.read_table(export_item_embeddings(model, tmp_path / "b.parquet")).replace_schema_metadata(),
                   tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="no 'gr_lightning' metadata"):
        read_metadata(tmp_path / "c.parquet")


def test_inner_product_search_over_the_export_reproduces_predict(mlflow_uri, tmp_path):
    """Acceptance: brute-force inner-product neighbours over the exported file == `predict`'s top-K."""
    data = [f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
    main(["fit", "--config", DEMO, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
          "--trainer.limit_val_batches=1", "--test_after_fit=false", "--rich=false", *data])
    (ckpt,) = tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")
    main(["export-embeddings", "--config", DEMO, f"--ckpt_path={ckpt}", f"--output={tmp_path / 'items.parquet'}",
          "--chunk_size=100", *data])
    main(["predict", "--config", DEMO, f"--ckpt_path={ckpt}", f"--prediction.output={tmp_path / 'top.parquet'}",
          "--prediction.top_k=10", "--prediction.chunk_size=97", "--trainer.limit_predict_batches=1", "--rich=false",
          *data])
    item_ids, vectors = _read(tmp_path / "items.parquet")
    predicted = pq.read_table(tmp_path / "top.parquet").to_pandas()

    # Queries come from the model (the online half); the search uses only the exported file.
    dm = RetrievalDataModule(Synthetic(seed=0), max_seq_len=64, cache_dir=str(tmp_path / "cache"))
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    model = load_model(ckpt)
    with torch.no_grad():
        queries = model.encode(batch)[batch.last_index()].numpy()  # (B, D)
    raw_items, raw_users = dm.item_raw_ids(), dm.user_raw_ids()
    for b in range(8):
        history = set(raw_items[batch.items[int(batch.offsets[b]) : int(batch.offsets[b + 1])].numpy()].tolist())
        scores = vectors.astype(np.float64) @ queries[b].astype(np.float64)  # (N,)
        order = [i for i in np.argsort(-scores, kind="stable") if item_ids[i] not in history][:10]
        rows = predicted[predicted["user_id"] == raw_users[int(batch.users[b])]]
        assert rows["item_id"].tolist() == item_ids[order].tolist()
        np.testing.assert_allclose(rows["score"].to_numpy(), scores[order], rtol=1e-5, atol=1e-6)
