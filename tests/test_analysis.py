"""gr_lightning.analysis against real runs: a tiny demo fit and a tiny ML-100K fit in a temporary MLflow store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gr_lightning import analysis
from gr_lightning.zoo.hstu import HSTUBlock
from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "benchmarks" / "results" / "attention_h100.json"


def test_runs_table_has_one_row_per_run(analysis_runs):
    _, uri = analysis_runs
    table = analysis.runs_table(uri)
    assert len(table) == 2
    assert set(table["experiment"]) == {"demo", "ml-100k"}
    demo = table.set_index("experiment").loc["demo"]
    assert demo["backbone"] == "HSTU" and demo["dataset"] == "Synthetic"
    assert table.set_index("experiment").loc["ml-100k", "dataset"] == "MovieLens100K"
    assert demo["epochs"] == 2 and demo["median_epoch_s"] > 0
    assert 0 <= demo["test/ndcg_10"] <= demo["test/hr_10"] <= 1
    assert 0 < demo["best_val_ndcg_10"] <= 1 and demo["best_val_epoch"] in (0, 1)
    assert str(demo["best_checkpoint"]).endswith(".ckpt")
    only_demo = analysis.runs_table(uri, experiment="demo")
    assert list(only_demo["experiment"]) == ["demo"]
    with pytest.raises(ValueError, match="no experiment"):
        analysis.runs_table(uri, experiment="missing")


def test_metric_history_is_per_epoch(analysis_runs):
    _, uri = analysis_runs
    run_id = analysis.runs_table(uri, experiment="demo")["run_id"].iloc[0]
    history = analysis.metric_history(uri, run_id, "val/ndcg_10")
    assert len(history) == 2
    assert list(history.columns) == ["step", "value", "timestamp"]
    assert history["step"].is_monotonic_increasing
    assert history["value"].max() == pytest.approx(
        analysis.runs_table(uri, experiment="demo")["best_val_ndcg_10"].iloc[0])
    assert analysis.metric_history(uri, run_id, "never/logged").empty


def test_load_model_restores_the_checkpoint(analysis_runs):
    _, uri = analysis_runs
    ckpt = analysis.runs_table(uri, experiment="demo")["best_checkpoint"].iloc[0]
    model = analysis.load_model(ckpt)
    assert not model.training
    assert type(model.backbone).__name__ == "HSTU"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_movie_titles_of_both_movielens_layouts(data_root):
    titles = analysis.movie_titles(data_root / "ml-100k")
    assert len(titles) == 1682
    assert titles.loc[1] == "Toy Story (1995)"
    assert any("é" in t for t in titles)  # Latin-1 decoded (e.g. "Café au Lait")
    titles_1m = analysis.movie_titles(data_root / "ml-1m")
    assert titles_1m.loc[1] == "Toy Story (1995)" and titles_1m.index.is_unique
    with pytest.raises(FileNotFoundError):
        analysis.movie_titles(data_root)


def test_user_history_and_top_k(analysis_runs, data_root):
    workdir, uri = analysis_runs
    ckpt = analysis.runs_table(uri, experiment="ml-100k")["best_checkpoint"].iloc[0]
    model = analysis.load_model(ckpt)
    dm = analysis.movielens_datamodule(data_root / "ml-100k", model.hparams.max_seq_len, str(workdir / "cache"))
    titles = analysis.movie_titles(data_root / "ml-100k")
    history, top = analysis.user_history_and_top_k(model, dm, 1, k=10, titles=titles)
    # ML-100K user 1 rated 272 movies; the predict history is the last max_seq_len of them, in time order.
    assert len(history) == min(272, model.hparams.max_seq_len)
    assert history["timestamp"].is_monotonic_increasing
    assert history["title"].notna().all() and top["title"].notna().all()
    assert list(top["rank"]) == list(range(1, 11))
    assert top["score"].is_monotonic_decreasing
    assert not set(top["item_id"]) & set(history["item_id"])  # history filtered
    assert top["item_id"].is_unique
    # History ids map back to dense ids of the same store (raw ids are sorted per dense id).
    history_dense = np.searchsorted(dm.item_raw_ids()[1:], history["item_id"].to_numpy()) + 1
    assert (dm.item_raw_ids()[history_dense] == history["item_id"].to_numpy()).all()
    with pytest.raises(KeyError):
        analysis.user_history_and_top_k(model, dm, 10**9)


def test_attention_biases_one_table_per_block(analysis_runs):
    _, uri = analysis_runs
    model = analysis.load_model(analysis.runs_table(uri, experiment="demo")["best_checkpoint"].iloc[0])
    positional, temporal = analysis.attention_biases(model)
    blocks = [m for m in model.modules() if isinstance(m, HSTUBlock)]
    n = model.hparams.max_seq_len
    assert sorted(positional["block"].unique()) == list(range(len(blocks)))
    first = positional[positional["block"] == 0]
    assert list(first["distance"]) == list(range(-(n - 1), n))
    assert np.allclose(first["bias"], blocks[0].pos_bias.detach().numpy())
    t0 = temporal[temporal["block"] == 1]
    assert list(t0["bucket"]) == list(range(blocks[1].time_bias.numel()))
    assert np.allclose(t0["bias"], blocks[1].time_bias.detach().numpy())
    lower = t0["lower_bound_s"].to_numpy()
    assert lower[0] == 0 and (np.diff(lower) > 0).all()
    # A gap just above a bucket's lower bound falls in that bucket, one just below in the previous one.
    from gr_lightning.ops.pytorch.hstu_attention import time_buckets

    for factor, shift in ((1 + 1e-4, 0), (1 - 1e-4, -1)):
        gaps = torch.tensor(lower[1:40] * factor, dtype=torch.float64)
        assert (time_buckets(gaps, torch.zeros_like(gaps), 128).numpy() == np.arange(1, 40) + shift).all()


def test_kernel_benchmark_frame_matches_the_json():
    frame = analysis.kernel_benchmark_frame(BENCH)
    data = json.loads(BENCH.read_text())
    measured = [(s["shape"], v) for s in data["shapes"] for v, m in s.get("variants", {}).items() if "fwd_ms" in m]
    assert len(frame) == len(measured) > 0
    for _, row in frame.iterrows():
        shape = next(s for s in data["shapes"] if s["shape"] == row["shape"])
        m = shape["variants"][row["variant"]]
        assert row["N"] == shape["N"] and row["B"] == shape["B"]
        assert row["fwd_tflops"] == pytest.approx(m["fwd_tflops"])
        assert row["fwd_bwd_tflops"] == pytest.approx(m["fwd_bwd_tflops"])
    assert not any(math.isnan(v) for v in frame["fwd_tflops"])
    assert frame["device"].iloc[0] == data["device"]
