"""Non-learned reference points for ranking (HSTU paper, Sec. 4.2): the item-mean baseline.

It scores a candidate by its item's mean action value (e.g. the mean rating) over the training events.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from gr_lightning.data.ranking import RankingDataModule
from gr_lightning.ranking.tasks import TaskSpec


def item_mean_scores(dm: RankingDataModule, value: str = "value", prior_weight: float = 5.0) -> np.ndarray:
    """``(num_items + 1,)`` mean of ``value`` (a task label rule applied to the action id) per item.

    Only training events are used: each user's events before the validation candidates. Means are shrunk
    towards the global mean with ``prior_weight`` pseudo-events, so rare items do not get extreme scores.
    """
    store, train = dm.store, dm.split("train")
    first = np.asarray(store.offsets)[train.users]
    lengths = train.candidate_ends - first  # (M,) every event before the validation candidates
    rows = np.repeat(first - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
    spec = TaskSpec("baseline", "regression" if value == "value" else "binary", value)
    values = spec.labels(torch.from_numpy(np.asarray(store.actions)[rows])).double().numpy()  # (E,)
    items = np.asarray(store.items)[rows]
    sums = np.bincount(items, weights=values, minlength=dm.num_items + 1)
    counts = np.bincount(items, minlength=dm.num_items + 1)
    mean = values.mean()
    return (sums + prior_weight * mean) / (counts + prior_weight)


def item_mean_auc(dm: RankingDataModule, task: TaskSpec, value: str = "value", stage: str = "test") -> float:
    """Exact AUC of ``task`` on the ``stage`` candidates when scored by :func:`item_mean_scores`."""
    scores = item_mean_scores(dm, value)
    split = dm.split(stage)
    lengths = split.candidate_ends - split.ends
    rows = np.repeat(split.ends - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
    labels = task.labels(torch.from_numpy(np.asarray(dm.store.actions)[rows]))
    preds = torch.from_numpy(scores[np.asarray(dm.store.items)[rows]])
    return float(binary_auroc(preds, labels.long()))
