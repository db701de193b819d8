"""A deterministic synthetic log with sequential structure (the embedded default; no download).

Items belong to topics. Every item has ``fanout`` successors in its own topic, chosen with fixed,
skewed probabilities. A user starts at a popular item; each next event follows a successor of the
current item with probability ``follow_prob`` and otherwise jumps to an item drawn by popularity
(Zipf). A model that reads the sequence can predict most next items; a most-popular ranking only
catches the popularity jumps, so sequential models beat it by a wide margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gr_lightning.data.sources.base import DataSource

_GENERATOR_VERSION = 1
_START = 1_600_000_000  # 2020-09-13, seconds


class Synthetic(DataSource):
    """Topic-clustered Markov-chain sessions with popularity noise, fully determined by ``seed``.

    Args:
        num_users: Number of users.
        num_items: Number of items (raw ids ``1..num_items``; rarely drawn ones may not occur).
        num_topics: Number of item topics; successors stay within a topic.
        fanout: Successors per item.
        follow_prob: Probability that the next event follows a successor of the current item.
        popularity_exponent: Zipf exponent of the popularity used for starts and jumps.
        min_len: Shortest user sequence.
        max_len: Longest user sequence.
        seed: Random seed; equal seeds give identical logs.

    """

    name = "synthetic"

    def __init__(
        self,
        num_users: int = 2000,
        num_items: int = 1000,
        num_topics: int = 20,
        fanout: int = 4,
        follow_prob: float = 0.8,
        popularity_exponent: float = 1.0,
        min_len: int = 20,
        max_len: int = 60,
        seed: int = 0,
    ) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        if num_users < 1 or num_items < 2 or not 1 <= num_topics <= num_items or fanout < 1:
            raise ValueError("need num_users >= 1, num_items >= 2, 1 <= num_topics <= num_items, fanout >= 1")
        if not 0.0 <= follow_prob <= 1.0:
            raise ValueError(f"follow_prob must be in [0, 1], got {follow_prob}")
        self.num_users = num_users
        self.num_items = num_items
        self.num_topics = num_topics
        self.fanout = fanout
        self.follow_prob = follow_prob
        self.popularity_exponent = popularity_exponent
        self.min_len = min_len
        self.max_len = max_len
        self.seed = seed

    def settings(self) -> dict[str, Any]:
        """All constructor arguments and the generator version."""
        return {
            "generator": _GENERATOR_VERSION,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_topics": self.num_topics,
            "fanout": self.fanout,
            "follow_prob": self.follow_prob,
            "popularity_exponent": self.popularity_exponent,
            "min_len": self.min_len,
            "max_len": self.max_len,
            "seed": self.seed,
        }

    def _successors(self, rng: np.random.Generator) -> np.ndarray:
        """``(num_items, fanout)`` successor items of each item, all in its topic."""
        topic = rng.permutation(np.arange(self.num_items) % self.num_topics)  # (I,) every topic non-empty
        by_topic = np.argsort(topic, kind="stable")  # (I,) items grouped by topic
        size = np.bincount(topic, minlength=self.num_topics)
        start = np.concatenate([[0], np.cumsum(size)[:-1]])
        pick = rng.integers(0, size[topic][:, None], size=(self.num_items, self.fanout))  # (I, F)
        return by_topic[start[topic][:, None] + pick]

    def load_events(self) -> dict[str, np.ndarray]:
        """Generate the log, grouped by user in time order (see :meth:`DataSource.load_events`)."""
        rng = np.random.default_rng(self.seed)
        successors = self._successors(rng)
        weights = 1.0 / np.arange(1, self.num_items + 1) ** self.popularity_exponent
        popularity = np.empty(self.num_items)
        popularity[rng.permutation(self.num_items)] = weights / weights.sum()
        branch = 0.5 ** np.arange(self.fanout)  # skewed: the first successor is the likeliest
        branch /= branch.sum()

        U, T = self.num_users, self.max_len
        lengths = rng.integers(self.min_len, self.max_len + 1, size=U)  # (U,)
        items = np.empty((U, T), dtype=np.int64)
        followed = np.zeros((U, T), dtype=bool)
        items[:, 0] = rng.choice(self.num_items, size=U, p=popularity)
        for t in range(1, T):  # one vectorised step for all users at once
            follow = rng.random(U) < self.follow_prob
            choice = rng.choice(self.fanout, size=U, p=branch)
            jump = rng.choice(self.num_items, size=U, p=popularity)
            items[:, t] = np.where(follow, successors[items[:, t - 1], choice], jump)
            followed[:, t] = follow
        gaps = rng.exponential(3600.0, size=(U, T)).astype(np.int64) + 1  # (U, T) seconds between events
        times = _START + rng.integers(0, 365 * 86400, size=(U, 1)) + np.cumsum(gaps, axis=1)
        noise_rating = rng.integers(1, 6, size=(U, T))
        ratings = np.where(followed, np.maximum(noise_rating, 4), noise_rating).astype(np.float32)

        mask = np.arange(T)[None, :] < lengths[:, None]  # (U, T)
        user_ids = np.broadcast_to(np.arange(1, U + 1)[:, None], (U, T))
        return {
            "user_id": user_ids[mask].astype(np.int64),  # (N,) row-major: grouped by user, in time order
            "item_id": items[mask] + 1,
            "timestamp": times[mask],
            "rating": ratings[mask],
        }
