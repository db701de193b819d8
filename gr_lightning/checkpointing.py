"""Checkpoints that survive a kill and resume a run exactly.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the target folder, fsyncs it
  and renames it into place, so a process killed mid-write (SIGKILL, OOM, pre-emption) leaves either the
  previous complete file or the new complete file, never a truncated one.
* :class:`RNGStateCheckpoint` stores the torch (CPU and CUDA), numpy and Python RNG states of every rank in
  the checkpoint and restores them when training resumes, together with the private streams of the model's
  submodules (any module with ``rng_state()`` and ``load_rng_state(state)`` methods, such as the
  per-rank negative sampler of :class:`~gr_lightning.nn.SampledSoftmaxLoss`). Lightning's own checkpoints
  hold none of them, so without it a resumed run draws different negatives and dropout masks than an
  uninterrupted one.

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
from torch import nn


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


def module_rng_states(model: nn.Module) -> dict[str, Any]:
    """``rng_state()`` of every submodule of ``model`` that has one, by qualified module name."""
    return {name: module.rng_state() for name, module in model.named_modules()
            if callable(getattr(module, "rng_state", None)) and callable(getattr(module, "load_rng_state", None))}


def load_module_rng_states(model: nn.Module, states: dict[str, Any]) -> None:
    """Give each submodule named in ``states`` its saved stream back (names that no longer exist are an error)."""
    modules = dict(model.named_modules())
    missing = sorted(set(states) - set(modules))
    if missing:
        raise KeyError(f"the checkpoint has random streams for modules the model lacks: {', '.join(missing)}")
    for name, state in states.items():
        modules[name].load_rng_state(state)


class RNGStateCheckpoint(Callback):
    """Save every rank's RNG states in checkpoints; restore them when training resumes from one.

    Saving gathers the states of all ranks (Lightning builds checkpoints on every rank), so each rank
    resumes its own streams: the global ones and the model's private ones (see :func:`module_rng_states`).
    The states are applied at ``on_train_start``, after the sanity check and dataloader setup, right
    before the first resumed training step. A checkpoint saved with another world size restores rank
    ``r``'s state from saved rank ``r % saved_world_size`` (not exact, but deterministic).
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[dict[str, Any]] | None = None
        self._model: nn.Module | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Remember the model whose private streams are saved with the global ones."""
        self._model = pl_module

    def state_dict(self) -> dict[str, Any]:
        """States of every rank, ordered by rank."""
        mine = rng_states()
        mine["modules"] = module_rng_states(self._model) if self._model is not None else {}
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
        state = self._pending[trainer.global_rank % len(self._pending)]
        set_rng_states(state)
        if state.get("modules"):
            load_module_rng_states(pl_module, state["modules"])
        self._pending = None
