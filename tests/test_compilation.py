"""``GRModule(compile_backbone=True)``: inductor-compiled HSTU blocks equal eager ones, and one graph serves
batches of every size, total length and ``max_len`` (no recompilation per batch)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch._dynamo.utils import counters

from gr_lightning.batch import JaggedBatch
from gr_lightning.compilation import compile_backbone_blocks
from gr_lightning.module import GRModule
from gr_lightning.ops import jagged
from gr_lightning.zoo.hstu import HSTU

BACKBONE = partial(HSTU, num_blocks=2, num_heads=2, attention_dim=8, linear_dim=8, dropout=0.0)
MODEL = {"num_items": 50, "max_seq_len": 24, "embedding_dim": 16, "input_dropout": 0.0}


def _batch(gen: torch.Generator, size: int, longest: int) -> JaggedBatch:
    lengths = torch.randint(2, longest + 1, (size,), generator=gen)
    lengths[0] = longest
    offsets = torch.zeros(size + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    total = int(offsets[-1])
    return JaggedBatch(items=torch.randint(1, MODEL["num_items"] + 1, (total,), generator=gen),
                       timestamps=torch.randint(0, 10**7, (total,), generator=gen).sort().values,
                       offsets=offsets, max_len=longest)


def test_compiled_blocks_match_eager_and_compile_once(monkeypatch):
    monkeypatch.setattr(jagged, "HAS_FBGEMM", False)  # the pure-torch path, as on the GPU image (no fbgemm)
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = GRModule(BACKBONE, **MODEL)
    torch.manual_seed(0)
    compiled = GRModule(BACKBONE, compile_backbone=True, **MODEL)
    compiled.configure_model()
    compiled.configure_model()  # Lightning calls it once per entry point: must not wrap twice
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints stay interchangeable

    gen = torch.Generator().manual_seed(1)
    shapes = [(3, 17), (5, 24), (2, 9), (4, 21), (6, 12), (3, 5)]  # (B, max_len): all different
    for size, longest in shapes:
        batch = _batch(gen, size, longest)
        out_eager, out_compiled = eager.encode(batch), compiled.encode(batch)
        torch.testing.assert_close(out_compiled, out_eager, rtol=1e-5, atol=1e-5)
        weights = torch.randn(out_eager.shape, generator=gen)
        (out_eager * weights).sum().backward()
        (out_compiled * weights).sum().backward()
        for (name, p_eager), p_compiled in zip(eager.backbone.named_parameters(), compiled.backbone.parameters(),
                                               strict=True):
            torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-6, msg=name)
        eager.zero_grad()
        compiled.zero_grad()
    assert not counters["graph_break"], dict(counters["graph_break"])
    # One forward graph for both blocks and all six batch shapes (its backward is compiled with it).
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_static_shapes_are_refused():
    with pytest.raises(ValueError, match="dynamic"):
        compile_backbone_blocks(BACKBONE(16, 24), {"dynamic": False})


def test_ranking_module_compiles_its_backbone_with_target_aware_masks(monkeypatch):
    from tests.ranking.test_ranking import make_batch, make_model

    monkeypatch.setattr(jagged, "HAS_FBGEMM", False)
    torch._dynamo.reset()
    counters.clear()
    eager = make_model()
    # aot_eager: dynamo and AOT autograd as with inductor, without its C++ build (the test above covers that).
    compiled = make_model(compile_backbone=True, compile_options={"backend": "aot_eager"})
    compiled.configure_model()
    shapes = [((3, 1), (2, 3)), ((5, 2), (1, 3)), ((7, 4), (3, 3)), ((2, 6), (2, 1))]  # (lengths, candidates)
    for seed, (lengths, candidates) in enumerate(shapes):
        batch = make_batch(lengths, candidates, seed=seed)
        predicted_eager, predicted_compiled = eager(batch), compiled(batch)
        torch.testing.assert_close(predicted_compiled, predicted_eager, rtol=1e-5, atol=1e-5)
        predicted_eager.square().sum().backward()
        predicted_compiled.square().sum().backward()
    for (name, p_eager), p_compiled in zip(eager.backbone.named_parameters(), compiled.backbone.parameters(),
                                           strict=True):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
