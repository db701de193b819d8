"""Bayes-optimal AUC of a :class:`~gr_lightning.data.SyntheticRanking` config's test candidates.

The generator knows the label model, so it computes ``p(y_t = 1 | context, history, candidate)`` exactly
(HSTU paper, Sec. 4.2 evaluates ranking by AUC-like metrics; this gives the ceiling on synthetic data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from gr_lightning.data.ranking import RankingDataModule
from gr_lightning.data.sources.synthetic_ranking import TASKS, SyntheticRanking
from gr_lightning.ranking.metrics import BinaryTaskMetrics


def bayes_auc(dm: RankingDataModule, stage: str = "test", num_bins: int = 16384) -> dict[str, float]:
    """Binned AUC (as the model's) of the exact posterior probabilities, per task, on ``stage``'s candidates."""
    source = dm.source
    if not isinstance(source, SyntheticRanking):
        raise TypeError(f"the Bayes-optimal AUC needs a SyntheticRanking source, got {type(source).__name__}")
    split = dm.split(stage)
    lengths = split.candidate_ends - split.ends  # (B,)
    owner = np.repeat(np.arange(len(split)), lengths)  # (M,)
    rows = np.repeat(split.ends - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
    probs = source.bayes_probabilities(split.starts, split.ends, rows, owner)  # (M, T)
    actions = np.asarray(dm.store.actions)[rows]
    out = {}
    for t, name in enumerate(TASKS):
        metric = BinaryTaskMetrics(num_bins)
        p = torch.from_numpy(probs[:, t]).clamp(1e-7, 1 - 1e-7)
        metric.update(torch.log(p / (1 - p)), torch.from_numpy((actions >> t) & 1).float())
        out[name] = float(metric.compute()["auc"])
    return out


def bayes_optimal_auc(config: str | Path, cache_dir: str = ".cache/gr-lightning") -> dict[str, float]:
    """Build the DataModule of a YAML config (its ``data.init_args``) and return :func:`bayes_auc` of its test split."""
    data = yaml.safe_load(Path(config).read_text())["data"]["init_args"]
    source = SyntheticRanking(**data["source"].get("init_args", {}))
    kwargs = {k: v for k, v in data.items() if k in ("max_seq_len", "num_candidates", "num_actions")}
    dm = RankingDataModule(source, cache_dir=cache_dir, **kwargs)
    return bayes_auc(dm)
