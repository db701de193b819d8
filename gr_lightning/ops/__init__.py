"""The one dispatch point for HSTU kernels: backbones call these, never a backend directly.

``kernel`` is ``"pytorch"`` (the padded reference, any device), ``"triton"`` (fused jagged kernels,
CUDA, or CPU under ``TRITON_INTERPRET=1``) or ``"auto"`` (triton on CUDA tensors, pytorch elsewhere).
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from gr_lightning.ops import pytorch as _reference
from gr_lightning.ops.jagged import HAS_FBGEMM, jagged_to_padded, padded_to_jagged, seq_index

Kernel = Literal["pytorch", "triton", "auto"]
KERNELS: tuple[str, ...] = ("pytorch", "triton", "auto")


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """Turn ``auto`` into a concrete backend for tensors on ``device``; reject unknown names."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "auto":
        return "triton" if device.type == "cuda" else "pytorch"
    if kernel == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "kernel='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the slow CPU interpreter); "
            "use kernel='auto' to fall back to pytorch off-GPU"
        )
    return kernel


def hstu_attention(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, max_len: int, *, kernel: str = "pytorch",
                   **kwargs) -> Tensor:
    """HSTU attention on jagged ``q, k, v``; see :func:`gr_lightning.ops.pytorch.hstu_attention`."""
    if resolve_kernel(kernel, q.device) == "triton":
        from gr_lightning.ops.triton import hstu_attention as triton_hstu_attention

        return triton_hstu_attention(q, k, v, offsets, max_len, **kwargs)
    return _reference.hstu_attention(q, k, v, offsets, max_len, **kwargs)


def cached_hstu_attention(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, max_len: int, k_cache: Tensor,
                          v_cache: Tensor, cache_lengths: Tensor, *, kernel: str = "pytorch", **kwargs) -> Tensor:
    """HSTU attention of new rows against a KV cache (forward only: inference).

    See :func:`gr_lightning.ops.pytorch.cached_attention.cached_hstu_attention`.
    """
    if resolve_kernel(kernel, q.device) == "triton":
        from gr_lightning.ops.triton.cached_attention import cached_hstu_attention as triton_cached

        return triton_cached(q, k, v, offsets, max_len, k_cache, v_cache, cache_lengths, **kwargs)
    from gr_lightning.ops.pytorch.cached_attention import cached_hstu_attention as reference_cached

    return reference_cached(q, k, v, offsets, max_len, k_cache, v_cache, cache_lengths, **kwargs)


def norm_mul_dropout(attn: Tensor, u: Tensor, eps: float, dropout: float, training: bool,
                     kernel: str = "pytorch") -> Tensor:
    """``Dropout(U * LayerNorm(attn))`` over the concatenated heads (Eq. 3, before the output projection).

    Args:
        attn: ``(sum_N, H * d_v)`` attention output.
        u: ``(sum_N, H * d_v)`` gate.
        eps: LayerNorm epsilon.
        dropout: Drop probability.
        training: Whether dropout is active.
        kernel: Backend name.

    """
    if resolve_kernel(kernel, attn.device) == "triton":
        from gr_lightning.ops.triton import norm_mul_dropout as triton_norm_mul_dropout

        return triton_norm_mul_dropout(attn, u, eps, dropout, training)
    y = u * F.layer_norm(attn, attn.shape[-1:], eps=eps)
    return F.dropout(y, p=dropout, training=training)


def silu_split(x: Tensor, sizes: list[int], kernel: str = "pytorch") -> tuple[Tensor, ...]:
    """``SiLU(x)`` split into column blocks of ``sizes`` (Eq. 1's ``U, V, Q, K``); triton fuses the backward."""
    if resolve_kernel(kernel, x.device) == "triton":
        from gr_lightning.ops.triton import silu_split as triton_silu_split

        return triton_silu_split(x, sizes)
    return F.silu(x).split(sizes, dim=-1)


__all__ = [
    "HAS_FBGEMM",
    "KERNELS",
    "Kernel",
    "cached_hstu_attention",
    "hstu_attention",
    "jagged_to_padded",
    "norm_mul_dropout",
    "padded_to_jagged",
    "resolve_kernel",
    "seq_index",
    "silu_split",
]
