"""Incremental retrieval: keep each user's history in a KV cache, append events, read the user embedding.

HSTU paper Sec. 3.4 (M-FALCON) applied to retrieval (Sec. 4.1): the query embedding of a user is the
L2-normalised backbone output at the last event of their history. With a
:class:`~gr_lightning.serving.KVCache` a new event costs one pass of the new rows (plus the pending last
row, see :mod:`gr_lightning.serving.cache`) instead of re-encoding the history, and the embedding equals
:meth:`GRModule.encode` on the whole history. Token encoding mirrors
:class:`~gr_lightning.nn.PositionalInputEncoder` for events placed behind a cached history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from gr_lightning.ops.jagged import max_length, seq_index
from gr_lightning.serving.cache import KVCache
from gr_lightning.serving.ranking import require_cached_backbone

if TYPE_CHECKING:
    from gr_lightning.batch import JaggedBatch
    from gr_lightning.module import GRModule


class RetrievalScorer:
    """User embeddings from cached histories for a trained :class:`~gr_lightning.module.GRModule` (eval mode).

    Args:
        module: The trained module (HSTU backbone).

    """

    def __init__(self, module: GRModule) -> None:
        require_cached_backbone(module.backbone)
        self.module = module

    @torch.no_grad()
    def prefill(self, batch: JaggedBatch, capacity: int | None = None) -> KVCache:
        """Cache the histories of ``batch``.

        Args:
            batch: The users' histories (targets and query times are not used here).
            capacity: Longest history the cache can grow to (default and at most the module's ``max_seq_len``:
                the full model keeps only that many recent events, so a longer one is not the same model).

        """
        module = self.module
        if module.training:
            raise RuntimeError("incremental inference needs eval mode (call .eval())")
        limit = module.input_encoder.max_seq_len
        if capacity is not None and capacity > limit:
            raise ValueError(f"capacity {capacity} exceeds max_seq_len {limit}: the model keeps only the last "
                             f"{limit} events of a history")
        x = module.input_encoder(module.item_embedding(batch.items), batch.offsets)  # (sum_N, D)
        return module.backbone.prefill(x, batch.offsets, batch.max_len, batch.timestamps,
                                       capacity=limit if capacity is None else capacity)

    @torch.no_grad()
    def append(self, cache: KVCache, items: Tensor, timestamps: Tensor, offsets: Tensor,
               query_times: Tensor | None = None) -> Tensor:
        """Extend every cached history by jagged events (in place); return the updated user embeddings.

        Args:
            cache: From :meth:`prefill`.
            items: ``(sum_N,)`` item ids of the new events (a user may get none).
            timestamps: ``(sum_N,)`` their times.
            offsets: ``(B+1,)``.
            query_times: ``(B,)`` request times (the temporal bias of the last event), or None.

        Returns:
            ``(B, D)`` L2-normalised user embeddings.

        """
        cache.check_batch(offsets.numel() - 1, "offsets")
        if items.shape != timestamps.shape or items.numel() != int(offsets[-1]):
            raise ValueError(f"items {tuple(items.shape)} and timestamps {tuple(timestamps.shape)} must both have "
                             f"offsets[-1] = {int(offsets[-1])} entries")
        encoder = self.module.input_encoder
        seq, j = seq_index(offsets, items.numel())  # (sum_N,) each
        positions = (cache.history_lengths[seq] + j).clamp(max=encoder.max_seq_len - 1)  # (sum_N,)
        x = self.module.item_embedding(items) * encoder.scale + encoder.position(positions)  # (sum_N, D)
        out = self.module.backbone.append(cache, x, offsets, max_length(offsets), timestamps, query_times)  # (B, D)
        return F.normalize(out, dim=-1)

    @torch.no_grad()
    def user_embedding(self, cache: KVCache, query_times: Tensor | None = None) -> Tensor:
        """``(B, D)`` L2-normalised output at each cached history's last event."""
        return F.normalize(self.module.backbone.last_output(cache, query_times), dim=-1)

    @torch.no_grad()
    def score_catalogue(self, cache: KVCache, query_times: Tensor | None = None) -> Tensor:
        """Cosine score of every item for each cached user, as ``GRModule.score_catalogue``. ``(B, num_items + 1)``."""
        return self.user_embedding(cache, query_times) @ self.module.item_table().T


__all__ = ["RetrievalScorer"]
