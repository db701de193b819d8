"""Pure-PyTorch reference implementations of the HSTU ops (padded, readable, any device)."""

from gr_lightning.ops.pytorch.hstu_attention import (
    attention_flops,
    attention_mask,
    hstu_attention,
    next_timestamps,
    relative_position_index,
    time_buckets,
)

__all__ = [
    "attention_flops",
    "attention_mask",
    "hstu_attention",
    "next_timestamps",
    "relative_position_index",
    "time_buckets",
]
