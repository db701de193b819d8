"""Fused Triton kernels for HSTU (jagged attention with relative bias, fused norms)."""

from gr_lightning.ops.triton.hstu_attention import hstu_attention
from gr_lightning.ops.triton.norm_mul_dropout import layer_norm, norm_mul_dropout
from gr_lightning.ops.triton.silu_split import silu_split

__all__ = ["hstu_attention", "layer_norm", "norm_mul_dropout", "silu_split"]
