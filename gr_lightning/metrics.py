"""Ranking metrics of full-catalogue retrieval, reduced from the target's rank in every batch.

HR@K = 1[rank <= K]; NDCG@K = 1[rank <= K] / log2(rank + 1) (one relevant item); MRR = 1 / rank.
torchmetrics' retrieval classes keep every score of the epoch to sort them at the end; with a catalogue
of 10^4-10^6 items that is gigabytes per epoch, so this module keeps only sums and a count (constant
memory, exact under distributed reduction).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from gr_lightning.ops import seq_index

DEFAULT_HR_KS: tuple[int, ...] = (1, 10, 50, 200)
DEFAULT_NDCG_KS: tuple[int, ...] = (10, 50, 200)


def mask_history(scores: Tensor, history: Tensor, history_offsets: Tensor) -> Tensor:
    """Set the padding column and every history item of each row to -inf, in place.

    Args:
        scores: ``(B, num_items + 1)``.
        history: Jagged item ids. ``(sum_N,)``.
        history_offsets: ``(B+1,)``.

    Returns:
        ``scores``.

    """
    scores[:, 0] = float("-inf")
    if history.numel():
        seq, _ = seq_index(history_offsets, history.numel())
        scores[seq, history] = float("-inf")
    return scores


def target_ranks(scores: Tensor, targets: Tensor, history: Tensor | None = None,
                 history_offsets: Tensor | None = None) -> Tensor:
    """1-based rank of each target among the catalogue, ties counted in the target's favour.

    Args:
        scores: Scores of every item; column 0 (padding id) is ignored. ``(B, num_items + 1)``.
        targets: The held-out item of each row. ``(B,)``.
        history: Items to exclude from the ranking (the user's history), jagged. ``(sum_N,)``.
        history_offsets: Boundaries of ``history``. ``(B+1,)``.

    Returns:
        ``(B,)`` int64 ranks. The target itself is never excluded, even if it is in the history.

    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_score = scores[rows, targets].unsqueeze(1)  # (B, 1)
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    if history is not None and history_offsets is not None:
        mask_history(scores, history, history_offsets)
    scores[rows, targets] = float("-inf")
    return (scores > target_score).sum(dim=1) + 1


class RetrievalMetrics(Metric):
    """HR@K, NDCG@K and MRR from target ranks.

    Args:
        hr_ks: Cut-offs for hit rate.
        ndcg_ks: Cut-offs for NDCG.

    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, hr_ks: tuple[int, ...] = DEFAULT_HR_KS, ndcg_ks: tuple[int, ...] = DEFAULT_NDCG_KS) -> None:
        super().__init__()
        self.hr_ks, self.ndcg_ks = tuple(hr_ks), tuple(ndcg_ks)
        self.add_state("hr", torch.zeros(len(self.hr_ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("ndcg", torch.zeros(len(self.ndcg_ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rr", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, ranks: Tensor) -> None:
        """Accumulate a batch of 1-based ranks ``(B,)``."""
        r = ranks.to(torch.float64)
        hr_ks = torch.tensor(self.hr_ks, device=r.device, dtype=torch.float64)
        ndcg_ks = torch.tensor(self.ndcg_ks, device=r.device, dtype=torch.float64)
        self.hr += (r.unsqueeze(1) <= hr_ks).sum(0)
        gain = 1.0 / torch.log2(r + 1.0)
        self.ndcg += ((r.unsqueeze(1) <= ndcg_ks) * gain.unsqueeze(1)).sum(0)
        self.rr += (1.0 / r).sum()
        self.count += r.numel()

    def compute(self) -> dict[str, Tensor]:
        """Means over every ranked target, keyed ``hr_10``, ``ndcg_10``, ``mrr``, ...."""
        n = self.count.clamp(min=1).to(torch.float64)
        out = {f"hr_{k}": self.hr[i] / n for i, k in enumerate(self.hr_ks)}
        out.update({f"ndcg_{k}": self.ndcg[i] / n for i, k in enumerate(self.ndcg_ks)})
        out["mrr"] = self.rr / n
        return {key: value.float() for key, value in out.items()}
