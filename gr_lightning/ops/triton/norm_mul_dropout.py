"""Fused ``Dropout(U * LayerNorm(A))`` (Zhai et al. 2024, Eq. 3, before the output projection) in Triton.

One pass reads ``attn`` and ``u`` and writes ``y``; only the per-row mean and inverse standard deviation
are kept for the backward (``2 * 4`` bytes a row). The dropout mask is a Philox draw keyed by a seed and
the element's index, regenerated in the backward instead of stored; the seed is drawn on the device, so a
CUDA graph that replays the kernel draws a new mask each replay. :func:`layer_norm` is the same
kernel without gate and dropout (the block's input norm, no affine).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _norm_mul_dropout_fwd_kernel(
    X, U, Y, Mean, Rstd, n_rows, n_cols, stride_x, stride_u, stride_y, eps, p_drop, Seed,
    HAS_U: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    rows64 = rows.to(tl.int64)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / n_cols
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / n_cols + eps)
    y = xc * rstd[:, None]
    if HAS_U:
        y *= tl.load(U + rows64[:, None] * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = tl.rand(tl.load(Seed), rows64[:, None] * n_cols + cols[None, :]) >= p_drop
        y = tl.where(keep, y / (1.0 - p_drop), 0.0)
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(Mean + rows, mean, mask=rows < n_rows)
    tl.store(Rstd + rows, rstd, mask=rows < n_rows)


@triton.jit
def _norm_mul_dropout_bwd_kernel(
    DY, X, U, Mean, Rstd, DX, DU, n_rows, n_cols, stride_dy, stride_x, stride_u, stride_dx, stride_du,
    p_drop, Seed,
    HAS_U: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    rows64 = rows.to(tl.int64)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        keep = tl.rand(tl.load(Seed), rows64[:, None] * n_cols + cols[None, :]) >= p_drop
        dy = tl.where(keep, dy / (1.0 - p_drop), 0.0)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(Mean + rows, mask=rows < n_rows, other=0.0)
    rstd = tl.load(Rstd + rows, mask=rows < n_rows, other=0.0)
    xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    if HAS_U:
        u = tl.load(U + rows64[:, None] * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DU + rows64[:, None] * stride_du + cols[None, :], (dy * xhat).to(DU.dtype.element_ty),
                 mask=mask)
        dxhat = dy * u
    else:
        dxhat = dy
    # d LayerNorm: rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    c1 = tl.sum(dxhat * xhat, axis=1) / n_cols
    c2 = tl.sum(dxhat, axis=1) / n_cols
    dx = (dxhat - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
    tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


def _launch_params(n_cols: int) -> tuple[int, int, int]:
    """Return ``(BLOCK_R, BLOCK_C, num_warps)``: about 4K elements per program, 16-byte accesses."""
    block_c = triton.next_power_of_2(max(n_cols, 1))
    block_r = max(1, min(64, 4096 // block_c))
    num_warps = 4 if block_r * block_c <= 4096 else 8
    return block_r, block_c, num_warps


def _rows(x: Tensor) -> Tensor:
    """View ``x`` as ``(rows, n_cols)`` with a contiguous last dimension."""
    x2 = x.reshape(-1, x.shape[-1])  # (rows, n_cols)
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _forward(x: Tensor, u: Tensor | None, eps: float, p_drop: float, seed: Tensor | None):
    x2 = _rows(x)
    u2 = _rows(u) if u is not None else x2
    n_rows, n_cols = x2.shape
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)  # (rows, n_cols)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows > 0:
        block_r, block_c, warps = _launch_params(n_cols)
        _norm_mul_dropout_fwd_kernel[(triton.cdiv(n_rows, block_r),)](
            x2, u2, y, mean, rstd, n_rows, n_cols, x2.stride(0), u2.stride(0), y.stride(0), float(eps),
            float(p_drop), x2 if seed is None else seed, HAS_U=u is not None, DROPOUT=p_drop > 0.0, BLOCK_R=block_r,
            BLOCK_C=block_c,
            num_warps=warps,
        )
    return y.view(x.shape), x2, u2, mean, rstd


def _backward(dy: Tensor, x2: Tensor, u2: Tensor | None, mean: Tensor, rstd: Tensor, p_drop: float,
              seed: Tensor | None):
    dy2 = _rows(dy)
    n_rows, n_cols = x2.shape
    dx = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)  # (rows, n_cols)
    du = torch.empty(u2.shape, dtype=u2.dtype, device=u2.device) if u2 is not None else dx
    if n_rows > 0:
        block_r, block_c, warps = _launch_params(n_cols)
        _norm_mul_dropout_bwd_kernel[(triton.cdiv(n_rows, block_r),)](
            dy2, x2, u2 if u2 is not None else x2, mean, rstd, dx, du, n_rows, n_cols, dy2.stride(0),
            x2.stride(0), (u2 if u2 is not None else x2).stride(0), dx.stride(0), du.stride(0),
            float(p_drop), x2 if seed is None else seed, HAS_U=u2 is not None, DROPOUT=p_drop > 0.0, BLOCK_R=block_r,
            BLOCK_C=block_c, num_warps=warps,
        )
    return dx, (du if u2 is not None else None)


class _NormMulDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, u, eps, p_drop, seed):
        y, x2, u2, mean, rstd = _forward(x, u, eps, p_drop, seed)
        ctx.save_for_backward(x2, u2 if u is not None else None, mean, rstd, seed)
        ctx.p_drop, ctx.shapes = p_drop, (x.shape, None if u is None else u.shape)
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, u2, mean, rstd, seed = ctx.saved_tensors
        dx, du = _backward(dy, x2, u2, mean, rstd, ctx.p_drop, seed)
        x_shape, u_shape = ctx.shapes
        return dx.view(x_shape), (du.view(u_shape) if du is not None else None), None, None, None


def _seed(dropout: float, training: bool, device: torch.device) -> Tensor | None:
    """Draw the Philox seed with the device's generator: ``(1,)`` int64, or None without dropout.

    On the device, not the host: no sync, reproducible with ``manual_seed``, and a CUDA graph that replays
    the draw gets a new seed each replay (a host-drawn seed would be baked into the graph).
    """
    if not training or dropout <= 0.0:
        return None
    return torch.randint(0, 2**31 - 1, (1,), device=device)


def norm_mul_dropout(attn: Tensor, u: Tensor, eps: float, dropout: float, training: bool) -> Tensor:
    """``F.dropout(u * F.layer_norm(attn, attn.shape[-1:], eps=eps), p=dropout, training=training)``, fused.

    Args:
        attn: ``(..., D)`` attention output (heads concatenated).
        u: ``(..., D)`` gate, the same shape.
        eps: LayerNorm epsilon.
        dropout: Drop probability.
        training: Whether dropout is active.

    Returns:
        ``(..., D)`` in the dtype of ``attn``.

    """
    if attn.shape != u.shape:
        raise ValueError(f"attn {tuple(attn.shape)} and u {tuple(u.shape)} must have the same shape")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    p_drop = float(dropout) if training else 0.0
    return _NormMulDropout.apply(attn, u, float(eps), p_drop, _seed(dropout, training, attn.device))


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """``F.layer_norm(x, x.shape[-1:], eps=eps)`` without affine parameters, fused.

    Args:
        x: ``(..., D)``.
        eps: Epsilon.

    Returns:
        ``(..., D)`` in the dtype of ``x``.

    """
    return _NormMulDropout.apply(x, None, float(eps), 0.0, None)


__all__ = ["layer_norm", "norm_mul_dropout"]
