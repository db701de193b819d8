"""Jagged <-> padded conversions: fbgemm_gpu when a matching build is installed, pure torch otherwise.

The backend is chosen once, at import: fbgemm_gpu wheels are tied to one torch release and are missing
on many machines (the lent GPU image among them), so every call has an equivalent pure-torch path.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor


def _load_fbgemm() -> bool:
    if os.environ.get("GR_LIGHTNING_DISABLE_FBGEMM", "0") == "1":
        return False
    try:
        import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
    except Exception:  # ImportError, or an ABI mismatch with the installed torch
        return False
    return hasattr(torch.ops.fbgemm, "jagged_to_padded_dense")


HAS_FBGEMM: bool = _load_fbgemm()

#: dtypes fbgemm's jagged kernels implement; anything else (float64 references, ints) takes the torch path.
_FBGEMM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def max_length(offsets: Tensor) -> int:
    """Length of the longest sequence that ``offsets`` describes, as a Python int.

    Reads the device (a host-device synchronisation on CUDA), so it cannot run while a CUDA graph is
    captured: compute it before the capture, or pass a known bound instead.

    Args:
        offsets: Sequence boundaries, ``(B+1,)``; ``B = 0`` (offsets ``[0]``) is an empty batch.

    Returns:
        ``max_b offsets[b+1] - offsets[b]``, or 0 for an empty batch.

    Raises:
        ValueError: If ``offsets`` is not 1-D with at least one element.

    """
    if offsets.dim() != 1 or offsets.numel() == 0:
        raise ValueError(f"offsets must be 1-D with at least one element (B+1 boundaries), got shape "
                         f"{tuple(offsets.shape)}")
    if offsets.numel() == 1:
        return 0
    return int((offsets[1:] - offsets[:-1]).max())  # (B,) lengths -> their max


def seq_index(offsets: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """Sequence id and position within the sequence of every jagged row.

    Args:
        offsets: Sequence boundaries. ``(B+1,)``.
        total: ``offsets[-1]`` as a Python int (avoids a device sync).

    Returns:
        ``(seq, pos)``, each ``(sum_N,)`` int64.

    """
    lengths = offsets[1:] - offsets[:-1]
    seq = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths, output_size=total)
    pos = torch.arange(total, device=offsets.device) - offsets[seq]
    return seq, pos


def jagged_to_padded(values: Tensor, offsets: Tensor, max_len: int, padding_value: float = 0.0) -> Tensor:
    """Pad jagged rows to a dense batch.

    Args:
        values: ``(sum_N, *feature)``.
        offsets: ``(B+1,)``.
        max_len: Padded length; longer sequences are truncated to their first ``max_len`` rows.
        padding_value: Fill for missing rows.

    Returns:
        ``(B, max_len, *feature)``.

    """
    feature = values.shape[1:]
    if HAS_FBGEMM and values.dtype in _FBGEMM_DTYPES:
        flat = values.reshape(values.shape[0], -1)  # (sum_N, F)
        out = torch.ops.fbgemm.jagged_to_padded_dense(flat, [offsets], [max_len], padding_value)
        return out.reshape(offsets.numel() - 1, max_len, *feature)  # (B, max_len, *feature)
    batch = offsets.numel() - 1
    seq, pos = seq_index(offsets, values.shape[0])
    # Rows past max_len go to one spill row that is dropped: no boolean mask, so no data-dependent shape
    # (torch.compile traces this in one graph instead of breaking at a nonzero).
    flat = torch.where(pos < max_len, seq * max_len + pos, batch * max_len)  # (sum_N,)
    out = values.new_full((batch * max_len + 1, *feature), padding_value)
    out[flat] = values
    return out[:-1].view(batch, max_len, *feature)  # (B, max_len, *feature)


def padded_to_jagged(dense: Tensor, offsets: Tensor, total: int) -> Tensor:
    """Gather the valid rows of a padded batch back into jagged layout.

    Args:
        dense: ``(B, max_len, *feature)``.
        offsets: ``(B+1,)``; every sequence must fit in ``max_len``.
        total: ``offsets[-1]`` as a Python int.

    Returns:
        ``(sum_N, *feature)``.

    """
    feature = dense.shape[2:]
    if HAS_FBGEMM and dense.dtype in _FBGEMM_DTYPES:
        flat = dense.reshape(dense.shape[0], dense.shape[1], -1)  # (B, max_len, F)
        out = torch.ops.fbgemm.dense_to_jagged(flat, [offsets], total)[0]
        return out.reshape(total, *feature)  # (sum_N, *feature)
    seq, pos = seq_index(offsets, total)
    return dense[seq, pos]
