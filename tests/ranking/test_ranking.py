"""Ranking model: token layout, masks, metrics, tasks, head and a training step."""

from __future__ import annotations

import os

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from gr_lightning.data.ranking import RankingBatch
from gr_lightning.ranking import BinaryTaskMetrics, RankingModule, RegressionTaskMetrics, TaskSpec, token_layout
from gr_lightning.zoo.hstu import HSTU
from gr_lightning.zoo.sasrec import SASRec

SPEC = {"num_actions": 4, "context_sizes": [3, 5], "context_names": ["g", "a"], "num_candidates": 3}
TASKS = [TaskSpec("click", "binary", "bit:0"), TaskSpec("like", "binary", ">=2"),
         TaskSpec("value", "regression", "value", 0.5)]


def make_batch(lengths=(3, 1), candidates=(2, 3), seed=0) -> RankingBatch:
    g = torch.Generator().manual_seed(seed)
    n, k = sum(lengths), sum(candidates)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    cand_offsets = torch.tensor([0, *torch.tensor(candidates).cumsum(0).tolist()])
    return RankingBatch(
        items=torch.randint(1, 10, (n,), generator=g), actions=torch.randint(0, 4, (n,), generator=g),
        timestamps=torch.arange(n) * 100, offsets=offsets, max_len=max(lengths),
        candidates=torch.randint(1, 10, (k,), generator=g), candidate_timestamps=torch.arange(k) * 100 + 5000,
        candidate_offsets=cand_offsets, max_candidates=max(candidates), labels=torch.randint(0, 4, (k,), generator=g),
        contexts=torch.tensor([[1, 2], [2, 4]]), users=torch.tensor([7, 8]), query_times=torch.tensor([5000, 5200]))


def make_model(**kwargs) -> RankingModule:
    torch.manual_seed(0)
    backbone = kwargs.pop("backbone", lambda d, n: HSTU(d, n, num_blocks=2, num_heads=2, attention_dim=8,
                                                        linear_dim=8, dropout=0.0))
    return RankingModule(backbone, TASKS, num_items=9, max_seq_len=8, data_spec=SPEC, embedding_dim=16,
                         input_dropout=0.0, **kwargs)


def test_layout_interleaves_items_and_actions_after_the_contextual_prefix():
    batch = make_batch()
    layout, ctx_rows, action_rows, cand_rows = token_layout(batch, num_contextual=2, interleave=True)
    # sequence 0: c c i a i a i a x x (10 tokens); sequence 1: c c i a x x x (7 tokens)
    assert layout.offsets.tolist() == [0, 10, 17]
    assert ctx_rows.tolist() == [0, 1, 10, 11]
    assert layout.item_rows.tolist() == [2, 4, 6, 12]
    assert action_rows.tolist() == [3, 5, 7, 13]
    assert cand_rows.tolist() == [8, 9, 14, 15, 16]
    assert layout.num_targets.tolist() == [2, 3]
    ts = layout.timestamps
    assert ts[3] == ts[2] == batch.timestamps[0]  # the action token takes its item's timestamp
    assert ts[0] == 5000 and ts[8] == batch.candidate_timestamps[0]
    no_actions, _, empty, _ = token_layout(batch, num_contextual=0, interleave=False)
    assert no_actions.offsets.tolist() == [0, 5, 9] and empty.numel() == 0


def test_candidates_do_not_see_each_other_and_history_does_not_see_candidates():
    model = make_model().eval()
    batch = make_batch()
    base = model(batch)
    changed = make_batch()
    changed.candidates = changed.candidates.clone()
    changed.candidates[0] = 1 + changed.candidates[0] % 9  # first candidate of user 7
    out = model(changed)
    assert not torch.allclose(out[0], base[0])
    assert torch.allclose(out[1:], base[1:], atol=1e-6)  # other candidates unaffected (target-aware mask)
    hist, layout = model.encode(batch)
    hist2, _ = model.encode(changed)
    assert torch.allclose(hist[layout.item_rows], hist2[layout.item_rows], atol=1e-6)


def test_history_item_output_does_not_see_its_own_action_without_prefix_mask():
    model = make_model(contextual_prefix_mask=False, supervise_history=True).eval()
    batch = make_batch()
    out, layout = model.encode(batch)
    changed = make_batch()
    changed.actions = changed.actions.clone()
    changed.actions[1] = (changed.actions[1] + 1) % 4  # action of user 7's second item
    out2, _ = model.encode(changed)
    rows = layout.item_rows
    assert torch.allclose(out[rows[:2]], out2[rows[:2]], atol=1e-6)  # items 0 and 1 never see action 1
    assert not torch.allclose(out[rows[2]], out2[rows[2]])  # item 2 does


def test_supervising_history_with_the_prefix_mask_is_refused():
    with pytest.raises(ValueError, match="leaks future actions"):
        make_model(contextual_prefix_mask=True, supervise_history=True)


def test_training_step_reduces_the_loss():
    model = make_model(supervise_history=False)
    batch = make_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_no_action_ablation_has_no_action_table():
    model = make_model(use_actions=False)
    assert model.preprocessor.action_embedding is None
    assert model(make_batch()).shape == (5, 3)


def test_bad_inputs_give_clear_errors():
    model = make_model()
    batch = make_batch()
    batch.actions = batch.actions.clone()
    batch.actions[0] = 4
    with pytest.raises(ValueError, match="unknown action value 4"):
        model(batch)
    batch = make_batch()
    batch.action_offsets = torch.tensor([0, 2, 4])
    with pytest.raises(ValueError, match="user 7 has 2 action tokens but 3 item tokens"):
        model(batch)
    batch = make_batch()
    batch.contexts = None
    with pytest.raises(ValueError, match="expects 2 contextual features"):
        model(batch)
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="candidates are longer than the sequence"):
        HSTU(16, 8)(x, torch.tensor([0, 4]), 4, torch.zeros(4, dtype=torch.int64), num_targets=torch.tensor([5]))
    with pytest.raises(NotImplementedError, match="causal mask"):
        SASRec(16, 8)(x, torch.tensor([0, 4]), 4, torch.zeros(4, dtype=torch.int64), num_targets=torch.tensor([1]))


def test_tasks_turn_actions_into_labels():
    actions = torch.tensor([0, 1, 2, 3, 5])
    assert TaskSpec("a", label="bit:0").labels(actions).tolist() == [0, 1, 0, 1, 1]
    assert TaskSpec("b", label=">=4").labels(actions).tolist() == [0, 0, 0, 0, 1]
    assert TaskSpec("c", "regression", "value").labels(actions).tolist() == [0, 1, 2, 3, 5]
    with pytest.raises(ValueError, match="not 'bit:K'"):
        TaskSpec("d", label="rating")
    with pytest.raises(ValueError, match="binary task needs"):
        TaskSpec("e", label="value")


def test_binned_auc_matches_exact_auc_and_ne_is_logloss_over_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, generator=g) * 2
    labels = (torch.rand(200, generator=g) < torch.sigmoid(logits)).float()
    metric = BinaryTaskMetrics(num_bins=1 << 20)
    metric.update(logits[:120], labels[:120])
    metric.update(logits[120:], labels[120:])
    out = metric.compute()
    assert abs(float(out["auc"]) - float(binary_auroc(torch.sigmoid(logits), labels.long()))) < 1e-6
    logloss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    p = labels.mean()
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    assert torch.allclose(out["log_loss"], logloss, atol=1e-5)
    assert torch.allclose(out["ne"], logloss / entropy, atol=1e-5)
    # Constant memory: state size does not depend on the number of predictions.
    assert metric.pos_hist.numel() == 1 << 20
    # Ties within one bin count one half, as the exact AUC does for tied scores.
    tied = BinaryTaskMetrics(num_bins=16)
    tied.update(torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert float(tied.compute()["auc"]) == 0.5


def test_regression_metrics():
    metric = RegressionTaskMetrics()
    metric.update(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
    out = metric.compute()
    assert float(out["mse"]) == pytest.approx(2.5) and float(out["mae"]) == pytest.approx(1.5)


def test_triton_and_pytorch_kernels_agree_on_ranking_inputs():
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets the Triton interpreter"
    model = make_model(contextual_prefix_mask=True).eval()
    batch = make_batch()
    reference = model(batch)
    model.backbone.kernel = "triton"
    assert torch.allclose(model(batch), reference, atol=1e-4, rtol=1e-3)
