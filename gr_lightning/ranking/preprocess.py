"""Ranking input layout (HSTU paper, Sec. 2.2 and 4.2; Fig. 3): context, interleaved items/actions, candidates.

Per example ``b`` with ``F`` contextual features, ``n_b`` history events and ``k_b`` candidates the token
sequence is::

    c_1 .. c_F | i_0 a_0 i_1 a_1 .. i_{n-1} a_{n-1} | x_1 .. x_k

(without actions: ``c | i_0 .. i_{n-1} | x``). Embeddings are looked up in three tables (contextual,
item, action), scaled by ``sqrt(D)`` and given a learned position embedding of the token index, then
dropout. Timestamps: every action token takes its item's timestamp, contextual tokens and the request
time take the first candidate's timestamp (the temporal bias compares each row's NEXT timestamp with
each key's timestamp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr_lightning.data.ranking import RankingBatch, check_action_counts


@dataclass
class TokenLayout:
    """Where each kind of token sits in the jagged token sequence.

    Attributes:
        offsets: ``(B+1,)`` token-sequence boundaries.
        max_len: Longest token sequence.
        timestamps: ``(sum_L,)`` timestamp of every token.
        num_targets: ``(B,)`` candidates per example (the target-aware mask's tail).
        num_contextual: Contextual prefix length ``F``.
        item_rows: ``(sum_N,)`` token row of each history item.
        candidate_rows: ``(sum_K,)`` token row of each candidate.

    """

    offsets: Tensor
    max_len: int
    timestamps: Tensor
    num_targets: Tensor
    num_contextual: int
    item_rows: Tensor
    candidate_rows: Tensor


def token_layout(batch: RankingBatch, num_contextual: int, interleave: bool) -> tuple[TokenLayout, Tensor, Tensor,
                                                                                      Tensor]:
    """Compute token positions of a batch (vectorised).

    Returns:
        The layout, and the token rows of the contextual tokens ``(B * F,)`` and of the action tokens
        ``(sum_N,)`` (empty without interleaving).

    """
    if interleave:
        check_action_counts(batch.offsets, batch.actions.numel() if batch.action_offsets is None
                            else batch.action_offsets, batch.users)
    device = batch.offsets.device
    n, k = batch.lengths, batch.num_candidates  # (B,), (B,)
    stride = 2 if interleave else 1
    per_seq = num_contextual + stride * n + k  # (B,)
    offsets = torch.zeros_like(batch.offsets)
    offsets[1:] = torch.cumsum(per_seq, 0)
    B = batch.batch_size
    seq_h = torch.repeat_interleave(torch.arange(B, device=device), n)  # (sum_N,)
    j = torch.arange(seq_h.numel(), device=device) - batch.offsets[seq_h]  # (sum_N,) index within history
    item_rows = offsets[seq_h] + num_contextual + stride * j
    action_rows = item_rows + 1 if interleave else item_rows[:0]
    seq_c = torch.repeat_interleave(torch.arange(B, device=device), k)  # (sum_K,)
    kk = torch.arange(seq_c.numel(), device=device) - batch.candidate_offsets[seq_c]
    candidate_rows = offsets[seq_c] + num_contextual + stride * n[seq_c] + kk
    context_rows = (offsets[:-1, None] + torch.arange(num_contextual, device=device)).reshape(-1)  # (B * F,)
    total = int(offsets[-1])
    ts = torch.empty(total, dtype=batch.timestamps.dtype, device=device)
    request = batch.query_times if batch.query_times is not None else torch.zeros(B, dtype=ts.dtype, device=device)
    ts[context_rows] = request.repeat_interleave(num_contextual)  # (B * F,)
    ts[item_rows] = batch.timestamps
    if interleave:
        ts[action_rows] = batch.timestamps  # an action happens when its item is consumed
    ts[candidate_rows] = batch.candidate_timestamps
    layout = TokenLayout(offsets, int(per_seq.max()) if B else 0, ts, k, num_contextual, item_rows, candidate_rows)
    return layout, context_rows, action_rows, candidate_rows


class RankingPreprocessor(nn.Module):
    """Embedding tables and the token layout of the module docstring.

    Args:
        num_items: Items ``1..num_items`` (0 is padding).
        num_actions: Action ids ``0..num_actions-1``.
        context_sizes: Rows of each contextual feature's table (codes ``1..V_f``); empty for none.
        dim: Embedding width D.
        max_tokens: Number of learned positions (longest token sequence).
        dropout: Dropout on the encoded tokens.
        use_actions: Interleave action tokens (False: the no-action ablation).

    """

    def __init__(self, num_items: int, num_actions: int, context_sizes: list[int], dim: int, max_tokens: int,
                 dropout: float, use_actions: bool = True) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.action_embedding = nn.Embedding(num_actions, dim) if use_actions else None
        self.num_contextual = len(context_sizes)
        self.context_embedding = nn.Embedding(max(sum(context_sizes), 1), dim)
        starts = torch.tensor([0, *context_sizes[:-1]], dtype=torch.int64).cumsum(0) if context_sizes else \
            torch.zeros(0, dtype=torch.int64)
        self.register_buffer("context_starts", starts, persistent=False)  # (F,) row offset of each feature
        self.context_sizes = list(context_sizes)
        self.position = nn.Embedding(max_tokens, dim)
        self.num_actions = num_actions
        self.max_tokens, self.scale, self.dropout = max_tokens, math.sqrt(dim), dropout
        for table in (self.item_embedding, self.action_embedding, self.context_embedding, self.position):
            if table is not None:
                nn.init.trunc_normal_(table.weight, std=0.02)

    def forward(self, batch: RankingBatch) -> tuple[Tensor, TokenLayout]:
        """Encode a batch: ``(sum_L, D)`` tokens and their layout."""
        interleave = self.action_embedding is not None
        layout, context_rows, action_rows, candidate_rows = token_layout(batch, self.num_contextual, interleave)
        parts, rows = [self.item_embedding(batch.items), self.item_embedding(batch.candidates)], \
            [layout.item_rows, candidate_rows]
        if interleave:
            if batch.actions.numel() and (int(batch.actions.min()) < 0 or int(batch.actions.max()) >= self.num_actions):
                bad = int(batch.actions[(batch.actions < 0) | (batch.actions >= self.num_actions)][0])
                raise ValueError(f"unknown action value {bad}: the action table has ids 0..{self.num_actions - 1}")
            parts.append(self.action_embedding(batch.actions))
            rows.append(action_rows)
        if self.num_contextual:
            if batch.contexts is None or batch.contexts.shape[1] != self.num_contextual:
                got = None if batch.contexts is None else batch.contexts.shape[1]
                raise ValueError(f"the model expects {self.num_contextual} contextual features, the batch has {got}")
            codes = batch.contexts.clamp(min=0)
            over = codes >= torch.tensor(self.context_sizes, device=codes.device)
            if bool(over.any()):
                f = int(torch.nonzero(over)[0, 1])
                raise ValueError(f"contextual feature {f} has code {int(codes[over][0])} beyond its table "
                                 f"({self.context_sizes[f]} rows)")
            parts.append(self.context_embedding((codes + self.context_starts).reshape(-1)))  # (B * F, D)
            rows.append(context_rows)
        total = int(layout.offsets[-1])
        values = torch.cat(parts)  # (sum_L, D) in kind order
        x = values.new_zeros(total, values.shape[1]).index_copy(0, torch.cat(rows), values)  # (sum_L, D)
        seq = torch.repeat_interleave(torch.arange(batch.batch_size, device=x.device), layout.offsets.diff())
        pos = torch.arange(total, device=x.device) - layout.offsets[seq]  # (sum_L,) token index
        x = x * self.scale + self.position(pos.clamp(max=self.max_tokens - 1))
        return F.dropout(x, self.dropout, self.training), layout
