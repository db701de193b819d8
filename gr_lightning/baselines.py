"""Non-learned reference points for the retrieval metrics."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from gr_lightning.batch import JaggedBatch
from gr_lightning.metrics import RetrievalMetrics, target_ranks


def most_popular_metrics(
    item_counts: np.ndarray, batches: Iterable[JaggedBatch], filter_history: bool = True
) -> dict[str, Tensor]:
    """Rank every target by training popularity: the most-popular-items baseline.

    The ranking is scored exactly like a model's (same history filtering, same rank and ties rule),
    so the numbers are directly comparable with ``test/*`` metrics of a run on the same split.

    Args:
        item_counts: Training-split frequency of each item id. ``(num_items + 1,)``.
        batches: Evaluation batches carrying ``targets`` (e.g. a DataModule's test dataloader).
        filter_history: Exclude each user's history, as the model's evaluation does by default.

    Returns:
        The metrics of :class:`~gr_lightning.metrics.RetrievalMetrics`.

    """
    # Break popularity ties by a tiny deterministic jitter so the baseline is not flattered by ties.
    base = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64)
    base = base + torch.linspace(0.0, 0.5, base.numel(), dtype=torch.float64)
    metrics = RetrievalMetrics()
    for batch in batches:
        if batch.targets is None:
            raise ValueError("most_popular_metrics needs evaluation batches with targets")
        scores = base.expand(batch.batch_size, -1)
        history = batch.items if filter_history else None
        metrics.update(target_ranks(scores, batch.targets, history, batch.offsets))
    return metrics.compute()
