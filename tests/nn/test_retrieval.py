import math

import pytest
import torch
import torch.nn.functional as F

from gr_lightning.nn import PositionalInputEncoder, SampledSoftmaxLoss, next_item_pairs


def test_next_item_pairs_stay_inside_each_sequence():
    items = torch.tensor([5, 6, 7, 8, 9, 10])
    offsets = torch.tensor([0, 3, 4, 6])
    rows, positives = next_item_pairs(items, offsets)
    assert rows.tolist() == [0, 1, 4]
    assert positives.tolist() == [6, 7, 10]


def _table(num_items=30, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_items + 1, dim, generator=gen), dim=-1), gen


def test_loss_equals_explicit_softmax_with_the_same_negatives():
    table, gen = _table()
    queries = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    positives = torch.randint(1, 31, (6,), generator=gen)
    loss_fn = SampledSoftmaxLoss(num_negatives=5, temperature=0.1)
    torch.manual_seed(123)
    loss = loss_fn(queries, positives, table)
    torch.manual_seed(123)
    negatives = torch.randint(1, 31, (6, 5))
    expected = 0.0
    for p in range(6):
        logits = [queries[p] @ table[positives[p]]]
        logits += [queries[p] @ table[n] if n != positives[p] else torch.tensor(-math.inf) for n in negatives[p]]
        expected += -torch.log_softmax(torch.stack(logits) / 0.1, 0)[0]
    torch.testing.assert_close(loss, expected / 6)


def test_accidental_hits_are_masked():
    table, _ = _table(num_items=1)
    queries = table[1:2]
    loss = SampledSoftmaxLoss(num_negatives=4, temperature=0.05)(queries, torch.tensor([1]), table)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # every negative is the positive itself


def test_in_batch_negatives_need_log_q():
    table, gen = _table()
    loss_fn = SampledSoftmaxLoss(num_negatives=0, in_batch_negatives=3)
    queries = F.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    with pytest.raises(ValueError, match="item_log_q"):
        loss_fn(queries, torch.tensor([1, 2, 3, 4]), table)
    log_q = torch.log(torch.full((31,), 1 / 30))
    assert torch.isfinite(loss_fn(queries, torch.tensor([1, 2, 3, 4]), table, log_q))


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="at least one negative"):
        SampledSoftmaxLoss(num_negatives=0)
    with pytest.raises(ValueError, match="temperature"):
        SampledSoftmaxLoss(temperature=0)


def test_positional_encoder_scales_and_adds_positions():
    enc = PositionalInputEncoder(dim=4, max_seq_len=5, dropout=0.0)
    emb = torch.randn(5, 4)
    out = enc(emb, torch.tensor([0, 2, 5]))
    pos = enc.position.weight
    torch.testing.assert_close(out[:2], emb[:2] * 2 + pos[:2])
    torch.testing.assert_close(out[2:], emb[2:] * 2 + pos[:3])
