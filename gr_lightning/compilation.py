"""``torch.compile`` of a zoo backbone, block by block, with shapes that vary per batch.

Jagged batches differ in total length ``sum_N``, in batch size ``B`` and in ``max_len``, the padded
length of the reference HSTU kernel (a Python int). Compiling with ``dynamic=True`` makes all of them
symbolic from the first call: integer arguments become symbolic integers rather than constants, so one
graph serves every batch, and a new graph is only traced for a different grad mode, train/eval mode or
size-0/1 edge case, never for a new length.

Each repeated block (the classes :func:`~gr_lightning.strategies.backbone_block_classes` finds: a
backbone's ``blocks`` or its ``fsdp_wrap_classes()``) is compiled in place with ``nn.Module.compile``
("regional compilation"). The reasons for this over compiling the whole backbone:

* the blocks run the same code, so their graphs are traced and compiled once and reused for all of them;
* the blocks are also the FSDP units, so FSDP's all-gather and reshard hooks stay outside the graphs;
* the module tree and state-dict keys stay unchanged, so checkpoints load with or without compilation.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gr_lightning.strategies import backbone_block_classes

#: Options that are always passed to ``torch.compile`` unless given otherwise.
DEFAULT_OPTIONS: dict[str, Any] = {"dynamic": True}


def compile_backbone_blocks(backbone: nn.Module, options: dict[str, Any] | None = None) -> list[nn.Module]:
    """Compile every repeated block of ``backbone`` in place (idempotent: compiled blocks are skipped).

    Args:
        backbone: A zoo backbone, or a model containing one.
        options: Keyword arguments of ``torch.compile`` (``mode``, ``backend``, ``fullgraph``, ...) on top of
            :data:`DEFAULT_OPTIONS`.

    Returns:
        The blocks compiled by this call.

    Raises:
        ValueError: The backbone has neither ``blocks`` nor ``fsdp_wrap_classes()``, or ``options`` sets
            ``dynamic`` to something other than True or None (jagged batches would recompile per length).

    """
    options = {**DEFAULT_OPTIONS, **(options or {})}
    if options["dynamic"] not in (True, None):
        raise ValueError(f"compile option dynamic={options['dynamic']!r} would specialise on every batch's lengths;"
                         " use True (default) or None (automatic dynamic after the first recompile)")
    classes = tuple(backbone_block_classes(backbone))
    compiled = []
    for module in backbone.modules():
        if isinstance(module, classes) and getattr(module, "_compiled_call_impl", None) is None:
            module.compile(**options)
            compiled.append(module)
    return compiled
