import pytest
import torch
import torch.nn.functional as F

from gr_lightning import ops
from gr_lightning.ops.triton import silu_split


def _rel_err(out, ref):
    out = out.double()
    assert torch.isfinite(out).all(), "non-finite (unwritten?) elements"
    return ((out - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("rows, sizes", [(37, [48, 48, 32, 32]), (5, [300, 17]), (1, [8])])
def test_matches_silu_then_split(rows, sizes):
    gen = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, sum(sizes), generator=gen) * 3).requires_grad_()
    ref_x = x.detach().double().requires_grad_()
    outs = silu_split(x, sizes)
    refs = F.silu(ref_x).split(sizes, dim=-1)
    grads = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in refs]
    for out, ref in zip(outs, refs, strict=True):
        assert out.shape == ref.shape and _rel_err(out, ref) < 1e-6
    torch.autograd.backward(outs, [g.float() for g in grads])
    torch.autograd.backward(refs, grads)
    assert _rel_err(x.grad, ref_x.grad) < 1e-6


def test_unused_blocks_strided_grads_and_leading_dims():
    """A block without a gradient contributes zero; gradients reshaped to heads (as Q, K, V are) still work."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 64, generator=gen).requires_grad_()
    ref_x = x.detach().double().requires_grad_()
    u, _v, q = silu_split(x, [16, 16, 32])
    ru, _rv, rq = F.silu(ref_x).split([16, 16, 32], dim=-1)
    w = torch.randn(2, 7, 2, 16, generator=gen, dtype=torch.float64)
    ((q.reshape(2, 7, 2, 16) * w.float()).sum() + u.sum()).backward()  # v unused
    ((rq.reshape(2, 7, 2, 16) * w).sum() + ru.sum()).backward()
    assert _rel_err(x.grad, ref_x.grad) < 1e-6
    assert x.grad[..., 16:32].abs().max() == 0


def test_bf16_gradient():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(33, 96, generator=gen).to(torch.bfloat16).requires_grad_()
    ref_x = x.detach().double().requires_grad_()
    dy = torch.randn(33, 96, generator=gen, dtype=torch.float64)
    torch.cat(silu_split(x, [64, 32]), -1).backward(dy.to(torch.bfloat16))
    F.silu(ref_x).backward(dy)
    assert x.grad.dtype == torch.bfloat16 and _rel_err(x.grad, ref_x.grad) < 1e-2


def test_sizes_must_cover_the_last_dimension():
    with pytest.raises(ValueError, match="do not add up"):
        silu_split(torch.randn(3, 10), [4, 4])


def test_dispatch_picks_the_fused_backward_only_for_triton():
    x = torch.randn(6, 24, generator=torch.Generator().manual_seed(8), requires_grad=True)
    fused, plain = ops.silu_split(x, [8, 16], kernel="triton"), ops.silu_split(x, [8, 16], kernel="pytorch")
    assert {type(t.grad_fn).__name__ for t in fused} == {"_SiluSplitBackward"}
    assert {type(t.grad_fn).__name__ for t in plain} == {"SplitWithSizesBackward0"}
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b)
