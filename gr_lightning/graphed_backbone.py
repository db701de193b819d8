"""CUDA graphs of a backbone's training forward and backward, one per padded batch shape.

A small model such as HSTU-large on MovieLens (D=50, 8 blocks) launches a few hundred short kernels per
step, and the GPU waits for the host that launches them. ``torch.cuda.make_graphed_callables`` records a
callable's forward and backward once and replays each with one launch. It needs fixed shapes, and jagged
batches change shape every step, so :func:`pad_for_graph` rounds the rows up to a multiple of a bucket:
the padding rows (zeros) form extra sequences of at most ``max_seq_len`` rows, which no real row attends
to (attention never crosses sequences). Their outputs are dropped, so they get zero gradient and change
nothing. ``max_len`` is fixed at the backbone's ``max_seq_len`` (kernel grids depend on it; the programs of
shorter sequences exit at once), so every shape shares one Triton tuning.

Caveats: a graph holds its own activation memory (one per shape bucket); ops that read device values on
the host cannot be captured; the backbone's dropout must draw on the device (``F.dropout`` and the Triton
kernels do), so that each replay draws a new mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gr_lightning.zoo import Backbone


@dataclass
class PaddedBatch:
    """A jagged batch padded to a graph's fixed shape (see :func:`pad_for_graph`)."""

    x: Tensor  # (R, D): the real rows, then zeros
    offsets: Tensor  # (B + K + 1,): the real sequences, then K padding sequences (some possibly empty)
    timestamps: Tensor  # (R,)
    query_times: Tensor | None  # (B + K,)
    rows: int  # real rows, to slice the output back


def pad_for_graph(x: Tensor, offsets: Tensor, timestamps: Tensor, query_times: Tensor | None, *, row_bucket: int,
                  max_len: int) -> PaddedBatch:
    """Pad jagged rows to ``R = ceil(rows / row_bucket) * row_bucket`` rows in ``B + K`` sequences.

    ``K = ceil(row_bucket / max_len)`` padding sequences hold the ``R - rows`` padding rows, at most
    ``max_len`` each, so ``R`` and ``B`` alone fix every shape. Everything is computed from shapes: no sync.

    Args:
        x: ``(sum_N, D)`` layer input.
        offsets: ``(B+1,)``.
        timestamps: ``(sum_N,)``.
        query_times: ``(B,)`` or None.
        row_bucket: Rows are rounded up to a multiple of this.
        max_len: Longest allowed sequence (the padding sequences' limit).

    """
    if row_bucket < 1 or max_len < 1:
        raise ValueError(f"row_bucket and max_len must be >= 1, got {row_bucket} and {max_len}")
    rows = x.shape[0]
    padded = -(-max(rows, 1) // row_bucket) * row_bucket
    pad = padded - rows
    slots = -(-row_bucket // max_len)
    # The K padding sequences take max_len rows each until the padding runs out; built on the device, as a
    # host tensor copied over would wait for the GPU.
    full = torch.arange(1, slots + 1, dtype=offsets.dtype, device=offsets.device) * max_len  # (K,)
    ends = rows + full.clamp(max=pad)  # (K,)
    qt = None
    if query_times is not None:
        qt = torch.cat([query_times, query_times.new_zeros(slots)])  # (B + K,)
    return PaddedBatch(
        x=torch.cat([x, x.new_zeros(pad, x.shape[1])]),  # (R, D)
        offsets=torch.cat([offsets, ends]),  # (B + K + 1,)
        timestamps=torch.cat([timestamps, timestamps.new_zeros(pad)]),  # (R,)
        query_times=qt, rows=rows,
    )


class _FixedLength(nn.Module):
    """The backbone with ``max_len`` fixed, called with tensors only (what a graphed callable takes)."""

    def __init__(self, backbone: Backbone, max_len: int) -> None:
        super().__init__()
        self.backbone, self.max_len = backbone, max_len

    def forward(self, x: Tensor, offsets: Tensor, timestamps: Tensor, query_times: Tensor | None = None) -> Tensor:
        return self.backbone(x, offsets, self.max_len, timestamps, query_times)


class GraphedBackbone:
    """Replays a backbone's training forward and backward from CUDA graphs, captured per padded shape.

    Not a module: it holds no parameters of its own (the backbone's are used in place, so the optimizer's
    updates are seen by every replay) and is not saved in checkpoints.

    Args:
        backbone: The backbone, in training mode on CUDA.
        row_bucket: Rows are padded up to a multiple of this (fewer graphs against more padding).
        max_graphs: Shapes to capture at most; later new shapes run eagerly.

    """

    def __init__(self, backbone: Backbone, row_bucket: int = 2048, max_graphs: int = 16) -> None:
        if row_bucket < 1 or max_graphs < 1:
            raise ValueError(f"row_bucket and max_graphs must be >= 1, got {row_bucket} and {max_graphs}")
        self.backbone, self.row_bucket, self.max_graphs = backbone, row_bucket, max_graphs
        self.max_len = backbone.max_seq_len
        self._graphs: dict[tuple, nn.Module] = {}
        self.eager_calls = 0  # calls beyond max_graphs shapes, run without a graph

    @property
    def num_graphs(self) -> int:
        """Shapes captured so far."""
        return len(self._graphs)

    def __call__(self, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor,
                 query_times: Tensor | None = None) -> Tensor:
        """The backbone's output ``(sum_N, D)``, as ``backbone(x, offsets, max_len, timestamps, query_times)``."""
        if max_len > self.max_len:
            raise ValueError(f"a sequence of {max_len} rows exceeds the backbone's max_seq_len {self.max_len}")
        if not x.is_cuda:
            raise ValueError(f"CUDA graphs need CUDA tensors, got x on {x.device}")
        batch = pad_for_graph(x, offsets, timestamps, query_times, row_bucket=self.row_bucket, max_len=self.max_len)
        autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda") if autocast else None
        key = (batch.x.shape[0], batch.offsets.shape[0], query_times is None, x.dtype, x.requires_grad, dtype)
        args = (batch.x, batch.offsets, batch.timestamps) + (() if query_times is None else (batch.query_times,))
        # Graph capture needs autocast's weight cache off (cached casts would outlive the capture).
        with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=autocast, cache_enabled=False):
            graphed = self._graphs.get(key)
            if graphed is None:
                if len(self._graphs) >= self.max_graphs:
                    self.eager_calls += 1
                    return self.backbone(x, offsets, max_len, timestamps, query_times)
                sample = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
                graphed = torch.cuda.make_graphed_callables(_FixedLength(self.backbone, self.max_len), sample,
                                                             allow_unused_input=True)
                self._graphs[key] = graphed
            out = graphed(*args)
        return out[: batch.rows]


__all__ = ["GraphedBackbone", "PaddedBatch", "pad_for_graph"]
