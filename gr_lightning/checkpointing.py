"""Checkpoints that survive a kill and resume a run exactly.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the target folder, fsyncs it
  and renames it into place, so a process killed mid-write (SIGKILL, OOM, pre-emption) leaves either the
  previous complete file or the new complete file, never a truncated one.
* :class:`RNGStateCheckpoint` stores the torch (CPU and CUDA), numpy and Python RNG states of every rank in
  the checkpoint and restores them when training resumes. Lightning's own checkpoints hold none of them,
  so without it a resumed run draws different negatives and dropout masks than an uninterrupted one.

Together with :class:`~gr_lightning.data.sampling.ResumableDataLoader` (the position in the epoch), a run
killed mid-epoch and resumed with ``--ckpt_path last`` ends bitwise equal to an uninterrupted run on CPU.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder, fsync and ``os.replace``.

    Args:
        obj: What to save.
        path: Local destination; its folder is created if missing.

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic (temporary file, fsync, rename).

    Remote paths (``s3://``, ...) go through Lightning's fsspec writer unchanged. In YAML::

        trainer:
          plugins:
            - class_path: gr_lightning.checkpointing.AtomicCheckpointIO
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} writes local files and takes no storage_options")
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


def rng_states() -> dict[str, Any]:
    """This process's torch, CUDA (current device), numpy and Python RNG states.

    Only tensors and Python scalars/tuples, so ``torch.load(weights_only=True)`` (the default) reads them.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RNGStateCheckpoint(Callback):
    """Save every rank's RNG states in checkpoints; restore them when training resumes from one.

    Saving gathers the states of all ranks (Lightning builds checkpoints on every rank), so each rank
    resumes its own stream (negative sampling draws as many numbers as the rank has tokens, so ranks'
    streams differ). The states are applied at ``on_train_start``, after the sanity check and dataloader
    setup, right before the first resumed training step. A checkpoint saved with another world size
    restores rank ``r``'s state from saved rank ``r % saved_world_size`` (not exact, but deterministic).
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        """States of every rank, ordered by rank."""
        mine = rng_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
            return {"ranks": gathered}
        return {"ranks": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the states until training starts."""
        self._pending = list(state_dict["ranks"])

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Apply the restored states of this rank."""
        if not self._pending:
            return
        set_rng_states(self._pending[trainer.global_rank % len(self._pending)])
        self._pending = None
