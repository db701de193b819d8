"""Autoregressive sampled-softmax retrieval loss (HSTU paper, Sec. 4.1.1; Jean et al. 2015).

Every position predicts the next item of its own sequence. Logits are cosine similarities divided by a
temperature; negatives are drawn uniformly from the catalogue for each position and, optionally, from
the batch's positives with a logQ correction (Yi et al. 2019) for their popularity-biased proposal. A
negative equal to the positive (an accidental hit) is masked out.

Negatives come from the loss's own random stream once :meth:`SampledSoftmaxLoss.seed_stream` was called
(``GRModule`` does so with the global seed and the rank, so every data-parallel rank draws its own
negatives, and dropout or other consumers of the global RNG do not shift them). Its state is part of the
exact-resume checkpoint (:meth:`~SampledSoftmaxLoss.rng_state`, saved per rank by
:class:`~gr_lightning.checkpointing.RNGStateCheckpoint`). Without a stream the global torch RNG is used.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr_lightning.ops import seq_index


def next_item_targets(items: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's next item, and whether the row has one (every row but the last of its sequence).

    Every row keeps its place, so shapes follow ``items`` alone and nothing is read on the host: selecting
    the rows that have a next item would size a tensor from the data, and the host would wait for the GPU
    (and a CUDA graph could not hold the step).

    Args:
        items: ``(sum_N,)`` item ids.
        offsets: ``(B+1,)``.

    Returns:
        ``(positives, has_next)``, each ``(sum_N,)``: the next row's item (meaningless where ``has_next`` is
        False) and the bool mask of the rows that predict one.

    """
    seq, _ = seq_index(offsets, items.numel())  # (sum_N,)
    rows = torch.arange(items.numel(), device=items.device)  # (sum_N,)
    has_next = rows + 1 < offsets[1:][seq]  # (sum_N,)
    return items.roll(-1), has_next  # row i -> items[i + 1]; the last row wraps (has_next is False there)


def stream_seed(seed: int, rank: int) -> int:
    """A 63-bit seed for rank ``rank`` of a run seeded with ``seed`` (numpy's SeedSequence mixes the two)."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    return int(np.random.SeedSequence([int(seed) % 2**64, int(rank)]).generate_state(1, np.uint64)[0] >> 1)


def _row_dot(queries: Tensor, candidates: Tensor) -> Tensor:
    """``(P, D) x (P, K, D) -> (P, K)`` dot products, at least float32; a broadcast multiply beats tiny matmuls.

    Low-precision inputs multiply in their dtype and sum in float32 (the product is the big intermediate;
    the sum's output feeds logits of magnitude up to ``1 / temperature``, too coarse in bfloat16).
    """
    return (queries.unsqueeze(1) * candidates).sum(-1, dtype=torch.promote_types(candidates.dtype, torch.float32))


def _dot_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the negatives' gather and products: autocast's while it is on, else ``dtype``.

    Gathering ``(P, K, D)`` negative rows dominates the loss's memory traffic; under mixed precision it
    reads and writes half the bytes, as autocast would for a matmul of the same operands.
    """
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


class SampledSoftmaxLoss(nn.Module):
    """Sampled softmax over cosine similarities.

    Args:
        num_negatives: Uniform catalogue negatives per position (128 on MovieLens, 512 on Books).
        temperature: Divides the cosine similarities (0.05 in the paper).
        in_batch_negatives: Extra negatives per position drawn from the batch's positives (0: off).

    """

    def __init__(self, num_negatives: int = 128, temperature: float = 0.05, in_batch_negatives: int = 0) -> None:
        super().__init__()
        if num_negatives < 0 or in_batch_negatives < 0 or num_negatives + in_batch_negatives == 0:
            raise ValueError("need at least one negative: num_negatives + in_batch_negatives must be > 0")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives
        self._seed: int | None = None  # of this rank's stream; None: the global RNG
        self._generator: torch.Generator | None = None  # created on the device of the first batch
        self._pending: dict[str, Any] | None = None  # a restored state waiting for its generator

    # --- the negative-sampling stream ----------------------------------------------------------------

    def seed_stream(self, seed: int, rank: int = 0) -> None:
        """Draw negatives from a stream of their own, seeded from the run's ``seed`` and this process's ``rank``."""
        self._seed, self._generator, self._pending = stream_seed(seed, rank), None, None

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The stream's generator on ``device`` (created, or restored from a checkpoint, on first use)."""
        if self._seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            generator = torch.Generator(device=device)
            generator.manual_seed(self._seed)
            pending, self._pending = self._pending, None
            if pending is not None and pending["device_type"] == device.type:
                generator.set_state(pending["state"])
            elif pending is not None:
                warnings.warn(f"negative-sampling stream saved on {pending['device_type']} cannot continue on "
                              f"{device.type}; it restarts from its seed (the resume is not exact)", stacklevel=2)
            self._generator = generator
        return self._generator

    def rng_state(self) -> dict[str, Any] | None:
        """The stream's seed and generator state (tensors and scalars only), or None without a stream."""
        if self._seed is None:
            return None
        if self._generator is None:
            return {"seed": self._seed, **(self._pending or {"device_type": None, "state": None})}
        return {"seed": self._seed, "device_type": self._generator.device.type, "state": self._generator.get_state()}

    def load_rng_state(self, state: dict[str, Any] | None) -> None:
        """Continue the stream of :meth:`rng_state` (applied when the generator is next created)."""
        if state is None:
            self._seed, self._generator, self._pending = None, None, None
            return
        self._seed, self._generator = int(state["seed"]), None
        self._pending = None if state["state"] is None else {"device_type": state["device_type"],
                                                              "state": state["state"]}

    # --- the loss ------------------------------------------------------------------------------------

    def forward(self, queries: Tensor, positives: Tensor, item_table: Tensor, item_log_q: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        """Mean loss over the positions in ``mask`` (all when None; 0 when ``mask`` selects none).

        Args:
            queries: L2-normalised query embeddings. ``(P, D)``.
            positives: Next-item ids. ``(P,)``.
            item_table: L2-normalised item embeddings, row 0 unused. ``(num_items + 1, D)``.
            item_log_q: Log of each item's share of training events ``(num_items + 1,)``; needed for
                in-batch negatives.
            mask: ``(P,)`` bool, the positions that count. The others are scored but weigh nothing, which
                keeps every shape independent of the data (no host sync); their ``positives`` must still be
                valid item ids, and they stay in the in-batch negatives' pool.

        """
        if mask is not None and mask.shape != positives.shape:
            raise ValueError(f"mask must have the positives' shape {tuple(positives.shape)}, got {tuple(mask.shape)}")
        num_items = item_table.shape[0] - 1
        # F.embedding rather than item_table[ids]: its CUDA backward reduces duplicate ids in parallel.
        pos_logit = (queries * F.embedding(positives, item_table)).sum(-1, keepdim=True)  # (P, 1)
        parts, ids = [pos_logit.to(torch.promote_types(pos_logit.dtype, torch.float32))], [positives.unsqueeze(1)]
        dot_dtype = _dot_dtype(queries.device, item_table.dtype)
        neg_queries, neg_table = queries.to(dot_dtype), item_table.to(dot_dtype)  # no-ops outside autocast
        generator = self.generator(queries.device)
        if self.num_negatives:
            neg = torch.randint(1, num_items + 1, (queries.shape[0], self.num_negatives), device=queries.device,
                                generator=generator)  # (P, K)
            parts.append(_row_dot(neg_queries, F.embedding(neg, neg_table)))  # (P, K)
            ids.append(neg)
        if self.in_batch_negatives:
            if item_log_q is None:
                raise ValueError("in-batch negatives need item_log_q for the logQ correction")
            pick = torch.randint(0, positives.numel(), (queries.shape[0], self.in_batch_negatives),
                                 device=queries.device, generator=generator)  # (P, K_b)
            neg = positives[pick]  # (P, K_b): popularity-proportional proposal
            logits = _row_dot(neg_queries, F.embedding(neg, neg_table))  # (P, K_b)
            # logQ: subtract each proposal's log-probability relative to the uniform proposal.
            parts.append(logits - (item_log_q[neg] + math.log(num_items)) * self.temperature)
            ids.append(neg)
        logits = torch.cat(parts, dim=1) / self.temperature  # (P, 1 + K), float32 or wider
        hit = torch.cat(ids, dim=1) == positives.unsqueeze(1)
        hit[:, 0] = False
        logits = logits.masked_fill(hit, torch.finfo(logits.dtype).min)
        if mask is None:
            return F.cross_entropy(logits, torch.zeros_like(positives))
        losses = F.cross_entropy(logits, torch.zeros_like(positives), reduction="none")  # (P,)
        weight = mask.to(losses.dtype)  # (P,)
        return (losses * weight).sum() / weight.sum().clamp(min=1)
