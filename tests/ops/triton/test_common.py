"""The temporal lookup table that the Triton kernels gather from, and its gradient."""

import pytest
import torch

from gr_lightning.ops.triton._common import fold_time_grad, time_lookup_table


@pytest.mark.parametrize("num_buckets", [0, 10, 128, 300])
def test_lookup_table_rows_hold_the_clamped_buckets(num_buckets):
    w = torch.randn(num_buckets + 1, dtype=torch.float64)
    table = time_lookup_table(w)
    assert table.dtype == torch.float32
    assert table.numel() >= 158  # bucket -1 (lg2.approx at a gap of 1) through 156 (the largest gap)
    for b in range(-1, table.numel() - 1):
        assert table[b + 1] == w[min(max(b, 0), num_buckets)].float()


@pytest.mark.parametrize("num_buckets", [0, 10, 300])
def test_fold_is_the_adjoint_of_the_lookup(num_buckets):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(num_buckets + 1, generator=gen)
    g = torch.randn(time_lookup_table(w).numel(), generator=gen)
    folded = fold_time_grad(g, num_buckets)
    assert folded.shape == w.shape
    torch.testing.assert_close((time_lookup_table(w) * g).sum(), (w * folded).sum())
