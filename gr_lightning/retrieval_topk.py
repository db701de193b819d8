"""Exact full-catalogue top-K by inner product, scored over the catalogue in chunks.

Retrieval scores every item by the inner product of the user's query and the item's embedding (both
L2-normalised, so cosine; HSTU paper, Sec. 4.1, which ranks against the whole catalogue). Scoring a
batch against all ``N`` items at once needs a ``(B, N)`` matrix: 2 GiB for B = 512 and N = 10^6 in
float32. Here the catalogue is scored ``chunk_size`` items at a time and each chunk's scores are merged
into a running top-K, so memory is ``O(B * (chunk_size + K))``. ``torch.topk`` leaves the order of equal
scores unspecified; this module breaks ties by the lower item id, so the result is the same for every
chunk size (and equals a stable descending sort of the full score matrix).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gr_lightning.ops import seq_index


def _top_k_first_columns(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best columns of each row by (value descending, column ascending), in that order.

    Args:
        values: ``(B, C)`` scores.
        k: How many to keep (``<= C``).

    Returns:
        ``(values, columns)``, both ``(B, k)``.

    """
    batch = values.shape[0]
    top = values.topk(k, dim=1)
    threshold = top.values[:, -1:]  # (B, 1) the k-th best value
    tied = values == threshold  # (B, C)
    if bool((tied.sum(dim=1) == (top.values == threshold).sum(dim=1)).all()):
        columns = top.indices  # (B, k) no tie straddles the cut: topk's set is the answer
    else:
        # torch.topk took an arbitrary subset of the values tied at the k-th place; take the first columns.
        above = values > threshold  # (B, C)
        need = k - above.sum(dim=1, keepdim=True)  # (B, 1) tied columns to take
        take = above | (tied & (tied.cumsum(dim=1) <= need))  # (B, C) exactly k per row
        columns = take.nonzero()[:, 1].view(batch, k)  # (B, k)
    columns = columns.sort(dim=1).values  # (B, k) ascending, so the stable sort keeps ties in column order
    order = values.gather(1, columns).argsort(dim=1, descending=True, stable=True)  # (B, k)
    columns = columns.gather(1, order)
    return values.gather(1, columns), columns


def chunked_top_k(query: Tensor, table: Tensor, k: int, chunk_size: int = 65536, *, first_id: int = 1,
                  exclude: Tensor | None = None, exclude_offsets: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Top-``k`` rows of ``table`` by inner product with each query, ties to the lower row id.

    Args:
        query: ``(B, D)`` query vectors.
        table: ``(N, D)`` item vectors; row ``i`` is item id ``i``.
        k: Items per query, ``1 <= k <= N - first_id``.
        chunk_size: Rows of ``table`` scored at a time.
        first_id: Rows before it are never returned (1 skips the padding id 0).
        exclude: Jagged ids to exclude per query (e.g. the user's history). ``(sum_N,)``. An excluded item
            scores ``-inf``; it can be returned only when fewer than ``k`` items remain.
        exclude_offsets: Boundaries of ``exclude``. ``(B+1,)``.

    Returns:
        ``(scores, ids)``, both ``(B, k)``, best first; scores are float32 (float64 inputs stay float64).

    Raises:
        ValueError: Bad shapes, ``k`` or ``chunk_size`` out of range, or non-finite vectors.

    """
    if query.ndim != 2 or table.ndim != 2 or query.shape[1] != table.shape[1]:
        raise ValueError(f"need query (B, D) and table (N, D), got {tuple(query.shape)} and {tuple(table.shape)}")
    num_rows = table.shape[0]
    if not 0 <= first_id < num_rows:
        raise ValueError(f"first_id must be in [0, {num_rows}), got {first_id}")
    if not 1 <= k <= num_rows - first_id:
        raise ValueError(f"k must be in [1, {num_rows - first_id}] (items that can be returned), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if (exclude is None) != (exclude_offsets is None):
        raise ValueError("exclude and exclude_offsets go together")
    if exclude_offsets is not None and exclude_offsets.shape != (query.shape[0] + 1,):
        raise ValueError(f"exclude_offsets must be (B+1,) = ({query.shape[0] + 1},), "
                         f"got {tuple(exclude_offsets.shape)}")
    # NaN would break the threshold selection below (NaN == NaN is false); report the cause instead.
    if not bool(torch.isfinite(query).all()) or not bool(torch.isfinite(table).all()):
        raise ValueError("query and table must be finite (NaN or inf in the embeddings)")

    dtype = torch.float64 if torch.float64 in (query.dtype, table.dtype) else torch.float32
    query = query.to(dtype)
    batch = query.shape[0]
    if exclude is not None and exclude.numel():
        exclude_seq, _ = seq_index(exclude_offsets, exclude.numel())  # (sum_N,) query of each excluded id
    best_values = query.new_empty(batch, 0)  # (B, <=k) running top-k, ties in id order
    best_ids = torch.empty(batch, 0, dtype=torch.int64, device=query.device)
    # Exact scores: no autocast to bf16/fp16 inside a mixed-precision predict loop.
    with torch.autocast(device_type=query.device.type, enabled=False):
        for start in range(first_id, num_rows, chunk_size):
            stop = min(start + chunk_size, num_rows)
            scores = query @ table[start:stop].to(dtype).T  # (B, c)
            if exclude is not None and exclude.numel():
                hit = (exclude >= start) & (exclude < stop)  # (sum_N,)
                scores[exclude_seq[hit], exclude[hit] - start] = float("-inf")
            values, columns = _top_k_first_columns(scores, min(k, stop - start))  # (B, <=k) chunk's best
            # Merge: running ids all precede this chunk's, so column order is id order among equal values.
            values = torch.cat([best_values, values], dim=1)  # (B, <=2k)
            ids = torch.cat([best_ids, columns + start], dim=1)  # (B, <=2k)
            best_values, columns = _top_k_first_columns(values, min(k, values.shape[1]))
            best_ids = ids.gather(1, columns)
    return best_values, best_ids
