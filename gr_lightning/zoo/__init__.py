"""The backbone zoo: sequence encoders registered as plugins (entry-point group ``gr_lightning.zoo``).

A backbone maps jagged token embeddings to jagged outputs of the same width. Its ``__init__`` starts
with ``(dim, max_seq_len)``: the model supplies both (``dim`` is the embedding width, ``max_seq_len`` is
linked from the DataModule), and every other argument comes from YAML. Third-party packages register
theirs under the same entry-point group; ``gr-lightning zoo`` lists what is installed.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from functools import cache
from importlib.metadata import entry_points
from typing import ClassVar

from torch import Tensor, nn

ENTRY_POINT_GROUP = "gr_lightning.zoo"


class Backbone(nn.Module, ABC):
    """Base class of every zoo backbone.

    Subclasses set ``description`` (one line for ``gr-lightning zoo``) and accept ``dim`` and
    ``max_seq_len`` as their first two ``__init__`` arguments.
    """

    description: ClassVar[str] = ""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        if dim <= 0 or max_seq_len <= 0:
            raise ValueError(f"dim and max_seq_len must be positive, got dim={dim}, max_seq_len={max_seq_len}")
        self.dim = dim
        self.max_seq_len = max_seq_len

    @abstractmethod
    def forward(self, x: Tensor, offsets: Tensor, max_len: int, timestamps: Tensor,
                query_times: Tensor | None = None, *, num_targets: Tensor | None = None,
                num_contextual: int = 0) -> Tensor:
        """Encode jagged sequences.

        Args:
            x: Input embeddings, position-encoded. ``(sum_N, dim)``.
            offsets: Sequence boundaries. ``(B+1,)``.
            max_len: Longest sequence in the batch.
            timestamps: Event times in seconds. ``(sum_N,)``.
            query_times: Request time after each sequence (the target's time at evaluation), or None
                when unknown. ``(B,)``. Backbones without temporal features ignore it.
            num_targets: Ranking: the last ``num_targets[b]`` rows of sequence ``b`` are candidates
                (target-aware mask: they see the history and themselves; history never sees them).
                ``(B,)``, or None. Backbones that cannot honour it raise.
            num_contextual: Ranking: the first rows of every sequence form a contextual prefix that sees
                the whole non-candidate sequence. Backbones that cannot honour it raise.

        Returns:
            ``(sum_N, dim)``: the output at row ``r`` summarises its sequence up to and including ``r``.

        """


def _builtin() -> dict[str, type[Backbone]]:
    from gr_lightning.zoo.hstu import HSTU
    from gr_lightning.zoo.sasrec import SASRec

    return {"hstu": HSTU, "sasrec": SASRec}


@cache
def registry() -> dict[str, type[Backbone]]:
    """Every registered backbone by short name: the built-ins plus installed entry points.

    A plugin that fails to import, or whose object is not a :class:`Backbone` subclass, is skipped with
    a warning naming it, so one broken package does not take the CLI down.
    """
    found = _builtin()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and f"{found[ep.name].__module__}:{found[ep.name].__qualname__}" == ep.value:
            continue
        try:
            obj = ep.load()
        except Exception as err:  # a third-party import error must not break the CLI
            warnings.warn(f"zoo plugin {ep.name!r} ({ep.value}) failed to load: {err}", stacklevel=2)
            continue
        if not (isinstance(obj, type) and issubclass(obj, Backbone)):
            warnings.warn(f"zoo plugin {ep.name!r} ({ep.value}) is not a gr_lightning.zoo.Backbone subclass",
                          stacklevel=2)
            continue
        found[ep.name] = obj
    return found


def get_backbone(name: str) -> type[Backbone]:
    """Return the backbone class registered as ``name``; the error lists what is available."""
    zoo = registry()
    if name not in zoo:
        raise KeyError(f"no backbone named {name!r} in the zoo; available: {', '.join(sorted(zoo))}")
    return zoo[name]


__all__ = ["ENTRY_POINT_GROUP", "Backbone", "get_backbone", "registry"]
