"""Fused Triton kernels for HSTU (jagged attention with relative bias, fused norms)."""

from gr_lightning.ops.triton.hstu_attention import hstu_attention

__all__ = ["hstu_attention"]
