"""Streaming prediction output: every ``predict`` batch is appended to Parquet (or CSV) as it arrives.

A model's ``predict_step`` returns a dict of columns, equal-length 1-D tensors with one entry per output
row: retrieval writes one row per recommended item (:meth:`gr_lightning.module.GRModule.predict_step`),
ranking one row per (user, candidate) pair (:meth:`gr_lightning.ranking.RankingModule.predict_step`).
The writer knows nothing else about the model: it maps the dense ``user_id`` and ``item_id`` columns
back to the source's raw ids when the DataModule knows them (``user_raw_ids()``, ``item_raw_ids()``)
and writes the columns in the order given.

Memory stays flat however many users are scored (run with ``return_predictions=False``, as the CLI
does). Rows follow the predict dataloader's user order. The file is written under a temporary name and
moved into place when the epoch ends, so a crash never leaves a half-written file under the final name.
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

#: Columns holding dense ids, and the DataModule method returning the raw id of each dense id.
ID_COLUMNS: dict[str, str] = {"user_id": "user_raw_ids", "item_id": "item_raw_ids"}


def predictions_table(columns: dict[str, torch.Tensor], raw_ids: dict[str, np.ndarray] | None = None) -> pa.Table:
    """One batch of predictions as an Arrow table.

    Args:
        columns: Equal-length 1-D tensors by column name, as returned by a ``predict_step``.
        raw_ids: For some of the :data:`ID_COLUMNS`, the raw id of each dense id; other columns are written
            as they are.

    Returns:
        The columns in the given order, dense ids replaced by raw ids.

    Raises:
        ValueError: ``columns`` is not a dict of equal-length 1-D tensors.

    """
    if not isinstance(columns, dict) or not columns:
        raise ValueError(f"predict_step must return a non-empty dict of columns, got {type(columns).__name__}")
    data: dict[str, np.ndarray] = {}
    for name, value in columns.items():
        if not isinstance(value, torch.Tensor) or value.ndim != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"prediction column {name!r} must be a 1-D tensor (one value per row), got {shape}")
        if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
            value = value.float()  # NumPy has no bfloat16
        array = value.detach().cpu().numpy()
        if raw_ids is not None and name in raw_ids:
            array = raw_ids[name][array]
        data[name] = array
    lengths = {name: len(array) for name, array in data.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"prediction columns differ in length: {lengths}")
    return pa.table(data)


class PredictionWriter(BasePredictionWriter):
    """Append each batch's prediction rows to a Parquet or CSV file.

    Args:
        output: Destination file. With several processes each rank writes ``<stem>.rank<r><suffix>``.
        format: ``parquet`` or ``csv``.
        top_k: Retrieval: recommendations per user (sets the model's ``predict_top_k``).
        chunk_size: Retrieval: catalogue items scored at a time; memory is ``O(batch x chunk_size)``
            (sets the model's ``predict_chunk_size``).

    """

    def __init__(self, output: str = "predictions.parquet", format: Literal["parquet", "csv"] = "parquet",
                 top_k: int = 100, chunk_size: int = 65536) -> None:
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if format not in ("parquet", "csv"):
            raise ValueError(f"format must be 'parquet' or 'csv', got {format!r}")
        self.top_k = top_k
        self.chunk_size = chunk_size
        self.output = output
        self.format = format
        self._writer: Any = None
        self._schema: pa.Schema | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._raw_ids: dict[str, np.ndarray] = {}

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Resolve this rank's file and the raw-id vocabularies; pass the retrieval settings to the model."""
        for attribute, value in (("predict_top_k", self.top_k), ("predict_chunk_size", self.chunk_size)):
            if hasattr(pl_module, attribute):
                setattr(pl_module, attribute, value)
        path = Path(self.output)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._final = path
        self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        dm = trainer.datamodule
        self._raw_ids = {column: np.asarray(getattr(dm, method)()) for column, method in ID_COLUMNS.items()
                         if hasattr(dm, method)}

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Append one batch."""
        table = predictions_table(prediction, self._raw_ids)
        if self._writer is None:
            self._schema = table.schema
            if self.format == "parquet":
                self._writer = pq.ParquetWriter(self._tmp, table.schema)
            else:
                self._writer = pcsv.CSVWriter(self._tmp, table.schema)
        elif not table.schema.equals(self._schema):
            raise ValueError(f"predict batch {batch_idx} has columns {table.schema.to_string()!r}, but the file "
                             f"was started with {self._schema.to_string()!r}")
        self._writer.write_table(table)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the file and move it into place."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self._final)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Close and delete the partial file (the final name is never written)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._tmp.unlink(missing_ok=True)
