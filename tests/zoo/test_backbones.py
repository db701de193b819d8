"""Every registered backbone honours the zoo contract (timm-style: parametrized over the registry)."""

import pytest
import torch

from gr_lightning.batch import JaggedBatch
from gr_lightning.zoo import Backbone, get_backbone, registry

DIM, MAX_LEN = 16, 12
SMALL = {"hstu": {"num_heads": 2, "attention_dim": 8, "linear_dim": 8}, "sasrec": {"num_heads": 2}}


def _build(name: str) -> Backbone:
    torch.manual_seed(0)
    model = get_backbone(name)(DIM, MAX_LEN, num_blocks=2, dropout=0.0, **SMALL.get(name, {}))
    return model.eval()


def _batch(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(1, 50, (n,), generator=gen).tolist() for n in lengths]
    times = [torch.cumsum(torch.randint(1, 10_000, (n,), generator=gen), 0).tolist() for n in lengths]
    batch = JaggedBatch.from_sequences(seqs, times)
    x = torch.randn(batch.items.numel(), DIM, generator=gen)
    return batch, x


def test_registry_has_builtins():
    assert {"hstu", "sasrec"} <= set(registry())
    with pytest.raises(KeyError, match="available: "):
        get_backbone("nope")


@pytest.mark.parametrize("name", sorted(registry()))
def test_shapes_and_gradients(name):
    model = _build(name).train()
    batch, x = _batch([5, 1, 9])
    x.requires_grad_(True)
    out = model(x, batch.offsets, batch.max_len, batch.timestamps)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@pytest.mark.parametrize("name", sorted(registry()))
def test_jagged_equals_each_sequence_alone(name):
    model = _build(name)
    batch, x = _batch([7, 2, 12, 1], seed=3)
    together = model(x, batch.offsets, batch.max_len, batch.timestamps)
    for b in range(batch.batch_size):
        lo, hi = batch.offsets[b].item(), batch.offsets[b + 1].item()
        alone = model(x[lo:hi], torch.tensor([0, hi - lo]), hi - lo, batch.timestamps[lo:hi])
        torch.testing.assert_close(together[lo:hi], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(registry()))
def test_causal_future_events_do_not_change_the_past(name):
    model = _build(name)
    batch, x = _batch([10], seed=4)
    full = model(x, batch.offsets, 10, batch.timestamps)
    # Changing event 7 onwards leaves rows 0..5 alone (row 6's temporal bias looks at t_7, the request time).
    x2 = x.clone()
    x2[7:] = torch.randn_like(x2[7:])
    changed = model(x2, batch.offsets, 10, batch.timestamps)
    torch.testing.assert_close(full[:7], changed[:7])
    assert not torch.allclose(full[7:], changed[7:])


def test_hstu_kernel_switch_keeps_state_dict():
    model = _build("hstu")
    keys = set(model.state_dict())
    model.kernel = "auto"
    assert set(model.state_dict()) == keys
    with pytest.raises(ValueError, match="unknown kernel"):
        model.kernel = "cuda"
