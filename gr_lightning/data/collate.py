"""Vectorised batch assembly: one numpy gather per batch, no per-event Python."""

from __future__ import annotations

import numpy as np
import torch

from gr_lightning.batch import JaggedBatch
from gr_lightning.data.split import SplitIndex


def gather_batch(
    items: np.ndarray, timestamps: np.ndarray, split: SplitIndex, rows: np.ndarray
) -> JaggedBatch:
    """Build the :class:`JaggedBatch` of ``rows`` of ``split``.

    Args:
        items: ``(N,)`` the store's dense item ids.
        timestamps: ``(N,)`` the store's event times.
        split: The split the rows refer to.
        rows: ``(B,)`` row indices into ``split``.

    Returns:
        A batch of int64 tensors; ``targets`` is set when the split has targets.

    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = split.starts[rows]  # (B,)
    lengths = split.ends[rows] - starts  # (B,)
    offsets = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    # Event row of every output position: its sequence's start plus its position within the sequence.
    shift = np.repeat(starts - offsets[:-1], lengths)  # (sum_N,)
    index = shift + np.arange(total, dtype=np.int64)  # (sum_N,)
    targets = query_times = None
    if split.targets is not None:
        target_rows = split.targets[rows]  # (B,) event rows of the held-out targets
        targets = torch.from_numpy(items[target_rows].astype(np.int64))
        # The target's time is when the recommendation is requested: the temporal bias's query time.
        query_times = torch.from_numpy(timestamps[target_rows].astype(np.int64))
    return JaggedBatch(
        items=torch.from_numpy(items[index].astype(np.int64)),
        timestamps=torch.from_numpy(timestamps[index].astype(np.int64)),
        offsets=torch.from_numpy(offsets),
        max_len=int(lengths.max()) if rows.size else 0,
        targets=targets,
        users=torch.from_numpy(split.users[rows].copy()),
        query_times=query_times,
    )


def passthrough(batch: JaggedBatch) -> JaggedBatch:
    """DataLoader ``collate_fn`` for datasets that already return whole batches."""
    return batch
