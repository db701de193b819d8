"""Per-task ranking metrics in constant memory (HSTU paper, Sec. 4.2 reports NE; AUC is the standard).

Binary tasks: AUC from histograms of the predicted probability (``num_bins`` bins per class), log loss,
and normalized entropy NE = log loss / H(p), with ``p`` the base rate of the evaluated labels and
``H(p) = -p ln p - (1 - p) ln(1 - p)`` (He et al. 2014). Regression tasks: MSE and MAE. Every state is
a sum, so the metrics are exact under sum-reduction across processes; the binned AUC equals the exact
AUC whenever no two predictions of different classes share a bin (ties within a bin count one half).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric


def binned_auc(positives: Tensor, negatives: Tensor) -> Tensor:
    """AUC from per-bin counts of positives and negatives (bins in increasing score order).

    ``AUC = sum_b pos_b * (neg_{<b} + neg_b / 2) / (P * N)``; NaN when a class is empty.
    """
    pos, neg = positives.to(torch.float64), negatives.to(torch.float64)
    below = torch.cumsum(neg, 0) - neg  # (num_bins,) negatives strictly below each bin
    total = pos.sum() * neg.sum()
    if float(total) == 0.0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return (pos * (below + 0.5 * neg)).sum() / total


class BinaryTaskMetrics(Metric):
    """AUC (binned), NE and log loss of one binary task, accumulated over an epoch.

    Args:
        num_bins: Histogram bins over ``[0, 1]`` of the predicted probability.

    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_bins: int = 16384) -> None:
        super().__init__()
        self.num_bins = num_bins
        self.add_state("pos_hist", torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("neg_hist", torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("log_loss_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("positives", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add ``(M,)`` logits and ``(M,)`` 0/1 labels."""
        logits, labels = logits.detach().float().flatten(), labels.detach().float().flatten()
        bins = (torch.sigmoid(logits) * self.num_bins).long().clamp_(0, self.num_bins - 1)  # (M,)
        self.pos_hist += torch.bincount(bins, weights=labels, minlength=self.num_bins).to(torch.float64)
        self.neg_hist += torch.bincount(bins, weights=1.0 - labels, minlength=self.num_bins).to(torch.float64)
        self.log_loss_sum += F.binary_cross_entropy_with_logits(logits, labels, reduction="sum").to(torch.float64)
        self.count += labels.numel()
        self.positives += labels.sum().to(torch.float64)

    def compute(self) -> dict[str, Tensor]:
        """``auc``, ``ne``, ``log_loss`` (NaN while undefined)."""
        log_loss = self.log_loss_sum / self.count.clamp(min=1)
        p = float(self.positives / self.count.clamp(min=1))
        entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0.0 < p < 1.0 else float("nan")
        return {"auc": binned_auc(self.pos_hist, self.neg_hist).float(), "ne": (log_loss / entropy).float(),
                "log_loss": log_loss.float()}


class RegressionTaskMetrics(Metric):
    """MSE and MAE of one regression task."""

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("squared", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("absolute", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Tensor, labels: Tensor) -> None:
        """Add ``(M,)`` predictions and ``(M,)`` targets."""
        diff = predictions.detach().to(torch.float64).flatten() - labels.detach().to(torch.float64).flatten()
        self.squared += (diff * diff).sum()
        self.absolute += diff.abs().sum()
        self.count += diff.numel()

    def compute(self) -> dict[str, Tensor]:
        """``mse`` and ``mae``."""
        n = self.count.clamp(min=1)
        return {"mse": (self.squared / n).float(), "mae": (self.absolute / n).float()}
