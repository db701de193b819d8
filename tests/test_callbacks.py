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
from tests.host_reads import HostReadsRecorder


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
def test_throughput_rates_need_no_per_step_sync(tmp_path, monkeypatch, peak):
    data = RetrievalDataModule(Synthetic(num_users=64, num_items=100, min_len=5, max_len=20), max_seq_len=16,
                               batch_size=16, cache_dir=str(tmp_path / "cache"))  # 4 steps per epoch
    syncs, clock = [], iter(float(t) for t in range(1000))
    monkeypatch.setattr("gr_lightning.callbacks._synchronize", lambda device: syncs.append(device))
    monkeypatch.setattr("gr_lightning.callbacks.time.perf_counter", lambda: next(clock))  # one second a read
    logged: list[dict] = []

    class Capture(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if "throughput/device_tflops" in trainer.callback_metrics and trainer._logger_connector.should_update_logs:
                logged.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("throughput")})

    recorder = HostReadsRecorder()
    trainer = L.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        log_every_n_steps=3, callbacks=[recorder, Throughput(peak_flops=peak), Capture()])
    model = _model(num_items=data.num_items)
    trainer.fit(model, datamodule=data)
    # Clock starts at both epochs' first batch, reads at steps 3 and 6 (log_every_n_steps): never per step.
    assert len(syncs) == 4
    assert recorder.reads == []  # nor does anything else in a non-logging step wait for the device
    # Step 3 covers steps 1-3 from the epoch's start; step 6 covers step 4 and then, after the restart at
    # epoch 2, step 5-6 only (the restart's clock read is one second later: 1 s in each interval).
    first, second = logged[0], logged[-1]
    assert len(logged) == 2
    want = sum(training_flops(model, b) for b in recorder.batches[:3]) / 1e12
    assert first["throughput/device_tflops"] == pytest.approx(want, rel=1e-9)
    assert first["throughput/device_samples_per_s"] == sum(b.batch_size for b in recorder.batches[:3])
    assert first["throughput/device_tokens_per_s"] == sum(b.items.numel() for b in recorder.batches[:3])
    assert second["throughput/device_tflops"] == pytest.approx(
        sum(training_flops(model, b) for b in recorder.batches[4:6]) / 1e12, rel=1e-9)
    if peak is None:
        assert "throughput/mfu" not in first  # CPU: no peak known, so no made-up MFU
    else:
        assert first["throughput/mfu"] == pytest.approx(first["throughput/device_tflops"] * 1e12 / peak, rel=1e-9)


def test_throughput_rejects_bad_arguments():
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
