"""RankingModule: generative ranking with HSTU as a LightningModule (Zhai et al. 2024, Sec. 2.2, 4.2, Fig. 3).

Contextual tokens, interleaved (item, action) history and candidate items go through a zoo backbone with
the target-aware mask (candidates see the history and themselves; the history never sees candidates)
and the contextual-prefix mask; the outputs at the candidate positions feed a multi-task MLP head that
predicts, for every task of the YAML task list, a logit (binary, BCE) or a value (regression, MSE).

Optionally (``supervise_history``) every history item token is supervised too: under the causal mask
its output has seen only earlier events, not its own action, so it is a valid extra training example.
This is incompatible with the contextual-prefix mask (prefix tokens see the whole history, including
later actions, and pass them on to earlier rows in the next layer), which the module refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from gr_lightning.compilation import compile_backbone_blocks
from gr_lightning.data.ranking import RankingBatch
from gr_lightning.loss_log import TrainingLossLogging
from gr_lightning.module import default_optimizer, optimizers_from_factories
from gr_lightning.ranking.heads import MultiTaskHead
from gr_lightning.ranking.metrics import BinaryTaskMetrics, RegressionTaskMetrics
from gr_lightning.ranking.preprocess import RankingPreprocessor, TokenLayout
from gr_lightning.ranking.tasks import TaskSpec, parse_tasks
from gr_lightning.zoo import Backbone

BackboneFactory = Callable[[int, int], Backbone]


class RankingModule(TrainingLossLogging, L.LightningModule):
    """A generative ranking model.

    Args:
        backbone: A zoo backbone factory (e.g. HSTU), called with ``(embedding_dim, max_tokens)``.
        tasks: The task list (name, type, label, weight); see :mod:`gr_lightning.ranking.tasks`.
        num_items: Catalogue size (linked from the DataModule).
        max_seq_len: Longest history in events (linked from the DataModule).
        data_spec: ``num_actions``, ``context_sizes``, ``context_names``, ``num_candidates``; None reads the
            DataModule's ``ranking_spec`` in ``setup()`` (the tables are built then, before any checkpoint loads).
        embedding_dim: Width D of all embedding tables and of the backbone.
        input_dropout: Dropout on the encoded tokens.
        head_hidden_dims: Hidden widths of the multi-task MLP.
        head_dropout: Dropout inside the MLP.
        use_actions: Interleave action tokens (False: the no-action ablation).
        use_contexts: Prepend contextual tokens.
        contextual_prefix_mask: Let the contextual prefix attend to the whole history (the paper's mask);
            False keeps the prefix causal.
        supervise_history: Also train on every history item (see the module docstring).
        auc_bins: Histogram bins of the binned AUC.
        optimizer: Optimizer factory (AdamW lr 1e-3 by default).
        lr_scheduler: Optional scheduler factory.
        compile_backbone: ``torch.compile`` each backbone block with dynamic shapes (see
            :mod:`gr_lightning.compilation`), in ``configure_model``, after ``setup()`` built the backbone.
        compile_options: Extra ``torch.compile`` arguments.

    """

    def __init__(
        self,
        backbone: BackboneFactory,
        tasks: list[TaskSpec],
        num_items: int,
        max_seq_len: int,
        data_spec: dict | None = None,
        embedding_dim: int = 64,
        input_dropout: float = 0.2,
        head_hidden_dims: list[int] | None = None,
        head_dropout: float = 0.0,
        use_actions: bool = True,
        use_contexts: bool = True,
        contextual_prefix_mask: bool = True,
        supervise_history: bool = False,
        auc_bins: int = 16384,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        compile_backbone: bool = False,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items} (is the DataModule linked?)")
        self.tasks = parse_tasks(tasks)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler", "tasks"], logger=False)
        self.hparams["tasks"] = [asdict(t) for t in self.tasks]  # plain dicts: checkpoints load with weights_only
        self._backbone_factory = backbone
        self.head = MultiTaskHead(embedding_dim, len(self.tasks), list(head_hidden_dims or [128]), head_dropout)
        self.num_contextual = 0
        if data_spec is not None:
            self._build(data_spec)
        self.contextual_prefix_mask = contextual_prefix_mask
        self.supervise_history = supervise_history
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.register_buffer("task_weights", torch.tensor([t.weight for t in self.tasks]), persistent=False)
        self.register_buffer("is_binary", torch.tensor([t.type == "binary" for t in self.tasks]), persistent=False)
        self.val_metrics = self._metrics(auc_bins)
        self.test_metrics = self._metrics(auc_bins)

    def _build(self, data_spec: dict) -> None:
        """Create the embedding tables and the backbone, whose sizes depend on the data."""
        hp = self.hparams
        context_sizes = list(data_spec.get("context_sizes", [])) if hp.use_contexts else []
        self.num_contextual = len(context_sizes)
        if hp.supervise_history and hp.contextual_prefix_mask and self.num_contextual:
            raise ValueError("supervise_history with the contextual-prefix mask leaks future actions into history "
                             "predictions; set contextual_prefix_mask=false or supervise_history=false")
        num_candidates = int(data_spec.get("num_candidates", 1))
        max_tokens = self.num_contextual + (2 if hp.use_actions else 1) * hp.max_seq_len + num_candidates
        self.preprocessor = RankingPreprocessor(hp.num_items, int(data_spec["num_actions"]), context_sizes,
                                                hp.embedding_dim, max_tokens, hp.input_dropout, hp.use_actions)
        self.backbone = self._backbone_factory(hp.embedding_dim, max_tokens)
        if not isinstance(self.backbone, Backbone):
            raise TypeError(f"backbone factory returned {type(self.backbone).__name__}, not a zoo Backbone")
        self.hparams["data_spec"] = dict(data_spec)  # so load_from_checkpoint rebuilds the same tables

    def setup(self, stage: str) -> None:
        """Build the data-dependent parts from the DataModule's ``ranking_spec`` unless ``data_spec`` was given."""
        if hasattr(self, "preprocessor"):
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        spec = getattr(datamodule, "ranking_spec", None)
        if spec is None:
            raise ValueError("RankingModule needs data_spec (num_actions, context_sizes, num_candidates): pass it, or "
                             "train with a RankingDataModule, whose ranking_spec is read in setup()")
        self._build(spec)

    def configure_model(self) -> None:
        """Compile the backbone's blocks when asked (idempotent; Lightning calls this after ``setup``)."""
        if self.hparams.compile_backbone and hasattr(self, "backbone"):
            compile_backbone_blocks(self.backbone, self.hparams.compile_options)

    def _metrics(self, bins: int) -> nn.ModuleDict:
        # Keys carry a prefix: a task may be called like an nn.Module attribute (KuaiRand's "forward").
        return nn.ModuleDict({f"task_{t.name}": BinaryTaskMetrics(bins) if t.type == "binary"
                              else RegressionTaskMetrics() for t in self.tasks})

    # --- model -------------------------------------------------------------------------------------

    def encode(self, batch: RankingBatch) -> tuple[Tensor, TokenLayout]:
        """Backbone output at every token ``(sum_L, D)`` and the token layout."""
        x, layout = self.preprocessor(batch)
        out = self.backbone(x, layout.offsets, layout.max_len, layout.timestamps, batch.query_times,
                            num_targets=layout.num_targets,
                            num_contextual=layout.num_contextual if self.contextual_prefix_mask else 0)
        return out, layout

    def forward(self, batch: RankingBatch) -> Tensor:
        """Predictions ``(M, T)`` (logits of binary tasks) at the candidates, else at every history item."""
        out, layout = self.encode(batch)
        rows = layout.candidate_rows if layout.candidate_rows.numel() else layout.item_rows
        return self.head(out[rows])  # (M, T)

    def task_labels(self, actions: Tensor) -> Tensor:
        """``(M,)`` action ids -> ``(M, T)`` float labels."""
        return torch.stack([t.labels(actions) for t in self.tasks], dim=1)

    def loss(self, predictions: Tensor, labels: Tensor) -> Tensor:
        """Weighted sum over tasks of the mean BCE (binary) or MSE (regression)."""
        bce = F.binary_cross_entropy_with_logits(predictions, labels, reduction="none")  # (M, T)
        mse = (predictions - labels) ** 2  # (M, T)
        per_task = torch.where(self.is_binary, bce, mse).mean(dim=0)  # (T,)
        return (per_task * self.task_weights).sum()

    # --- Lightning hooks ---------------------------------------------------------------------------

    def training_step(self, batch: RankingBatch, batch_idx: int) -> Tensor:
        """Multi-task loss at the candidates (and, with ``supervise_history``, at every history item)."""
        if batch.labels is None:
            raise ValueError("training batches must carry candidate labels")
        out, layout = self.encode(batch)
        rows, actions = layout.candidate_rows, batch.labels
        if self.supervise_history:
            rows, actions = torch.cat([layout.item_rows, rows]), torch.cat([batch.actions, actions])
        loss = self.loss(self.head(out[rows]), self.task_labels(actions))
        self.log_training_loss(loss, batch.batch_size)
        return loss

    def _evaluate(self, batch: RankingBatch, metrics: nn.ModuleDict) -> None:
        if batch.labels is None:
            raise ValueError("evaluation batches must carry candidate labels")
        predictions = self(batch).float()  # (sum_K, T)
        labels = self.task_labels(batch.labels)
        for t, task in enumerate(self.tasks):
            metrics[f"task_{task.name}"].update(predictions[:, t], labels[:, t])

    def _log_epoch(self, prefix: str, metrics: nn.ModuleDict) -> None:
        values: dict[str, Tensor] = {}
        aucs = []
        for task in self.tasks:
            for key, value in metrics[f"task_{task.name}"].compute().items():
                values[f"{prefix}/{key}_{task.name}"] = value
            if task.type == "binary":
                aucs.append(values[f"{prefix}/auc_{task.name}"])
            metrics[f"task_{task.name}"].reset()
        if aucs:
            # Mean AUC over binary tasks (those with both classes present): the checkpoint monitor.
            values[f"{prefix}/auc"] = torch.stack(aucs).nanmean()
        self.log_dict(values)

    def validation_step(self, batch: RankingBatch, batch_idx: int) -> None:
        """Accumulate per-task metrics of the validation candidates."""
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: RankingBatch, batch_idx: int) -> None:
        """Accumulate per-task metrics of the test candidates."""
        self._evaluate(batch, self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        """Log and reset the validation metrics."""
        self._log_epoch("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        """Log and reset the test metrics."""
        self._log_epoch("test", self.test_metrics)

    def predict_step(self, batch: RankingBatch, batch_idx: int) -> dict[str, Tensor]:
        """Every task's prediction for every (user, candidate) pair of the batch.

        Returns:
            Columns of one row per candidate, users in batch order and each user's candidates in their
            order: ``user_id`` (dense user index; the batch row when the batch has no users), ``item_id``
            (dense), ``timestamp`` (the candidate event's, seconds), then per task ``score_<task>`` (the
            probability for a binary task, the predicted value for a regression task) and, when the batch
            carries labels, ``label_<task>`` (that task's label of the action actually taken, for offline
            analysis such as calibration or per-segment AUC).

        """
        out, layout = self.encode(batch)
        predictions = self.head(out[layout.candidate_rows]).float()  # (sum_K, T)
        predictions = torch.where(self.is_binary, torch.sigmoid(predictions), predictions)  # (sum_K, T)
        users = batch.users if batch.users is not None else torch.arange(batch.batch_size, device=out.device)
        columns = {"user_id": users.repeat_interleave(batch.num_candidates, output_size=batch.candidates.numel()),
                   "item_id": batch.candidates, "timestamp": batch.candidate_timestamps}
        columns.update({f"score_{task.name}": predictions[:, t] for t, task in enumerate(self.tasks)})
        if batch.labels is not None:
            labels = self.task_labels(batch.labels)  # (sum_K, T)
            columns.update({f"label_{task.name}": labels[:, t] for t, task in enumerate(self.tasks)})
        return columns

    def configure_optimizers(self):  # noqa: D102 (Lightning's contract)
        return optimizers_from_factories(self.parameters(), self.optimizer_factory, self.lr_scheduler_factory)
