"""A synthetic multi-action log whose labels follow a known model, so the Bayes-optimal AUC is computable.

Generative model (all parameters fixed by ``seed``):

- every item ``i`` has a category ``cat[i]`` in ``0..C-1`` and a bias ``b[i] ~ N(0, item_bias_std^2)``;
- every user has contextual features gender ``g`` in {0, 1}, age bucket ``a`` in ``0..3`` and a region
  (pure noise), and a hidden taste ``z`` in ``0..C-1`` with prior ``p(z | g) ∝ exp(prior_strength *
  [z mod 2 == g])``;
- each event's item comes from the taste category with probability ``taste_prob`` (uniformly within
  it), else uniformly from the catalogue;
- task ``t`` of an event with item ``i`` is 1 with probability ``sigmoid(logit_t)``, independently
  across tasks given ``z``, with
  ``logit_t = alpha_t + beta_t [cat[i] == z] + gamma_t b[i] + delta_t (2a/3 - 1) + eps_t (2[cat[i] mod 2 == g] - 1)``.
  Labels depend on the item, on the user context and, through ``z``, on the history (past items and
  past actions reveal the taste);
- the task labels of an event are merged into ONE action token, the bitmask ``sum_t y_t << t``.

:meth:`SyntheticRanking.bayes_probabilities` computes the exact posterior predictive
``p(y_t = 1 | context, history items and actions, candidate item)`` by summing over ``z``: no model
that sees the same inputs can rank better, which gives the Bayes-optimal AUC of each task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gr_lightning.data.sources.base import DataSource

_GENERATOR_VERSION = 1
_START = 1_600_000_000

#: Per-task (alpha, beta, gamma, delta, eps) of the label model, in task order.
TASKS: dict[str, tuple[float, float, float, float, float]] = {
    "click": (-0.8, 2.5, 1.0, 0.6, 0.0),
    "like": (-2.0, 2.5, 0.6, -0.8, 1.0),
    "share": (-2.2, 1.5, 1.2, 0.4, -0.6),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class SyntheticRanking(DataSource):
    """Synthetic users with context, item sequences and multi-task actions from a known model.

    Raw user ids are ``1..num_users`` and events come grouped by user in time order (timestamps
    strictly increase), so a store built from this source has the same event rows as
    :meth:`load_events`: split rows of a DataModule index the generator's events directly.

    Args:
        num_users: Number of users.
        num_items: Catalogue size (raw ids ``1..num_items``).
        num_categories: Number of item categories C (= possible tastes).
        taste_prob: Probability that an event's item comes from the user's taste category.
        prior_strength: How much gender shifts the taste prior.
        item_bias_std: Standard deviation of the item biases.
        min_len: Shortest user sequence.
        max_len: Longest user sequence.
        seed: Random seed; equal seeds give identical logs and parameters.

    """

    name = "synthetic-ranking"
    task_names: tuple[str, ...] = tuple(TASKS)

    def __init__(
        self,
        num_users: int = 3000,
        num_items: int = 200,
        num_categories: int = 4,
        taste_prob: float = 0.5,
        prior_strength: float = 1.0,
        item_bias_std: float = 0.8,
        min_len: int = 20,
        max_len: int = 40,
        seed: int = 0,
    ) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        if num_users < 1 or num_items < num_categories or num_categories < 2:
            raise ValueError("need num_users >= 1 and num_items >= num_categories >= 2")
        if not 0.0 <= taste_prob <= 1.0:
            raise ValueError(f"taste_prob must be in [0, 1], got {taste_prob}")
        self.num_users, self.num_items, self.num_categories = num_users, num_items, num_categories
        self.taste_prob, self.prior_strength, self.item_bias_std = taste_prob, prior_strength, item_bias_std
        self.min_len, self.max_len, self.seed = min_len, max_len, seed

    def settings(self) -> dict[str, Any]:
        """All constructor arguments, the task parameters and the generator version."""
        return {"generator": _GENERATOR_VERSION, "num_users": self.num_users, "num_items": self.num_items,
                "num_categories": self.num_categories, "taste_prob": self.taste_prob,
                "prior_strength": self.prior_strength, "item_bias_std": self.item_bias_std,
                "min_len": self.min_len, "max_len": self.max_len, "seed": self.seed, "tasks": TASKS}

    # ------------------------------------------------------------------ the model
    def _parameters(self) -> dict[str, np.ndarray]:
        """Item categories and biases, user context and tastes (deterministic in ``seed``)."""
        rng = np.random.default_rng(self.seed)
        category = rng.permutation(np.arange(self.num_items) % self.num_categories)  # (I,) all non-empty
        bias = rng.normal(0.0, self.item_bias_std, size=self.num_items)  # (I,)
        gender = rng.integers(0, 2, size=self.num_users)  # (U,)
        age = rng.integers(0, 4, size=self.num_users)  # (U,)
        region = rng.integers(0, 10, size=self.num_users)  # (U,) noise feature
        prior = self._log_prior(gender)  # (U, C)
        p = np.exp(prior)
        taste = (rng.random((self.num_users, 1)) > np.cumsum(p, axis=1)).sum(axis=1)  # (U,) inverse CDF draw
        return {"category": category, "bias": bias, "gender": gender, "age": age, "region": region,
                "taste": np.minimum(taste, self.num_categories - 1), "rng_state": rng}

    def _log_prior(self, gender: np.ndarray) -> np.ndarray:
        """``(U, C)`` log p(z | gender)."""
        z = np.arange(self.num_categories)
        score = self.prior_strength * ((z[None, :] % 2) == gender[:, None])  # (U, C)
        return score - np.log(np.exp(score).sum(axis=1, keepdims=True))

    def _logits(self, items: np.ndarray, gender: np.ndarray, age: np.ndarray, params: dict) -> np.ndarray:
        """``(N, C, T)`` task logits of events (0-based ``items``) for every possible taste."""
        cat = params["category"][items]  # (N,)
        z = np.arange(self.num_categories)
        coef = np.array(list(TASKS.values()))  # (T, 5)
        match = (cat[:, None] == z[None, :]).astype(np.float64)  # (N, C)
        same_parity = 2.0 * ((cat % 2) == gender) - 1.0  # (N,)
        static = (coef[:, 0][None, :] + coef[:, 2][None, :] * params["bias"][items][:, None]
                  + coef[:, 3][None, :] * (2.0 * age / 3.0 - 1.0)[:, None]
                  + coef[:, 4][None, :] * same_parity[:, None])  # (N, T)
        return static[:, None, :] + coef[:, 1][None, None, :] * match[:, :, None]  # (N, C, T)

    def _log_item_prob(self, items: np.ndarray, params: dict) -> np.ndarray:
        """``(N, C)`` log p(item | z)."""
        cat = params["category"][items]
        size = np.bincount(params["category"], minlength=self.num_categories)  # (C,)
        z = np.arange(self.num_categories)
        in_taste = (cat[:, None] == z[None, :]) * self.taste_prob / size[None, :]
        return np.log(in_taste + (1.0 - self.taste_prob) / self.num_items)

    # ------------------------------------------------------------------ DataSource
    def load_events(self) -> dict[str, np.ndarray]:
        """Generate the log (see the module docstring)."""
        params = self._parameters()
        rng: np.random.Generator = params["rng_state"]
        U, T = self.num_users, self.max_len
        lengths = rng.integers(self.min_len, self.max_len + 1, size=U)  # (U,)
        in_taste = rng.random((U, T)) < self.taste_prob
        by_category = np.argsort(params["category"], kind="stable")  # (I,) items grouped by category
        size = np.bincount(params["category"], minlength=self.num_categories)
        start = np.concatenate([[0], np.cumsum(size)[:-1]])
        taste = params["taste"][:, None]  # (U, 1)
        pick = (rng.random((U, T)) * size[taste]).astype(np.int64)  # (U, T) index within the category
        items = np.where(in_taste, by_category[start[taste] + pick], rng.integers(0, self.num_items, (U, T)))
        mask = np.arange(T)[None, :] < lengths[:, None]  # (U, T)
        users = np.broadcast_to(np.arange(U)[:, None], (U, T))[mask]  # (N,) 0-based
        items = items[mask]  # (N,) 0-based
        logits = self._logits(items, params["gender"][users], params["age"][users], params)  # (N, C, T)
        p = _sigmoid(logits[np.arange(items.size), params["taste"][users]])  # (N, T)
        labels = (rng.random(p.shape) < p).astype(np.int64)  # (N, T)
        action = (labels << np.arange(labels.shape[1])[None, :]).sum(axis=1)  # (N,) bitmask
        gaps = rng.exponential(3600.0, size=(U, T)).astype(np.int64) + 1
        times = (_START + rng.integers(0, 30 * 86400, size=(U, 1)) + np.cumsum(gaps, axis=1))[mask]
        return {
            "user_id": users + 1,
            "item_id": items + 1,
            "timestamp": times,
            "action": action,
            "context_user_id": np.arange(1, U + 1),
            "context_values": np.stack([params["gender"], params["age"], params["region"]], axis=1),  # (U, 3)
            "context_names": np.array(["gender", "age", "region"]),
        }

    def bayes_probabilities(self, history_starts: np.ndarray, history_ends: np.ndarray,
                            candidate_rows: np.ndarray, candidate_owner: np.ndarray) -> np.ndarray:
        """Exact ``p(y_t = 1 | context, history, candidate item)`` of candidate events.

        Rows index :meth:`load_events`'s arrays (equal to a store's event rows, see the class docstring).

        Args:
            history_starts: ``(B,)`` first history row of each example.
            history_ends: ``(B,)`` one past its last history row.
            candidate_rows: ``(M,)`` event row of each candidate.
            candidate_owner: ``(M,)`` example ``0..B-1`` each candidate belongs to.

        Returns:
            ``(M, T)`` probabilities, tasks in :data:`TASKS` order.

        """
        events = self.load_events()
        params = self._parameters()
        users = events["user_id"] - 1  # (N,)
        items = events["item_id"] - 1
        labels = (events["action"][:, None] >> np.arange(len(TASKS))[None, :]) & 1  # (N, T)
        logits = self._logits(items, params["gender"][users], params["age"][users], params)  # (N, C, T)
        log_p = -np.logaddexp(0.0, -logits)  # log sigmoid
        log_q = -np.logaddexp(0.0, logits)  # log (1 - sigmoid)
        event_ll = (np.where(labels[:, None, :] == 1, log_p, log_q).sum(axis=2)
                    + self._log_item_prob(items, params))  # (N, C)
        cumulative = np.concatenate([np.zeros((1, self.num_categories)), np.cumsum(event_ll, axis=0)])
        history_ll = cumulative[history_ends] - cumulative[history_starts]  # (B, C)
        owner_user = users[np.asarray(history_ends) - 1]  # (B,)
        prior = self._log_prior(params["gender"][owner_user])  # (B, C)
        post = (prior + history_ll)[candidate_owner] + self._log_item_prob(items[candidate_rows], params)  # (M, C)
        post = np.exp(post - post.max(axis=1, keepdims=True))
        post /= post.sum(axis=1, keepdims=True)
        cand_users = owner_user[candidate_owner]
        cand_logits = self._logits(items[candidate_rows], params["gender"][cand_users], params["age"][cand_users],
                                   params)  # (M, C, T)
        return (post[:, :, None] * _sigmoid(cand_logits)).sum(axis=1)  # (M, T)
