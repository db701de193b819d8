"""Throughput/MFU logging, atomic checkpoint writes and RNG states in checkpoints."""

from __future__ import annotations

import random
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch

from gr_lightning.batch import JaggedBatch
from gr_lightning.callbacks import Throughput, backbone_flops, training_flops
from gr_lightning.checkpointing import AtomicCheckpointIO, RNGStateCheckpoint, atomic_torch_save
from gr_lightning.data import RetrievalDataModule, Synthetic
from gr_lightning.module import GRModule
from gr_lightning.zoo.hstu import HSTU
from gr_lightning.zoo.sasrec import SASRec


def _model(num_items: int = 100, max_seq_len: int = 16) -> GRModule:
    backbone = partial(HSTU, num_blocks=2, num_heads=2, attention_dim=4, linear_dim=6, kernel="pytorch")
    return GRModule(backbone, num_items=num_items, max_seq_len=max_seq_len, embedding_dim=8, num_negatives=10)


def test_hstu_flops_follow_the_paper_formula():
    model = _model()
    batch = JaggedBatch.from_sequences([[1, 2, 3], [4, 5, 6, 7, 8]], [[1, 2, 3], [1, 2, 3, 4, 5]])
    tokens, sum_sq = 8, 9 + 25
    per_block_linear = 8 * (2 * (2 * 6 + 2 * 4)) + (2 * 6) * 8  # uvqk + out weights
    attention = 2 * 2 * (4 + 6) * sum_sq / 2  # 2 H (d_qk + d_v) L^2 / 2 per block
    assert backbone_flops(model.backbone, tokens, sum_sq) == 2 * (2 * tokens * per_block_linear + attention)
    positions = tokens - 2  # every event but the last of each sequence predicts the next one
    expected = 3 * (backbone_flops(model.backbone, tokens, sum_sq) + 2 * positions * (1 + 10) * 8)
    assert training_flops(model, batch) == expected


def test_softmax_backbone_counts_attention_at_model_width():
    backbone = SASRec(8, 16, num_blocks=1, num_heads=2)
    linear = 8 * 24 + 8 * 8 + 2 * 8 * 8
    assert backbone_flops(backbone, 10, 50) == 2 * 10 * linear + 2 * 2 * 8 * 50 / 2


@pytest.mark.parametrize("peak", [None, 1e9])
def test_throughput_logs_rates_and_mfu_only_with_a_known_peak(tmp_path, peak):
    data = RetrievalDataModule(Synthetic(num_users=64, num_items=100, min_len=5, max_len=20), max_seq_len=16,
                               batch_size=16, cache_dir=str(tmp_path / "cache"))
    monitor = Throughput(window=2, peak_flops=peak)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[monitor])
    trainer.fit(_model(num_items=data.num_items), datamodule=data)
    metrics = trainer.callback_metrics
    for key in ("samples_per_s", "tokens_per_s", "device_samples_per_s", "device_tokens_per_s", "device_tflops"):
        assert float(metrics[f"throughput/{key}"]) > 0, key
    assert float(metrics["throughput/tokens_per_s"]) > float(metrics["throughput/samples_per_s"])
    if peak is None:
        assert "throughput/mfu" not in metrics  # CPU: no peak known, so no made-up MFU
    else:
        mfu = float(metrics["throughput/mfu"])
        assert mfu == pytest.approx(float(metrics["throughput/device_tflops"]) * 1e12 / peak, rel=1e-5)


def test_throughput_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Throughput(window=0)
    with pytest.raises(ValueError):
        Throughput(peak_flops=0)


def test_atomic_save_replaces_whole_files_and_leaves_no_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)
    assert torch.load(path)["step"] == 1

    def broken_save(obj, handle):  # a write that dies half-way
        handle.write(b"partial")
        raise RuntimeError("disk gone")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_torch_save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    callback = RNGStateCheckpoint()
    atomic_torch_save({"rng": callback.state_dict()}, tmp_path / "c.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restored = RNGStateCheckpoint()
    restored.load_state_dict(torch.load(tmp_path / "c.ckpt")["rng"])  # weights_only=True, the default

    class _Trainer:
        global_rank = 0

    restored.on_train_start(_Trainer(), None)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]
