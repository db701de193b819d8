"""Item-embedding export for an external approximate-nearest-neighbour index (FAISS, ScaNN, ...).

A retrieval model scores item ``i`` for a user by the inner product ``<q, e_i>`` of the user's query
``q`` (the backbone output at the last event) and the item's embedding ``e_i``, both L2-normalised, so
the score is their cosine (HSTU paper, Sec. 4.1: the whole catalogue is ranked this way). This module
writes every ``e_i`` exactly as ``predict`` scores it (float32, L2-normalised) with the item's raw id, so
a maximum-inner-product index over the file returns the items ``predict`` returns (up to the index's own
approximation), once the user's history is removed when the model filters it.

File: Parquet, columns ``item_id`` (raw id) and ``embedding`` (``fixed_size_list<float32>[D]``), one row
per item (the padding id is left out); the schema metadata key ``gr_lightning`` holds a JSON object
with ``dim``, ``num_items``, ``normalization`` (``l2``), ``similarity`` (``inner_product``, equal to
cosine on these vectors), ``filter_history`` and where the vectors came from.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from gr_lightning.module import GRModule

#: Schema-metadata key of the export's JSON description.
METADATA_KEY = b"gr_lightning"


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON description stored in an exported file."""
    metadata = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} has no {METADATA_KEY.decode()!r} metadata: not written by export-embeddings")
    return json.loads(metadata[METADATA_KEY])


def export_item_embeddings(model: GRModule, output: str | Path, item_ids: np.ndarray | None = None,
                           chunk_size: int = 65536, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Write every item's scored embedding to Parquet, ``chunk_size`` items per row group.

    Args:
        model: The retrieval model.
        output: Destination file; written under a temporary name and moved into place when complete.
        item_ids: ``(num_items + 1,)`` raw id of each dense item id; None writes the dense ids ``1..N``.
        chunk_size: Items per row group (memory beyond the weights is ``O(chunk_size x D)``).
        extra_metadata: More entries for the JSON description (e.g. the checkpoint path).

    Returns:
        The written path.

    Raises:
        TypeError: ``model`` is not a retrieval model.
        ValueError: ``item_ids`` does not cover the catalogue, or ``chunk_size < 1``.

    """
    if not isinstance(model, GRModule):
        raise TypeError(f"export-embeddings needs a retrieval model (GRModule), got {type(model).__name__}; "
                        "a ranking model scores candidates with the whole network, not by inner product")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    weight = model.item_embedding.weight.detach()  # (N + 1, D), row 0 the padding id
    num_items, dim = weight.shape[0] - 1, weight.shape[1]
    if item_ids is not None and np.shape(item_ids) != (num_items + 1,):
        raise ValueError(f"item_ids must have shape ({num_items + 1},) (one raw id per dense id and padding), "
                         f"got {np.shape(item_ids)}")
    meta = {"dim": dim, "num_items": num_items, "normalization": "l2", "similarity": "inner_product",
            "dtype": "float32", "filter_history": bool(model.filter_history),
            "query": "GRModule.encode(batch)[batch.last_index()] (L2-normalised)", **(extra_metadata or {})}
    id_type = pa.from_numpy_dtype(np.asarray(item_ids).dtype) if item_ids is not None else pa.int64()
    schema = pa.schema([("item_id", id_type), ("embedding", pa.list_(pa.float32(), dim))],
                       metadata={METADATA_KEY: json.dumps(meta)})
    final = Path(output)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(1, num_items + 1, chunk_size):
                stop = min(start + chunk_size, num_items + 1)
                # Row-wise, so equal to model.item_table()[start:stop], the vectors predict scores.
                vectors = F.normalize(weight[start:stop].float(), dim=-1).cpu().numpy()  # (c, D)
                dense = np.arange(start, stop, dtype=np.int64)
                ids = dense if item_ids is None else np.asarray(item_ids)[dense]
                embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)  # (c * D,) -> (c, D)
                writer.write_table(pa.table({"item_id": ids, "embedding": embedding}, schema=schema))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def main(argv: list[str]) -> None:
    """``gr-lightning export-embeddings --config X.yaml --ckpt_path Y --output items.parquet [overrides]``."""
    parser = argparse.ArgumentParser(
        prog="gr-lightning export-embeddings",
        description="Write a retrieval checkpoint's L2-normalised item embeddings with raw item ids to Parquet, "
                    "for a maximum-inner-product ANN index that reproduces `predict`'s top-K.",
        epilog="Every other argument (--config, --data.*, --model.*) is read as by `gr-lightning predict`.")
    parser.add_argument("--ckpt_path", required=True, help="Checkpoint to export.")
    parser.add_argument("--output", required=True, help="Destination Parquet file.")
    parser.add_argument("--chunk_size", type=int, default=65536, help="Items per Parquet row group.")
    args, rest = parser.parse_known_args(argv)

    from gr_lightning.cli import build_cli  # the CLI imports this module

    cli = build_cli(rest, run=False)
    checkpoint = cli.trainer.strategy.load_checkpoint(args.ckpt_path)  # as `predict --ckpt_path` reads it
    cli.model.load_state_dict(checkpoint["state_dict"])
    raw = cli.datamodule.item_raw_ids() if hasattr(cli.datamodule, "item_raw_ids") else None
    with torch.no_grad():
        path = export_item_embeddings(cli.model, args.output, raw, args.chunk_size,
                                      {"checkpoint": str(Path(args.ckpt_path).resolve())})
    print(f"wrote {cli.model.item_embedding.num_embeddings - 1} item embeddings to {path}")
