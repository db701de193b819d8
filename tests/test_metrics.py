import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

from gr_lightning.metrics import RetrievalMetrics, target_ranks


def test_ranks_filter_history_but_never_the_target():
    scores = torch.tensor([[9.0, 0.1, 0.9, 0.5, 0.7], [9.0, 0.8, 0.2, 0.3, 0.1]])
    targets = torch.tensor([3, 2])
    assert target_ranks(scores, targets).tolist() == [3, 3]
    history = torch.tensor([2, 4, 3, 1])  # row 0: {2, 4}; row 1: {3, 1}
    offsets = torch.tensor([0, 2, 4])
    assert target_ranks(scores, targets, history, offsets).tolist() == [1, 1]
    # target inside its own history is still ranked
    assert target_ranks(scores, torch.tensor([2, 1]), torch.tensor([2, 1]), torch.tensor([0, 1, 2])).tolist() == [
        1, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchmetrics_on_tiny_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, items = 13, 40
    scores = torch.rand(batch, items + 1, generator=gen)  # distinct with probability 1
    targets = torch.randint(1, items + 1, (batch,), generator=gen)
    ours = RetrievalMetrics(hr_ks=(1, 10), ndcg_ks=(10,))
    for chunk in torch.arange(batch).split(5):  # several updates: constant-memory accumulation
        ours.update(target_ranks(scores[chunk], targets[chunk]))
    got = ours.compute()

    preds = scores[:, 1:].reshape(-1)
    rel = torch.zeros(batch, items, dtype=torch.bool)
    rel[torch.arange(batch), targets - 1] = True
    indexes = torch.arange(batch).repeat_interleave(items)
    for key, metric in {"hr_1": RetrievalHitRate(top_k=1), "hr_10": RetrievalHitRate(top_k=10),
                        "ndcg_10": RetrievalNormalizedDCG(top_k=10), "mrr": RetrievalMRR()}.items():
        want = metric(preds, rel.reshape(-1), indexes=indexes)
        torch.testing.assert_close(got[key], want.float(), msg=key)


def test_state_is_constant_size():
    metric = RetrievalMetrics()
    sizes = {name: getattr(metric, name).numel() for name in ("hr", "ndcg", "rr", "count")}
    metric.update(torch.randint(1, 100, (10_000,)))
    assert {name: getattr(metric, name).numel() for name in sizes} == sizes
