"""Incremental ranking: score candidates against a trained RankingModule's cached user histories.

HSTU paper Sec. 3.4 (M-FALCON) and Fig. 3: a user's tokens ``c_1 .. c_F | i_0 a_0 .. i_{n-1} a_{n-1}``
are encoded once into a :class:`~gr_lightning.serving.KVCache`; each request then runs only its candidate
tokens, which attend to the cached history and themselves (the target-aware mask), so the predictions
equal :meth:`RankingModule.forward` on the whole batch. New (item, action) events extend the cache.

The scorer reuses the module's tables and head; token encoding mirrors
:class:`~gr_lightning.ranking.preprocess.RankingPreprocessor` for tokens placed behind a cached history
(that class encodes whole sequences only).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gr_lightning.ops.jagged import max_length, seq_index
from gr_lightning.serving.cache import KVCache
from gr_lightning.serving.graphs import GraphedCall, capturing

if TYPE_CHECKING:
    from gr_lightning.data.ranking import RankingBatch
    from gr_lightning.ranking.module import RankingModule


def require_cached_backbone(backbone: object) -> None:
    """Raise TypeError unless ``backbone`` implements the KV-cache methods (HSTU does)."""
    names = ("prefill", "score_candidates", "append", "last_output", "uses_time_bias")
    if not all(hasattr(backbone, name) for name in names):
        raise TypeError(f"{type(backbone).__name__} has no KV cache (prefill/score_candidates/append); incremental "
                        "inference needs an HSTU backbone")


class RankingScorer:
    """Cached-history candidate scoring for a trained :class:`~gr_lightning.ranking.RankingModule` (eval mode).

    Args:
        module: The trained module; its tables must exist (built from ``data_spec`` or in ``setup()``).

    """

    def __init__(self, module: RankingModule) -> None:
        if not hasattr(module, "preprocessor"):
            raise ValueError("the RankingModule has no tables yet: build it with data_spec, or load a checkpoint")
        require_cached_backbone(module.backbone)
        self.module = module

    def _check_request(self, cache: KVCache, query_times: Tensor | None) -> None:
        """With contextual tokens (timestamped at the request) the cache fits one request time only."""
        if cache.request_times is None:
            return
        if query_times is not None and capturing():  # comparing values reads the device: shapes only
            if query_times.shape != cache.request_times.shape:
                raise ValueError(f"query_times {tuple(query_times.shape)} do not match the cache's request times "
                                 f"{tuple(cache.request_times.shape)}")
            return
        if query_times is None or query_times.shape != cache.request_times.shape or \
                bool((query_times != cache.request_times).any()):
            raise ValueError(f"the cache was built for request times {cache.request_times.tolist()} (the contextual "
                             f"tokens' timestamps), not {None if query_times is None else query_times.tolist()}; "
                             "prefill again for this request")

    @torch.no_grad()
    def prefill(self, batch: RankingBatch, capacity: int | None = None) -> KVCache:
        """Cache the contextual tokens and (item, action) history of every example (candidates are ignored).

        Args:
            batch: The histories; with contextual tokens and the temporal bias, ``query_times`` is the
                request time the cache is built for (the contextual tokens' timestamp).
            capacity: Longest token history the cache can grow to (default: the backbone's ``max_seq_len``).

        """
        module = self.module
        if module.training:
            raise RuntimeError("incremental inference needs eval mode (call .eval())")
        history = replace(batch, candidates=batch.candidates[:0], candidate_timestamps=batch.candidate_timestamps[:0],
                          candidate_offsets=torch.zeros_like(batch.candidate_offsets), max_candidates=0, labels=None)
        x, layout = module.preprocessor(history)
        request = None
        if module.num_contextual and self.module.backbone.uses_time_bias:
            if batch.query_times is None:
                raise ValueError("contextual tokens are timestamped at the request: the batch needs query_times")
            request = batch.query_times
        prefix = module.num_contextual if module.contextual_prefix_mask else 0
        cache = module.backbone.prefill(x, layout.offsets, layout.max_len, layout.timestamps, num_contextual=prefix,
                                        request_times=request if prefix else None, capacity=capacity)
        cache.request_times = request
        return cache

    def _encode(self, table: torch.nn.Embedding, ids: Tensor, positions: Tensor) -> Tensor:
        pre = self.module.preprocessor
        return table(ids) * pre.scale + pre.position(positions.clamp(max=pre.max_tokens - 1))  # (N, D)

    @torch.no_grad()
    def score(self, cache: KVCache, candidates: Tensor, candidate_timestamps: Tensor, candidate_offsets: Tensor,
              query_times: Tensor | None = None, max_candidates: int | None = None) -> Tensor:
        """Predictions ``(sum_K, T)`` at the candidates (logits of binary tasks), as the module's forward gives.

        Args:
            cache: From :meth:`prefill` (and :meth:`append`).
            candidates: ``(sum_K,)`` item ids.
            candidate_timestamps: ``(sum_K,)``.
            candidate_offsets: ``(B+1,)``.
            query_times: ``(B,)`` request times, as the batch's.
            max_candidates: Most candidates of any example if known (saves reading the offsets back from
                the device), else None.

        """
        cache.check_batch(candidate_offsets.numel() - 1, "candidate_offsets")
        self._check_request(cache, query_times)
        seq, k = seq_index(candidate_offsets, candidates.numel())  # (sum_K,) each
        x = self._encode(self.module.preprocessor.item_embedding, candidates, cache.history_lengths[seq] + k)
        max_k = max_length(candidate_offsets) if max_candidates is None else max_candidates
        out = self.module.backbone.score_candidates(cache, x, candidate_offsets, max_k, candidate_timestamps,
                                                    query_times)  # (sum_K, D)
        return self.module.head(out)  # (sum_K, T)

    def capture(self, cache: KVCache, candidates: Tensor, candidate_timestamps: Tensor, candidate_offsets: Tensor,
                query_times: Tensor | None = None, max_candidates: int | None = None) -> GraphedCall:
        """:meth:`score` for one candidate layout captured as a CUDA graph (for launch-bound small batches).

        The example request is scored eagerly first (checking it). Replay with
        ``graph(candidates=..., candidate_timestamps=..., candidate_offsets=..., query_times=...)``
        (``query_times`` None or left out if None here): the same number of candidates and examples, at most
        ``max_candidates`` per example (default: the example's most). Replays read the cache's current
        contents, appends included.

        Args:
            cache: From :meth:`prefill`, on CUDA.
            candidates: ``(sum_K,)`` example item ids.
            candidate_timestamps: ``(sum_K,)``.
            candidate_offsets: ``(B+1,)``.
            query_times: ``(B,)`` example request times, or None.
            max_candidates: Most candidates of any example in later requests.

        """
        if max_candidates is None:
            max_candidates = max_length(candidate_offsets)  # read before the capture: it syncs
        self.score(cache, candidates, candidate_timestamps, candidate_offsets, query_times, max_candidates)

        def score(candidates: Tensor, candidate_timestamps: Tensor, candidate_offsets: Tensor,
                  query_times: Tensor | None = None) -> Tensor:
            return self.score(cache, candidates, candidate_timestamps, candidate_offsets, query_times, max_candidates)

        return GraphedCall(score, dict(candidates=candidates, candidate_timestamps=candidate_timestamps,
                                       candidate_offsets=candidate_offsets, query_times=query_times))

    @torch.no_grad()
    def score_batch(self, cache: KVCache, batch: RankingBatch) -> Tensor:
        """:meth:`score` with the candidates and request times of ``batch``."""
        return self.score(cache, batch.candidates, batch.candidate_timestamps, batch.candidate_offsets,
                          batch.query_times)

    @torch.no_grad()
    def append(self, cache: KVCache, items: Tensor, actions: Tensor, timestamps: Tensor, offsets: Tensor) -> None:
        """Extend every cached history by jagged (item, action) events, in place.

        Refused for a model whose contextual prefix sees the whole history (every cached row would change).
        Causal contextual tokens keep the request time they were cached with, so later requests must
        use that same ``query_times`` (checked by :meth:`score`).

        Args:
            cache: From :meth:`prefill`.
            items: ``(sum_N,)`` item ids of the new events (an example may get none).
            actions: ``(sum_N,)`` their merged action ids.
            timestamps: ``(sum_N,)`` their times.
            offsets: ``(B+1,)``.

        """
        pre = self.module.preprocessor
        cache.check_batch(offsets.numel() - 1, "offsets")
        if items.shape != timestamps.shape or items.shape != actions.shape or items.numel() != int(offsets[-1]):
            raise ValueError(f"items {tuple(items.shape)}, actions {tuple(actions.shape)} and timestamps "
                             f"{tuple(timestamps.shape)} must all have offsets[-1] = {int(offsets[-1])} entries")
        interleave = pre.action_embedding is not None
        stride = 2 if interleave else 1
        seq, j = seq_index(offsets, items.numel())  # (sum_N,) each
        item_pos = cache.history_lengths[seq] + stride * j  # (sum_N,) token position of each item
        x = self._encode(pre.item_embedding, items, item_pos)  # (sum_N, D)
        ts = timestamps
        if interleave:
            if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= pre.num_actions):
                bad = int(actions[(actions < 0) | (actions >= pre.num_actions)][0])
                raise ValueError(f"unknown action value {bad}: the action table has ids 0..{pre.num_actions - 1}")
            acts = self._encode(pre.action_embedding, actions, item_pos + 1)  # (sum_N, D)
            x = torch.stack([x, acts], dim=1).reshape(-1, x.shape[1])  # (2 sum_N, D): i_0 a_0 i_1 a_1 ..
            ts = timestamps.repeat_interleave(2)  # (2 sum_N,) an action happens when its item is consumed
        self.module.backbone.append(cache, x, stride * offsets, stride * max_length(offsets), ts)


__all__ = ["RankingScorer", "require_cached_backbone"]
