"""GRModule: item embeddings + a zoo backbone + the retrieval head and metrics, as a LightningModule.

Training is autoregressive next-item prediction with sampled softmax at every position; evaluation
scores the last position of each held-out history against the whole catalogue (HSTU paper, Sec. 4.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from gr_lightning.batch import JaggedBatch
from gr_lightning.compilation import compile_backbone_blocks
from gr_lightning.graphed_backbone import GraphedBackbone
from gr_lightning.loss_log import TrainingLossLogging
from gr_lightning.metrics import DEFAULT_HR_KS, DEFAULT_NDCG_KS, RetrievalMetrics, target_ranks
from gr_lightning.nn import PositionalInputEncoder, SampledSoftmaxLoss, next_item_targets
from gr_lightning.retrieval_topk import chunked_top_k
from gr_lightning.zoo import Backbone

BackboneFactory = Callable[[int, int], Backbone]


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW as in the paper's retrieval recipe: lr 1e-3, betas (0.9, 0.98), no weight decay."""
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)


def optimizers_from_factories(params: Iterable[nn.Parameter], optimizer: OptimizerCallable,
                              lr_scheduler: LRSchedulerCallable | None):
    """What ``configure_optimizers`` returns for a LightningCLI optimizer factory and optional scheduler."""
    built = optimizer(params)
    if lr_scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": lr_scheduler(built)}


class GRModule(TrainingLossLogging, L.LightningModule):
    """A generative retrieval model.

    Args:
        backbone: A zoo backbone, called with ``(embedding_dim, max_seq_len)``; in YAML a ``class_path``
            (short class name such as ``HSTU`` or a full import path) with its ``init_args``.
        num_items: Catalogue size; ids are ``1..num_items`` (linked from the DataModule).
        max_seq_len: Longest history (linked from the DataModule).
        embedding_dim: Width D of item embeddings and of the backbone.
        input_dropout: Dropout on the encoded input tokens.
        num_negatives: Uniform catalogue negatives per position.
        in_batch_negatives: Extra in-batch negatives per position, logQ-corrected (0: off).
        temperature: Softmax temperature on cosine similarities.
        filter_history: Exclude the user's history from the ranking at evaluation and prediction.
        hr_ks: Hit-rate cut-offs.
        ndcg_ks: NDCG cut-offs.
        optimizer: Optimizer factory (AdamW per the paper by default).
        lr_scheduler: Optional scheduler factory.
        compile_backbone: ``torch.compile`` each backbone block (dynamic shapes: one graph for every batch
            length; see :mod:`gr_lightning.compilation`), applied in ``configure_model`` so FSDP wraps the
            compiled blocks.
        compile_options: Extra ``torch.compile`` arguments, e.g. ``{"mode": "max-autotune-no-cudagraphs"}``.
        cuda_graphs: Replay the backbone's training forward and backward from CUDA graphs (one per padded
            batch shape, see :mod:`gr_lightning.graphed_backbone`): for small models whose steps are bound by
            kernel launches. CUDA only; evaluation stays eager.
        graph_row_bucket: With ``cuda_graphs``, batch rows are padded up to a multiple of this.

    """

    #: Items returned per user by ``predict``; set by :class:`~gr_lightning.prediction.PredictionWriter`.
    predict_top_k: int = 100
    #: Catalogue items scored at a time by ``predict`` (memory ``O(B x chunk)``); set by the PredictionWriter.
    predict_chunk_size: int = 65536

    def __init__(
        self,
        backbone: BackboneFactory,
        num_items: int,
        max_seq_len: int,
        embedding_dim: int = 50,
        input_dropout: float = 0.2,
        num_negatives: int = 128,
        in_batch_negatives: int = 0,
        temperature: float = 0.05,
        filter_history: bool = True,
        hr_ks: tuple[int, ...] = DEFAULT_HR_KS,
        ndcg_ks: tuple[int, ...] = DEFAULT_NDCG_KS,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        compile_backbone: bool = False,
        compile_options: dict[str, Any] | None = None,
        cuda_graphs: bool = False,
        graph_row_bucket: int = 2048,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items} (is the DataModule linked?)")
        if cuda_graphs and compile_backbone:
            raise ValueError("choose cuda_graphs or compile_backbone, not both (compile has its own CUDA-graph "
                             "mode: compile_options={'mode': 'reduce-overhead'})")
        if graph_row_bucket < 1:
            raise ValueError(f"graph_row_bucket must be >= 1, got {graph_row_bucket}")
        # Under LightningCLI the hparams are the config as given (class_path + init_args), so a checkpoint
        # carries everything `--ckpt_path` needs to rebuild the model; logging them is the CLI callback's job.
        self.save_hyperparameters(logger=False)
        self.item_embedding = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        nn.init.trunc_normal_(self.item_embedding.weight, std=0.02)
        self.input_encoder = PositionalInputEncoder(embedding_dim, max_seq_len, input_dropout)
        self.backbone = backbone(embedding_dim, max_seq_len)
        if not isinstance(self.backbone, Backbone):
            raise TypeError(f"backbone factory returned {type(self.backbone).__name__}, not a zoo Backbone")
        self.loss_fn = SampledSoftmaxLoss(num_negatives, temperature, in_batch_negatives)
        # Filled from the DataModule's training item counts in setup(); only in-batch negatives use it.
        self.register_buffer("item_log_q", torch.zeros(num_items + 1), persistent=False)
        self.filter_history = filter_history
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.compile_backbone, self.compile_options = compile_backbone, compile_options
        self.cuda_graphs, self.graph_row_bucket = cuda_graphs, graph_row_bucket
        self._graphed: GraphedBackbone | None = None  # built at the first CUDA training step
        self.val_metrics = RetrievalMetrics(hr_ks, ndcg_ks)
        self.test_metrics = RetrievalMetrics(hr_ks, ndcg_ks)

    # --- model -------------------------------------------------------------------------------------

    def encode(self, batch: JaggedBatch) -> Tensor:
        """L2-normalised backbone output at every event. ``(sum_N, D)``."""
        x = self.input_encoder(self.item_embedding(batch.items), batch.offsets)
        backbone = self.backbone
        if self.cuda_graphs and self.training and x.is_cuda:
            if self._graphed is None:
                self._graphed = GraphedBackbone(self.backbone, self.graph_row_bucket)
            backbone = self._graphed
        out = backbone(x, batch.offsets, batch.max_len, batch.timestamps, batch.query_times)
        return F.normalize(out, dim=-1)

    def item_table(self) -> Tensor:
        """L2-normalised item embeddings, row 0 the padding id. ``(num_items + 1, D)``."""
        return F.normalize(self.item_embedding.weight, dim=-1)

    def score_catalogue(self, batch: JaggedBatch) -> Tensor:
        """Cosine score of every item for the last position of each sequence. ``(B, num_items + 1)``."""
        query = self.encode(batch)[batch.last_index()]  # (B, D)
        return query @ self.item_table().T

    # --- Lightning hooks ---------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Seed this rank's negative-sampling stream; take the training item frequencies for the logQ correction."""
        # Every rank has the same global seed; the stream mixes in the rank, so ranks draw different negatives.
        self.loss_fn.seed_stream(torch.initial_seed(), self.global_rank)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.loss_fn.in_batch_negatives and datamodule is not None and hasattr(datamodule, "item_counts"):
            counts = torch.as_tensor(datamodule.item_counts(), dtype=torch.float64).clamp(min=1.0)
            self.item_log_q.copy_(torch.log(counts / counts.sum()).to(self.item_log_q.dtype))

    def configure_model(self) -> None:
        """Compile the backbone's blocks when asked (idempotent; Lightning calls this before FSDP wrapping)."""
        if self.compile_backbone:
            compile_backbone_blocks(self.backbone, self.compile_options)

    def training_step(self, batch: JaggedBatch, batch_idx: int) -> Tensor:
        """Sampled-softmax loss over every position that has a next item."""
        out = self.encode(batch)  # (sum_N, D)
        # Every row is scored and the last of each sequence masked out: no data-dependent shape, so no
        # host sync. The in-batch negatives' pool is then every event of the batch (item_log_q counts all).
        positives, has_next = next_item_targets(batch.items, batch.offsets)  # (sum_N,) each
        loss = self.loss_fn(out, positives, self.item_table(), self.item_log_q, mask=has_next)
        self.log_training_loss(loss, batch.batch_size)
        return loss

    def _ranks(self, batch: JaggedBatch) -> Tensor:
        if batch.targets is None:
            raise ValueError("evaluation batches must carry targets")
        scores = self.score_catalogue(batch).float()
        history = batch.items if self.filter_history else None
        return target_ranks(scores, batch.targets, history, batch.offsets)

    def validation_step(self, batch: JaggedBatch, batch_idx: int) -> None:
        """Rank each validation target against the catalogue."""
        self.val_metrics.update(self._ranks(batch))

    def test_step(self, batch: JaggedBatch, batch_idx: int) -> None:
        """Rank each test target against the catalogue."""
        self.test_metrics.update(self._ranks(batch))

    def on_validation_epoch_end(self) -> None:
        """Log and reset the validation metrics."""
        self.log_dict({f"val/{k}": v for k, v in self.val_metrics.compute().items()}, prog_bar=False)
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        """Log and reset the test metrics."""
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        self.test_metrics.reset()

    def predict_step(self, batch: JaggedBatch, batch_idx: int) -> dict[str, Tensor]:
        """Top-K items per user (history filtered as configured), the catalogue scored in chunks.

        Returns:
            Columns of one row per recommendation, users in batch order, best first: ``user_id`` (dense
            user index; the batch row when the batch has no users), ``rank`` (1-based), ``item_id`` (dense)
            and ``score`` (cosine, float32). Equal scores rank the lower item id first. A user with fewer
            than K items left after history filtering gets fewer rows.

        """
        query = self.encode(batch)[batch.last_index()]  # (B, D)
        exclude, exclude_offsets = (batch.items, batch.offsets) if self.filter_history else (None, None)
        k = min(self.predict_top_k, self.item_embedding.num_embeddings - 1)
        scores, items = chunked_top_k(query.float(), self.item_table().float(), k, self.predict_chunk_size,
                                      exclude=exclude, exclude_offsets=exclude_offsets)  # (B, K) each
        keep = torch.isfinite(scores)  # (B, K) history items only fill rows that ran out of items
        users = batch.users if batch.users is not None else torch.arange(batch.batch_size, device=scores.device)
        ranks = torch.arange(1, k + 1, dtype=torch.int32, device=scores.device).expand_as(scores)  # (B, K)
        return {"user_id": users.unsqueeze(1).expand_as(items)[keep], "rank": ranks[keep],
                "item_id": items[keep], "score": scores[keep]}

    def configure_optimizers(self):  # noqa: D102 (Lightning's contract)
        return optimizers_from_factories(self.parameters(), self.optimizer_factory, self.lr_scheduler_factory)
