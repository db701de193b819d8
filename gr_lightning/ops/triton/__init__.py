"""Fused Triton kernels for HSTU (jagged attention with relative bias, fused norms)."""
