"""Incremental inference (HSTU paper Sec. 3.4, M-FALCON): per-user KV caches and scorers built on them."""

from gr_lightning.serving.cache import KVCache

__all__ = ["KVCache"]
