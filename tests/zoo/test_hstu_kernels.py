"""The Triton and PyTorch HSTU kernels train identically (issue #3): same parameters, same loss curve."""

from __future__ import annotations

import copy
from functools import partial

import torch

from gr_lightning.batch import JaggedBatch
from gr_lightning.module import GRModule
from gr_lightning.zoo.hstu import HSTU


def _batches(num_items: int, steps: int) -> list[JaggedBatch]:
    gen = torch.Generator().manual_seed(11)
    out = []
    for _ in range(steps):
        lengths = torch.randint(1, 9, (3,), generator=gen).tolist()
        seqs = [torch.randint(1, num_items + 1, (n,), generator=gen).tolist() for n in lengths]
        times = [torch.cumsum(torch.randint(0, 5000, (n,), generator=gen), 0).tolist() for n in lengths]
        out.append(JaggedBatch.from_sequences(seqs, times))
    return out


def _train(model: GRModule, batches: list[JaggedBatch]) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.log = lambda *a, **k: None  # no Trainer attached
    losses = []
    for step, batch in enumerate(batches):
        torch.manual_seed(step)  # identical negatives for both kernels
        loss = model.training_step(batch, step)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_triton_and_pytorch_kernels_give_the_same_training_curve():
    torch.manual_seed(0)
    backbone = partial(HSTU, num_blocks=2, num_heads=2, attention_dim=8, linear_dim=8, dropout=0.0)
    reference = GRModule(backbone, num_items=30, max_seq_len=10, embedding_dim=16, input_dropout=0.0,
                         num_negatives=8)
    fused = copy.deepcopy(reference)
    fused.backbone.kernel = "triton"  # same parameters and state_dict; only the kernels change
    assert reference.state_dict().keys() == fused.state_dict().keys()
    batches = _batches(30, steps=2) * 3  # revisiting batches: the loss must fall
    want = _train(reference, batches)
    got = _train(fused, batches)
    assert want[-1] < want[0]  # it learns
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(fused.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5, msg=name)
