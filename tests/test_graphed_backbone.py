"""CUDA-graphed backbone: the padding that fixes a graph's shapes changes no real row's output or gradient.

The capture and replay themselves need a GPU (``benchmarks/profile_step.py --cuda-graphs`` compares a
replayed step with an eager one there); these tests check everything around them on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from gr_lightning.graphed_backbone import GraphedBackbone, pad_for_graph
from gr_lightning.module import GRModule
from gr_lightning.zoo import get_backbone, registry
from tests.host_reads import HostReads

DIM, MAX_LEN = 8, 7
SMALL = {"hstu": {"num_heads": 2, "attention_dim": 4, "linear_dim": 4}, "sasrec": {"num_heads": 2}}


def _inputs(lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    rows = int(offsets[-1])
    x = torch.randn(rows, DIM, generator=gen, dtype=torch.float64)
    ts = 1_700_000_000 + torch.randint(1, 5000, (rows,), generator=gen).cumsum(0)
    query_times = ts[offsets[1:] - 1] + 7
    return x, offsets, ts, query_times


def test_padding_layout_fixes_the_shapes():
    x, offsets, ts, qt = _inputs([3, 7, 1, 0, 6])  # 17 rows
    batch = pad_for_graph(x, offsets, ts, qt, row_bucket=16, max_len=MAX_LEN)
    assert batch.x.shape == (32, DIM) and batch.timestamps.shape == (32,) and batch.rows == 17
    assert batch.offsets.tolist() == [0, 3, 10, 11, 11, 17, 24, 31, 32]  # 5 real, then ceil(16 / 7) = 3 padding
    assert batch.query_times.shape == (8,)
    assert torch.equal(batch.x[:17], x) and not batch.x[17:].any()
    lengths = batch.offsets.diff()
    assert int(lengths.max()) <= MAX_LEN
    exact = pad_for_graph(x[:16], offsets.clamp(max=16), ts[:16], qt, row_bucket=16, max_len=MAX_LEN)
    assert exact.x.shape[0] == 16 and exact.offsets.tolist()[-4:] == [16, 16, 16, 16]  # empty padding sequences
    with pytest.raises(ValueError, match="row_bucket and max_len must be >= 1"):
        pad_for_graph(x, offsets, ts, qt, row_bucket=0, max_len=MAX_LEN)


def test_padding_reads_nothing_on_the_host_of_cuda_inputs():
    """The padding runs before every replay: a host read or a blocking copy there would stall the step."""
    x, offsets, ts, qt = _inputs([3, 7, 1, 0, 6])
    with FakeTensorMode():  # CUDA tensors without a GPU: cross-device copies become visible
        cuda = [torch.tensor(t.tolist(), dtype=t.dtype, device="cuda") for t in (x, offsets, ts, qt)]
        with HostReads() as reads:
            pad_for_graph(*cuda, row_bucket=16, max_len=MAX_LEN)
    assert reads.ops == []


@pytest.mark.parametrize("name", sorted(registry()))
def test_padding_rows_change_no_real_output_or_gradient(name):
    torch.manual_seed(0)
    model = get_backbone(name)(DIM, MAX_LEN, num_blocks=2, dropout=0.0, **SMALL.get(name, {})).double()
    x, offsets, ts, qt = _inputs([3, 7, 1, 6], seed=1)
    weights = torch.randn(x.shape, dtype=torch.float64)
    x.requires_grad_(True)
    out = model(x, offsets, 7, ts, qt)
    grads = torch.autograd.grad((out * weights).sum(), [x, *model.parameters()], allow_unused=True)
    batch = pad_for_graph(x, offsets, ts, qt, row_bucket=16, max_len=MAX_LEN)
    padded = model(batch.x, batch.offsets, MAX_LEN, batch.timestamps, batch.query_times)[: batch.rows]
    padded_grads = torch.autograd.grad((padded * weights).sum(), [x, *model.parameters()], allow_unused=True)
    torch.testing.assert_close(padded, out, rtol=1e-12, atol=1e-12)
    for got, want in zip(padded_grads, grads, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_graphs_need_cuda_and_exclude_compile():
    backbone = get_backbone("hstu")(DIM, MAX_LEN, num_blocks=1, **SMALL["hstu"])
    x, offsets, ts, qt = _inputs([3, 2])
    with pytest.raises(ValueError, match="CUDA graphs need CUDA tensors, got x on cpu"):
        GraphedBackbone(backbone)(x.float(), offsets, 3, ts, qt)
    with pytest.raises(ValueError, match="exceeds the backbone's max_seq_len 7"):
        GraphedBackbone(backbone)(x.float(), offsets, 9, ts, qt)
    with pytest.raises(ValueError, match="row_bucket and max_graphs must be >= 1"):
        GraphedBackbone(backbone, row_bucket=0)
    with pytest.raises(ValueError, match="choose cuda_graphs or compile_backbone"):
        GRModule(lambda d, n: get_backbone("hstu")(d, n), 10, MAX_LEN, embedding_dim=DIM, cuda_graphs=True,
                 compile_backbone=True)
