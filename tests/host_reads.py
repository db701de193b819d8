"""Find the ops that would make the host wait for the GPU, on the CPU test machine.

On CUDA these ops block the host until the device has finished everything queued before them: reading a
value (``.item()``, ``int(t)``, ``bool(t)``), ops whose output shape depends on the data (boolean-mask
indexing, ``nonzero``, ``unique``, ``repeat_interleave`` without ``output_size``) and blocking copies
between host and device. Each one stops the host from queueing work ahead of the GPU, and none can be
captured in a CUDA graph. ``torch.cuda.set_sync_debug_mode`` finds them on a GPU; :class:`HostReads`
records the same ops on the CPU by their aten names, so tests can hold a code path to "no host reads".

Copies between devices only show with CUDA tensors: run the code under ``FakeTensorMode`` with tensors
on a fake ``cuda`` device to see them on the CPU. ``.tolist()`` and ``.numpy()`` of a CPU tensor dispatch no
op, so they are not seen.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode

from gr_lightning.loss_log import is_logging_step

aten = torch.ops.aten

#: Ops that read tensor data on the host or size their output from it.
_ALWAYS = {
    aten._local_scalar_dense.default,  # .item(), int(t), float(t), bool(t)
    aten.nonzero.default,
    aten.masked_select.default,
    aten.bincount.default,
    aten.equal.default,
    aten.is_nonzero.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
}
#: Indexing ops that read the data when an index is a boolean mask.
_MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _has_mask(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _caller() -> str:
    """``file:line`` of the innermost frame that is neither torch's, Lightning's nor this module's."""
    for frame in reversed(traceback.extract_stack()):
        if not any(part in frame.filename for part in ("/torch/", "/lightning/", "host_reads.py")):
            return f"{frame.filename}:{frame.lineno}"
    return "?"


class HostReads(TorchDispatchMode):
    """Records, by aten name, every op run inside it that makes the host wait for the device.

    Attributes:
        ops: The names recorded, in call order.
        places: For each, the innermost calling line outside torch and Lightning (``file:line``).

    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.places: list[str] = []

    def _reads(self, func: Any, args: tuple, kwargs: dict) -> bool:
        if func in _ALWAYS:
            return True
        if func in _MASK_INDEXING:
            return _has_mask(args[1] if len(args) > 1 else kwargs.get("indices"))
        if func is aten.repeat_interleave.Tensor:
            return kwargs.get("output_size") is None
        if func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            dst_device = args[0].device if func is aten.copy_.default else kwargs.get("device", src.device)
            blocking = not kwargs.get("non_blocking", func is aten.copy_.default and len(args) > 2 and args[2])
            return torch.device(dst_device).type != src.device.type and blocking
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self._reads(func, args, kwargs):
            self.ops.append(str(func))
            self.places.append(_caller())
        return func(*args, **kwargs)


class HostReadsRecorder(Callback):
    """Keeps every training batch, and the ops that would wait for the device in the steps that do not log.

    It records from a step's start to the next step's start (Lightning's own per-batch work included), but
    not in the optimizer's step (Adam's step counters are host tensors on a GPU as well, while on this
    CPU machine every tensor is a host tensor) nor in validation. It must come before the callbacks it
    checks. Args: ``fail``: raise at the end of fitting if anything was recorded (for CLI runs).
    """

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[Any] = []
        self.reads: list[str] = []
        self.places: list[str] = []
        self._mode: HostReads | None = None

    def _record(self, trainer) -> None:
        if not is_logging_step(trainer):  # a step whose metrics stay on the device
            self._mode = HostReads()
            self._mode.__enter__()

    def _stop(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.reads += self._mode.ops
            self.places += self._mode.places
            self._mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._stop()
        self.batches.append(batch)
        self._record(trainer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._stop()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(trainer)

    def on_validation_start(self, trainer, pl_module):
        self._stop()  # once per epoch: validation reads its metrics

    def on_train_epoch_end(self, trainer, pl_module):
        self._stop()

    def on_fit_end(self, trainer, pl_module):
        """Fail the run (under the CLI) when anything waited; a test holding it may inspect ``reads`` instead."""
        if self.fail and self.reads:
            found = sorted({f"{op} at {place}" for op, place in zip(self.reads, self.places, strict=True)})
            raise AssertionError("host reads in training steps that do not log:\n" + "\n".join(found))
