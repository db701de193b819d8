"""``SiLU(x)`` split into column blocks, whose backward fuses the blocks' concatenation (Zhai et al. 2024, Eq. 1).

The block computes ``U, V, Q, K = split(SiLU(LayerNorm(X) W1 + b1))``. Through autograd, the backward
first concatenates the four gradients into one buffer (a full copy) and then runs SiLU's backward over
it (another full pass). Here one kernel per block reads its gradient and ``x`` and writes
``dx = dy * SiLU'(x)`` straight into that block's columns of ``dx``: one pass instead of two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

_BLOCK_R, _BLOCK_C = 16, 256


@triton.jit
def _silu_grad_kernel(X, DY, DX, n_rows, n_cols, stride_x, stride_dy, stride_dx,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """``dx = dy * sigmoid(x) * (1 + x * (1 - sigmoid(x)))`` on one ``(n_rows, n_cols)`` column block."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(x)
    dx = dy * sig * (1.0 + x * (1.0 - sig))
    tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


class _SiluSplit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, ...]:
        ctx.save_for_backward(x)
        ctx.sizes = sizes
        ctx.set_materialize_grads(False)  # an unused block's gradient arrives as None: zero-filled, not read
        return F.silu(x).split(list(sizes), dim=-1)

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])  # (rows, sum(sizes))
        dx = torch.empty_like(x2)
        start = 0
        for size, dy in zip(ctx.sizes, grads, strict=True):
            block = dx[:, start:start + size]  # (rows, size)
            if dy is None:
                block.zero_()
            elif x2.shape[0] > 0 and size > 0:
                dy = dy.reshape(-1, size)
                dy = dy if dy.stride(-1) == 1 else dy.contiguous()
                grid = (triton.cdiv(x2.shape[0], _BLOCK_R), triton.cdiv(size, _BLOCK_C))
                _silu_grad_kernel[grid](x2[:, start:], dy, block, x2.shape[0], size, x2.stride(0), dy.stride(0),
                                        dx.stride(0), BLOCK_R=_BLOCK_R, BLOCK_C=_BLOCK_C)
            start += size
        return dx.reshape(x.shape), None


def silu_split(x: Tensor, sizes: list[int]) -> tuple[Tensor, ...]:
    """``F.silu(x).split(sizes, dim=-1)`` with a one-pass backward.

    Args:
        x: ``(..., sum(sizes))``, the last dimension contiguous.
        sizes: Widths of the column blocks.

    Returns:
        One view of ``SiLU(x)`` per block, ``(..., size)``.

    """
    if sum(sizes) != x.shape[-1]:
        raise ValueError(f"silu_split: sizes {list(sizes)} do not add up to the last dimension {x.shape[-1]}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    return _SiluSplit.apply(x, tuple(int(s) for s in sizes))
