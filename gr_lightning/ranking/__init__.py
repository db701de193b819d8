"""Generative ranking (HSTU paper, Sec. 4.2): token layout, multi-task head, per-task metrics, the module."""

from gr_lightning.ranking.heads import MultiTaskHead
from gr_lightning.ranking.metrics import BinaryTaskMetrics, RegressionTaskMetrics, binned_auc
from gr_lightning.ranking.module import RankingModule
from gr_lightning.ranking.preprocess import RankingPreprocessor, TokenLayout, token_layout
from gr_lightning.ranking.tasks import TaskSpec, parse_tasks

__all__ = [
    "BinaryTaskMetrics",
    "MultiTaskHead",
    "RankingModule",
    "RankingPreprocessor",
    "RegressionTaskMetrics",
    "TaskSpec",
    "TokenLayout",
    "binned_auc",
    "parse_tasks",
    "token_layout",
]
