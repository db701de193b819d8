"""The batch contract: jagged user sequences, concatenated without padding.

Every DataModule yields :class:`JaggedBatch` and every backbone consumes its ``values`` / ``offsets``
layout. Sequence ``b`` occupies rows ``offsets[b]:offsets[b + 1]`` of each per-event tensor, oldest
event first. Item ids are dense, ``1..num_items``; ``0`` is reserved and never appears in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


class JaggedRows:
    """What every jagged batch derives from its ``offsets`` ``(B+1,)``, and its pinned copy.

    Mixed into the batch dataclasses (:class:`JaggedBatch`, ``RankingBatch``); ``offsets`` is their field.
    """

    offsets: Tensor

    @property
    def batch_size(self) -> int:
        """Number of sequences in the batch."""
        return self.offsets.numel() - 1

    @property
    def lengths(self) -> Tensor:
        """Per-sequence lengths. ``(B,)``."""
        return self.offsets[1:] - self.offsets[:-1]

    def pin_memory(self):
        """Page-locked copy for asynchronous host-to-GPU transfer (called by DataLoader's pin_memory)."""
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})


@dataclass
class JaggedBatch(JaggedRows):
    """A batch of variable-length user histories.

    Attributes:
        items: Item ids of every event, sequences concatenated. ``(sum_N,)`` int64.
        timestamps: Event times in seconds, aligned with ``items``. ``(sum_N,)`` int64.
        offsets: Sequence boundaries. ``(B+1,)`` int64, ``offsets[0] == 0``.
        max_len: Length of the longest sequence in the batch (a Python int, so no device sync).
        targets: For evaluation, the held-out next item of each sequence. ``(B,)`` int64, else None.
        users: Dense user index of each sequence (for predictions and debugging). ``(B,)`` int64.
        query_times: Request time after each sequence, the "next timestamp" of its last event for the
            temporal attention bias; at evaluation the target's timestamp. ``(B,)`` int64, else None.

    """

    items: Tensor
    timestamps: Tensor
    offsets: Tensor
    max_len: int
    targets: Tensor | None = None
    users: Tensor | None = None
    query_times: Tensor | None = None

    def last_index(self) -> Tensor:
        """Row of the most recent event of each sequence in the jagged layout. ``(B,)``."""
        return self.offsets[1:] - 1

    def validate(self) -> None:
        """Check the invariants a backbone relies on; raises ValueError naming the broken one."""
        if self.offsets.ndim != 1 or self.offsets.numel() < 1:
            raise ValueError(f"offsets must be a 1-D tensor of length B+1, got shape {tuple(self.offsets.shape)}")
        if int(self.offsets[0]) != 0:
            raise ValueError(f"offsets[0] must be 0, got {int(self.offsets[0])}")
        lengths = self.lengths
        if bool((lengths < 0).any()):
            raise ValueError("offsets must be non-decreasing")
        if int(self.offsets[-1]) != self.items.numel():
            raise ValueError(f"offsets[-1]={int(self.offsets[-1])} but there are {self.items.numel()} items")
        if self.timestamps.shape != self.items.shape:
            raise ValueError(
                f"timestamps {tuple(self.timestamps.shape)} and items {tuple(self.items.shape)} differ"
            )
        if lengths.numel() and int(lengths.max()) > self.max_len:
            raise ValueError(f"max_len={self.max_len} is below the longest sequence ({int(lengths.max())})")
        if self.targets is not None and self.targets.shape != (self.batch_size,):
            raise ValueError(f"targets must have shape ({self.batch_size},), got {tuple(self.targets.shape)}")
        if self.query_times is not None and self.query_times.shape != (self.batch_size,):
            raise ValueError(
                f"query_times must have shape ({self.batch_size},), got {tuple(self.query_times.shape)}"
            )

    @staticmethod
    def from_sequences(
        sequences: list[list[int]],
        timestamps: list[list[int]] | None = None,
        targets: list[int] | None = None,
    ) -> JaggedBatch:
        """Build a batch from Python lists (tests, notebooks); timestamps default to 0, 1, 2, ...."""
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
        offsets = torch.zeros(len(sequences) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        items = torch.tensor([i for s in sequences for i in s], dtype=torch.int64)
        if timestamps is None:
            ts = torch.cat([torch.arange(len(s), dtype=torch.int64) for s in sequences]) if sequences else items
        else:
            ts = torch.tensor([t for s in timestamps for t in s], dtype=torch.int64)
        return JaggedBatch(
            items=items,
            timestamps=ts,
            offsets=offsets,
            max_len=int(lengths.max()) if len(sequences) else 0,
            targets=None if targets is None else torch.tensor(targets, dtype=torch.int64),
        )
