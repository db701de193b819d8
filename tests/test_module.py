"""GRModule pieces that the CLI runs do not pin down by themselves."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch

from gr_lightning.batch import JaggedBatch
from gr_lightning.data import RetrievalDataModule, Synthetic
from gr_lightning.module import GRModule
from gr_lightning.zoo.hstu import HSTU

BACKBONE = partial(HSTU, num_blocks=1, num_heads=1, attention_dim=8, linear_dim=8)


def _model(**kwargs) -> GRModule:
    torch.manual_seed(0)
    return GRModule(BACKBONE, num_items=40, max_seq_len=16, embedding_dim=8, **kwargs).eval()


def test_predict_top_k_equals_brute_force_with_history_filtered():
    model = _model()
    model.predict_top_k, model.predict_chunk_size = 5, 7  # chunks that do not divide the 40 items
    batch = JaggedBatch.from_sequences([[1, 2, 3], [7], [4, 4, 9, 10]])
    out = model.predict_step(batch, 0)
    scores = model.score_catalogue(batch)
    assert out["user_id"].tolist() == [0] * 5 + [1] * 5 + [2] * 5  # the batch row: this batch has no users
    assert out["rank"].tolist() == [1, 2, 3, 4, 5] * 3
    for b, history in enumerate([[1, 2, 3], [7], [4, 9, 10]]):
        ranked = [i for i in scores[b].argsort(descending=True).tolist() if i != 0 and i not in history][:5]
        assert out["item_id"][5 * b : 5 * b + 5].tolist() == ranked
        torch.testing.assert_close(out["score"][5 * b : 5 * b + 5], scores[b, ranked])


def test_validation_ranks_come_from_full_catalogue_scores():
    model = _model()
    batch = JaggedBatch.from_sequences([[1, 2, 3], [5, 6]], targets=[9, 1])
    model.validation_step(batch, 0)
    ranks = model._ranks(batch)
    scores = model.score_catalogue(batch)
    for b, (history, target) in enumerate([([1, 2, 3], 9), ([5, 6], 1)]):
        others = [i for i in range(1, 41) if i not in history and i != target]
        assert ranks[b].item() == 1 + int((scores[b, others] > scores[b, target]).sum())


def test_in_batch_negatives_take_log_q_from_the_datamodule(tmp_path):
    dm = RetrievalDataModule(Synthetic(num_users=60, num_items=40, seed=1), max_seq_len=16, batch_size=16,
                             cache_dir=str(tmp_path))
    model = GRModule(BACKBONE, num_items=dm.num_items, max_seq_len=16, embedding_dim=8, num_negatives=4,
                     in_batch_negatives=4)
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    counts = torch.as_tensor(dm.item_counts(), dtype=torch.float64).clamp(min=1)
    torch.testing.assert_close(model.item_log_q.double(), torch.log(counts / counts.sum()), rtol=1e-5, atol=1e-6)


def test_configure_optimizers_adds_the_scheduler_only_when_configured():
    plain = GRModule(partial(HSTU, num_blocks=1), num_items=20, max_seq_len=8, embedding_dim=8,
                     optimizer=partial(torch.optim.SGD, lr=0.5))
    assert isinstance(plain.configure_optimizers(), torch.optim.SGD)
    scheduled = GRModule(partial(HSTU, num_blocks=1), num_items=20, max_seq_len=8, embedding_dim=8,
                         optimizer=partial(torch.optim.SGD, lr=0.5),
                         lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.1))
    config = scheduled.configure_optimizers()
    config["lr_scheduler"].step()
    assert config["optimizer"].param_groups[0]["lr"] == 0.05
