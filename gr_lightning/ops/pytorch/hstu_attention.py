"""Reference HSTU pointwise attention (Zhai et al. 2024, Eq. 2), padded per batch for clarity.

``A_h(i, j) = SiLU(alpha * q_i . k_j + rab_p(i - j) + rab_t(i, j)) / n`` for allowed ``(i, j)``, else 0;
``out_i = sum_j A_h(i, j) v_j``. ``n`` is a constant (the configured max sequence length), so a
sequence's output does not depend on which other sequences share its batch. This is the ground truth
every fused kernel is tested against; it materialises the ``(B, H, N, N)`` score tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gr_lightning.ops.jagged import jagged_to_padded, padded_to_jagged, seq_index

#: Width of one temporal bucket in log-seconds (Section 3.1 of the paper's reference code).
TIME_BUCKET_WIDTH = 0.301
#: ``1 / TIME_BUCKET_WIDTH``: buckets are ``floor(ln(gap) * TIME_BUCKET_SCALE)``.
TIME_BUCKET_SCALE = 1.0 / TIME_BUCKET_WIDTH


def time_buckets(next_ts: Tensor, ts: Tensor, num_buckets: int) -> Tensor:
    """Bucket index of the gap between a query's request time and a key's event time.

    ``bucket = clamp(floor(ln(max(|next_ts - ts|, 1)) / 0.301), 0, num_buckets)``.

    Args:
        next_ts: Request time per query row, broadcastable against ``ts``.
        ts: Event time per key column.
        num_buckets: Largest bucket index; the bias table has ``num_buckets + 1`` rows.

    Returns:
        int64 bucket indices with the broadcast shape.

    """
    gap = (next_ts - ts).abs().clamp(min=1).to(torch.float32)
    # A multiply, as in the Triton kernels' fp32 path, which then agrees with this bucket for every gap
    # (benchmarks/bucket_agreement.py).
    return (torch.log(gap) * TIME_BUCKET_SCALE).floor().clamp(0, num_buckets).to(torch.int64)


def next_timestamps(ts: Tensor, offsets: Tensor, query_times: Tensor | None = None) -> Tensor:
    """Request time of each jagged row: the next event's timestamp within its sequence.

    The last row of a sequence takes ``query_times[b]`` when given (at evaluation, the held-out
    target's time: the moment the recommendation is requested, as in the reference trainer), else
    its own timestamp.

    Args:
        ts: ``(sum_N,)`` event times.
        offsets: ``(B+1,)``.
        query_times: ``(B,)`` request time after each sequence, or None.

    Returns:
        ``(sum_N,)``.
    """
    if ts.numel() == 0:
        return ts
    # Masks by torch.where, not boolean indexing: no data-dependent shapes, so torch.compile keeps one graph.
    seq, _ = seq_index(offsets, ts.numel())  # (sum_N,)
    is_last = torch.arange(ts.numel(), device=ts.device) + 1 == offsets[1:][seq]  # (sum_N,)
    following = torch.cat([ts[1:], ts[-1:]])  # (sum_N,) the next row's time (the last row's own, unused)
    fill = ts if query_times is None else query_times.to(ts.dtype)[seq]  # (sum_N,)
    return torch.where(is_last, fill, following)


def attention_mask(
    lengths: Tensor,
    max_len: int,
    num_targets: Tensor | None = None,
    num_contextual: int = 0,
    window: int | None = None,
) -> Tensor:
    """Which key ``j`` each query ``i`` may attend to.

    - causal: ``j <= i`` (diagonal included);
    - target-aware: the last ``num_targets[b]`` rows of sequence ``b`` are candidates; a candidate sees
      the whole history and itself, history never sees a candidate;
    - contextual prefix: the first ``num_contextual`` rows see the whole non-candidate sequence;
    - local window: a history row sees keys with ``i - j <= window`` (plus the contextual prefix).

    Args:
        lengths: ``(B,)`` sequence lengths.
        max_len: Padded length N.
        num_targets: ``(B,)`` candidates per sequence, or None for none.
        num_contextual: Prefix length, the same for every sequence.
        window: Local attention window, or None for unlimited.

    Returns:
        ``(B, N, N)`` bool.

    """
    device = lengths.device
    i = torch.arange(max_len, device=device).view(1, -1, 1)  # (1, N, 1)
    j = torch.arange(max_len, device=device).view(1, 1, -1)  # (1, 1, N)
    length = lengths.view(-1, 1, 1)  # (B, 1, 1)
    targets = torch.zeros_like(length) if num_targets is None else num_targets.view(-1, 1, 1)
    history_end = length - targets  # (B, 1, 1): rows >= history_end are candidates
    is_history_row = i < history_end
    history_rule = (j <= i) & (j < history_end)
    if window is not None:
        history_rule &= (i - j <= window) | (j < num_contextual)
    if num_contextual > 0:
        history_rule |= (i < num_contextual) & (j < history_end)
    candidate_rule = (j < history_end) | (j == i)
    allowed = torch.where(is_history_row, history_rule, candidate_rule)
    return allowed & (i < length) & (j < length)


def relative_position_index(max_len: int, n: int, device: torch.device) -> Tensor:
    """Row of the positional bias table for each ``(i, j)``: ``clamp(i - j, -(n-1), n-1) + n - 1``."""
    pos = torch.arange(max_len, device=device)
    return (pos.view(-1, 1) - pos.view(1, -1)).clamp(-(n - 1), n - 1) + n - 1  # (N, N)


def _lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for a 1-D table through ``F.embedding``.

    Advanced indexing's CUDA backward serialises over duplicate indices, and bias tables see millions of
    duplicates per batch (1.7 s per training step at ML-1M size on an H100); embedding's backward
    reduces duplicates in parallel.
    """
    return F.embedding(index, table.unsqueeze(-1)).squeeze(-1)


def hstu_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    max_len: int,
    *,
    alpha: float,
    scale_len: int,
    num_targets: Tensor | None = None,
    num_contextual: int = 0,
    window: int | None = None,
    pos_bias: Tensor | None = None,
    time_bias: Tensor | None = None,
    timestamps: Tensor | None = None,
    query_times: Tensor | None = None,
    next_ts: Tensor | None = None,
) -> Tensor:
    """HSTU attention on jagged inputs.

    Args:
        q: ``(sum_N, H, d_qk)``.
        k: ``(sum_N, H, d_qk)``.
        v: ``(sum_N, H, d_v)``.
        offsets: ``(B+1,)``.
        max_len: Longest sequence in the batch.
        alpha: Scale of ``q . k``.
        scale_len: The constant ``n`` dividing the attention weights; the positional table has
            ``2 * scale_len - 1`` rows.
        num_targets: ``(B,)`` candidates per sequence (target-aware mask), or None.
        num_contextual: Contextual-prefix length.
        window: Local attention window, or None.
        pos_bias: ``(2 * scale_len - 1,)`` learned bias per relative position, or None.
        time_bias: ``(num_buckets + 1,)`` learned bias per time bucket, or None.
        timestamps: ``(sum_N,)`` event times in seconds; required with ``time_bias``.
        query_times: ``(B,)`` request time of each sequence's last row (see :func:`next_timestamps`).
        next_ts: ``(sum_N,)`` precomputed ``next_timestamps(timestamps, offsets, query_times)`` (a stack of
            layers computes it once per batch), or None to compute it here.

    Returns:
        ``(sum_N, H, d_v)``.

    """
    total = q.shape[0]
    if total == 0:
        return v.new_zeros(v.shape)
    lengths = offsets[1:] - offsets[:-1]
    qp = jagged_to_padded(q, offsets, max_len)  # (B, N, H, d_qk)
    kp = jagged_to_padded(k, offsets, max_len)  # (B, N, H, d_qk)
    vp = jagged_to_padded(v, offsets, max_len)  # (B, N, H, d_v)
    scores = torch.einsum("bihd,bjhd->bhij", qp, kp) * alpha  # (B, H, N, N)
    if pos_bias is not None:
        scores = scores + _lookup(pos_bias, relative_position_index(max_len, scale_len, q.device)).to(scores.dtype)
    if time_bias is not None:
        if timestamps is None:
            raise ValueError("time_bias needs timestamps")
        if next_ts is None:
            next_ts = next_timestamps(timestamps, offsets, query_times)  # (sum_N,)
        nxt = jagged_to_padded(next_ts, offsets, max_len)  # (B, N)
        ts = jagged_to_padded(timestamps, offsets, max_len)  # (B, N)
        buckets = time_buckets(nxt.unsqueeze(2), ts.unsqueeze(1), time_bias.numel() - 1)  # (B, N, N)
        scores = scores + _lookup(time_bias, buckets).unsqueeze(1).to(scores.dtype)
    mask = attention_mask(lengths, max_len, num_targets, num_contextual, window)  # (B, N, N)
    weights = F.silu(scores) / scale_len * mask.unsqueeze(1)  # (B, H, N, N)
    out = torch.einsum("bhij,bjhd->bihd", weights, vp)  # (B, N, H, d_v)
    return padded_to_jagged(out, offsets, total)


def attention_flops(lengths: Tensor, num_heads: int, d_qk: int, d_v: int) -> float:
    """Forward FLOPs of causal attention: ``2 * H * (d_qk + d_v) * L^2 / 2`` per sequence."""
    sq = float((lengths.to(torch.float64) ** 2).sum())
    return 2.0 * num_heads * (d_qk + d_v) * sq / 2.0


__all__ = [
    "TIME_BUCKET_SCALE",
    "TIME_BUCKET_WIDTH",
    "attention_flops",
    "attention_mask",
    "hstu_attention",
    "next_timestamps",
    "relative_position_index",
    "time_buckets",
]
