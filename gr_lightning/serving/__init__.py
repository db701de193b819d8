"""Incremental inference (HSTU paper Sec. 3.4, M-FALCON): per-user KV caches and scorers built on them.

- :class:`KVCache`: per-layer keys/values of each user's history (see :mod:`gr_lightning.serving.cache`);
  the backbone methods ``HSTU.prefill / score_candidates / append / last_output`` fill and use it.
- :class:`RankingScorer`: candidate predictions of a trained RankingModule from cached histories.
- :class:`RetrievalScorer`: user embeddings of a trained GRModule, updated event by event.
- :class:`GraphedCall` and :func:`candidate_scoring_graph`: CUDA-graph replay of launch-bound calls
  (small-batch scoring), see :mod:`gr_lightning.serving.graphs`.
"""

from gr_lightning.serving.cache import KVCache
from gr_lightning.serving.graphs import GraphedCall, candidate_scoring_graph
from gr_lightning.serving.ranking import RankingScorer
from gr_lightning.serving.retrieval import RetrievalScorer

__all__ = ["GraphedCall", "KVCache", "RankingScorer", "RetrievalScorer", "candidate_scoring_graph"]
