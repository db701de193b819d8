"""Streaming prediction output: every ``predict`` batch is appended to Parquet (or CSV) as it arrives.

Memory stays flat however many users are scored. Rows follow the predict dataloader's user order.
Dense ids are mapped back to the raw ids of the source when the DataModule knows them. The file is
written under a temporary name and moved into place when the epoch ends, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


def predictions_table(prediction: dict[str, torch.Tensor], user_ids: np.ndarray | None = None,
                      item_ids: np.ndarray | None = None) -> pa.Table:
    """Long-format table of one batch of top-K predictions.

    Args:
        prediction: ``users`` ``(B,)``, ``items`` ``(B, K)``, ``scores`` ``(B, K)`` as returned by
            :meth:`gr_lightning.module.GRModule.predict_step`.
        user_ids: Raw id of each dense user index, or None to keep dense indices.
        item_ids: Raw id of each dense item id, or None to keep dense ids.

    Returns:
        Columns ``user_id``, ``rank`` (1-based), ``item_id``, ``score``; ``B * K`` rows, users in order.
    """
    users = prediction["users"].cpu().numpy()
    items = prediction["items"].cpu().numpy()  # (B, K)
    scores = prediction["scores"].float().cpu().numpy()  # (B, K)
    batch, k = items.shape
    if user_ids is not None:
        users = user_ids[users]
    if item_ids is not None:
        items = item_ids[items]
    return pa.table({
        "user_id": np.repeat(users, k),  # (B * K,)
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), batch),
        "item_id": items.reshape(-1),
        "score": scores.reshape(-1),
    })


class PredictionWriter(BasePredictionWriter):
    """Append each batch's top-K recommendations to a Parquet or CSV file.

    Args:
        output: Destination file. With several processes each rank writes ``<stem>.rank<r><suffix>``.
        format: ``parquet`` or ``csv``.
        top_k: Recommendations per user.
    """

    def __init__(self, output: str = "predictions.parquet", format: Literal["parquet", "csv"] = "parquet",
                 top_k: int = 100) -> None:
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        if format not in ("parquet", "csv"):
            raise ValueError(f"format must be 'parquet' or 'csv', got {format!r}")
        self.output = output
        self.format = format
        self._writer: Any = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._ids: tuple[np.ndarray | None, np.ndarray | None] = (None, None)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Resolve this rank's file and the raw-id vocabularies; tell the model how many items to return."""
        if hasattr(pl_module, "predict_top_k"):
            pl_module.predict_top_k = self.top_k
        path = Path(self.output)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._final = path
        self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        dm = trainer.datamodule
        self._ids = (
            dm.user_raw_ids() if hasattr(dm, "user_raw_ids") else None,
            dm.item_raw_ids() if hasattr(dm, "item_raw_ids") else None,
        )

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Append one batch."""
        table = predictions_table(prediction, *self._ids)
        if self._writer is None:
            if self.format == "parquet":
                self._writer = pq.ParquetWriter(self._tmp, table.schema)
            else:
                self._writer = pcsv.CSVWriter(self._tmp, table.schema)
        self._writer.write_table(table)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the file and move it into place."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self._final)
