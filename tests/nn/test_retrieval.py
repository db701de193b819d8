import math

import pytest
import torch
import torch.nn.functional as F

from gr_lightning.nn import PositionalInputEncoder, SampledSoftmaxLoss, next_item_targets
from tests.host_reads import HostReads


def test_next_item_targets_stay_inside_each_sequence():
    items = torch.tensor([5, 6, 7, 8, 9, 10])
    offsets = torch.tensor([0, 3, 3, 4, 6])  # lengths 3, 0, 1, 2
    positives, has_next = next_item_targets(items, offsets)
    assert has_next.tolist() == [True, True, False, False, True, False]
    assert positives[has_next].tolist() == [6, 7, 10]
    assert positives.shape == items.shape


def test_next_item_targets_read_nothing_on_the_host():
    items, offsets = torch.randint(1, 50, (40,)), torch.tensor([0, 7, 7, 20, 21, 40])
    with HostReads() as reads:
        next_item_targets(items, offsets)
    assert reads.ops == []


def test_next_item_targets_of_an_empty_batch():
    positives, has_next = next_item_targets(torch.zeros(0, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    assert positives.numel() == 0 and has_next.numel() == 0


def _table(num_items=30, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_items + 1, dim, generator=gen), dim=-1), gen


def _explicit_losses(queries, positives, table, negatives, temperature):
    """Per-position sampled-softmax loss written out, accidental hits dropped. ``(P,)``."""
    losses = []
    for p in range(queries.shape[0]):
        logits = [queries[p] @ table[positives[p]]]
        logits += [queries[p] @ table[n] if n != positives[p] else torch.tensor(-math.inf) for n in negatives[p]]
        losses.append(-torch.log_softmax(torch.stack(logits) / temperature, 0)[0])
    return torch.stack(losses)


def test_loss_equals_explicit_softmax_with_the_same_negatives():
    table, gen = _table()
    queries = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    positives = torch.randint(1, 31, (6,), generator=gen)
    loss_fn = SampledSoftmaxLoss(num_negatives=5, temperature=0.1)
    torch.manual_seed(123)
    loss = loss_fn(queries, positives, table)
    torch.manual_seed(123)
    negatives = torch.randint(1, 31, (6, 5))
    torch.testing.assert_close(loss, _explicit_losses(queries, positives, table, negatives, 0.1).mean())


def test_mask_averages_only_the_selected_positions():
    table, gen = _table()
    queries = F.normalize(torch.randn(7, 8, generator=gen), dim=-1)
    positives = torch.randint(1, 31, (7,), generator=gen)
    mask = torch.tensor([True, False, True, True, False, False, True])
    loss_fn = SampledSoftmaxLoss(num_negatives=5, temperature=0.1)
    loss_fn.seed_stream(3)
    negatives = _draws(loss_fn, n=7, num_items=30)  # what the next call draws, for every position
    masked = loss_fn(queries, positives, table, mask=mask)
    expected = _explicit_losses(queries, positives, table, negatives, 0.1)[mask].mean()
    torch.testing.assert_close(masked, expected)


def test_masked_positions_get_no_gradient_and_an_empty_mask_gives_zero():
    table, gen = _table()
    queries = F.normalize(torch.randn(5, 8, generator=gen), dim=-1).requires_grad_()
    positives = torch.randint(1, 31, (5,), generator=gen)
    mask = torch.tensor([True, False, True, False, False])
    SampledSoftmaxLoss(num_negatives=4)(queries, positives, table, mask=mask).backward()
    assert queries.grad[~mask].abs().max() == 0 and queries.grad[mask].abs().max() > 0
    none = SampledSoftmaxLoss(num_negatives=4)(queries, positives, table, mask=torch.zeros(5, dtype=torch.bool))
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="mask must have"):
        SampledSoftmaxLoss(num_negatives=4)(queries, positives, table, mask=mask[:3])


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


def _draws(loss_fn, n=64, num_items=1000):
    """The uniform negatives ``loss_fn`` would draw next for ``n`` positions (its stream is cloned, not used)."""
    gen = loss_fn.generator(torch.device("cpu"))
    clone = torch.Generator().manual_seed(0)
    clone.set_state(gen.get_state())
    return torch.randint(1, num_items + 1, (n, loss_fn.num_negatives), generator=clone)


def test_each_rank_has_its_own_reproducible_stream_independent_of_the_global_rng():
    ranks = []
    for rank in range(3):
        loss_fn = SampledSoftmaxLoss(num_negatives=8)
        loss_fn.seed_stream(42, rank)
        ranks.append(_draws(loss_fn))
    assert not torch.equal(ranks[0], ranks[1]) and not torch.equal(ranks[1], ranks[2])
    assert (ranks[0] == ranks[1]).float().mean() < 0.01  # independent, not shifted copies

    table, gen = _table(num_items=1000, dim=8)
    queries = F.normalize(torch.randn(64, 8, generator=gen), dim=-1)
    positives = torch.randint(1, 1001, (64,), generator=gen)
    losses = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the global RNG does not matter once the stream is seeded
        loss_fn = SampledSoftmaxLoss(num_negatives=8)
        loss_fn.seed_stream(42, 1)
        losses.append(loss_fn(queries, positives, table))
    assert torch.equal(losses[0], losses[1])
    with pytest.raises(ValueError, match="rank"):
        loss_fn.seed_stream(42, -1)


def test_stream_state_survives_a_weights_only_checkpoint(tmp_path):
    from gr_lightning.checkpointing import RNGStateCheckpoint, atomic_torch_save

    table, gen = _table(num_items=500, dim=8)
    queries = F.normalize(torch.randn(16, 8, generator=gen), dim=-1)
    positives = torch.randint(1, 501, (16,), generator=gen)
    model = torch.nn.Module()
    model.loss_fn = SampledSoftmaxLoss(num_negatives=4, in_batch_negatives=2)
    model.loss_fn.seed_stream(7, 0)
    log_q = torch.log(torch.full((501,), 1 / 500))
    model.loss_fn(queries, positives, table, log_q)  # advance the stream
    callback = RNGStateCheckpoint()
    callback.setup(None, model, "fit")
    atomic_torch_save({"rng": callback.state_dict()}, tmp_path / "c.ckpt")
    expected = [model.loss_fn(queries, positives, table, log_q) for _ in range(2)]

    resumed = torch.nn.Module()
    resumed.loss_fn = SampledSoftmaxLoss(num_negatives=4, in_batch_negatives=2)
    resumed.loss_fn.seed_stream(7, 0)  # as setup() would: a fresh stream, then the checkpoint's state
    restored = RNGStateCheckpoint()
    restored.load_state_dict(torch.load(tmp_path / "c.ckpt")["rng"])  # weights_only=True, the default

    class _Trainer:
        global_rank = 0

    restored.on_train_start(_Trainer(), resumed)
    again = [resumed.loss_fn(queries, positives, table, log_q) for _ in range(2)]
    assert torch.equal(torch.stack(expected), torch.stack(again))
    assert not torch.equal(expected[0], expected[1])  # the stream moved on between the two calls

    other = torch.nn.Module()
    other.head = torch.nn.Linear(2, 2)
    with pytest.raises(KeyError, match="loss_fn"):
        restored.load_state_dict(torch.load(tmp_path / "c.ckpt")["rng"])
        restored.on_train_start(_Trainer(), other)


def test_a_stream_saved_on_another_device_type_restarts_from_its_seed_with_a_warning():
    loss_fn = SampledSoftmaxLoss(num_negatives=8)
    loss_fn.seed_stream(3, 1)
    fresh = _draws(loss_fn)
    loss_fn.load_rng_state({"seed": loss_fn.rng_state()["seed"], "device_type": "cuda",
                            "state": torch.zeros(16, dtype=torch.uint8)})
    with pytest.warns(UserWarning, match="not exact"):
        assert torch.equal(_draws(loss_fn), fresh)


def test_under_autocast_negatives_are_gathered_in_low_precision_and_logits_stay_float32(monkeypatch):
    """bf16 autocast: the negatives' rows and products are bf16 (half the traffic), the loss stays close to
    float32, and the gradient reaches the float32 table and queries in float32."""
    table, gen = _table(num_items=50, dim=16, seed=3)
    queries = F.normalize(torch.randn(40, 16, generator=gen), dim=-1)
    positives = torch.randint(1, 51, (40,), generator=gen)
    loss_fn = SampledSoftmaxLoss(num_negatives=20, temperature=0.05)
    gathered = []
    embedding = F.embedding

    def spy(ids, weight, *args, **kwargs):
        gathered.append(weight.dtype)
        return embedding(ids, weight, *args, **kwargs)

    monkeypatch.setattr(F, "embedding", spy)
    runs = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        loss_fn.seed_stream(seed=7)  # the same negatives in both runs
        gathered.clear()
        t, q = table.clone().requires_grad_(), queries.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            loss = loss_fn(q, positives, t)
        loss.backward()
        assert loss.dtype == torch.float32
        assert t.grad.dtype == torch.float32 and q.grad.dtype == torch.float32
        # positives gather from the table as given; negatives from the autocast-dtype copy
        assert gathered == [torch.float32, torch.bfloat16 if enabled else torch.float32]
        runs[name] = (loss.detach(), t.grad, q.grad)
    (l32, t32, q32), (l16, t16, q16) = runs["fp32"], runs["bf16"]
    assert abs(l16 - l32) / l32 < 2e-2
    assert (t16 - t32).norm() / t32.norm() < 5e-2 and (q16 - q32).norm() / q32.norm() < 5e-2
    assert not torch.equal(l16, l32)  # the low-precision path really ran
