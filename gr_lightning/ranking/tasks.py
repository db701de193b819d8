"""Ranking tasks: what each output of the multi-task head predicts, read from YAML (HSTU paper, Sec. 4.2).

A task turns the merged action token id of a candidate (what the user did) into a label:

- ``bit:K``   binary, bit ``K`` of a bitmask action id (e.g. KuaiRand's ``is_like`` is ``bit:1``);
- ``>=V``     binary, ``action >= V`` (e.g. MovieLens "rating >= 4": ``>=4``); also ``>V``, ``<=V``,
  ``<V``, ``==V``;
- ``value``   the action id itself as a number (regression, e.g. the MovieLens rating).

YAML::

    tasks:
      - {name: like, type: binary, label: ">=4", weight: 1.0}
      - {name: rating, type: regression, label: value, weight: 0.5}
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
_PATTERN = re.compile(r"^(bit:(?P<bit>\d+)|(?P<op>>=|<=|==|>|<)\s*(?P<value>-?\d+(\.\d+)?)|(?P<raw>value))$")


@dataclass
class TaskSpec:
    """One prediction task.

    Attributes:
        name: Metric and log name (``test/auc_<name>``).
        type: ``binary`` (BCE, AUC / NE / log loss) or ``regression`` (MSE, MSE / MAE).
        label: How the label comes from the action id (module docstring).
        weight: Weight of this task's loss in the sum.

    """

    name: str
    type: Literal["binary", "regression"] = "binary"
    label: str = "bit:0"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"task name {self.name!r} must be letters, digits, '_', '.' or '-'")
        if self.type not in ("binary", "regression"):
            raise ValueError(f"task {self.name!r}: type must be 'binary' or 'regression', got {self.type!r}")
        match = _PATTERN.match(self.label.strip())
        if match is None:
            raise ValueError(f"task {self.name!r}: label {self.label!r} is not 'bit:K', a comparison like '>=4', "
                             "or 'value'")
        if self.type == "binary" and match["raw"]:
            raise ValueError(f"task {self.name!r}: a binary task needs a 0/1 label ('bit:K' or a comparison)")
        if self.weight < 0:
            raise ValueError(f"task {self.name!r}: weight must be >= 0, got {self.weight}")

    def labels(self, actions: Tensor) -> Tensor:
        """Float labels of ``actions`` (``(M,)`` int64 action ids) -> ``(M,)`` float32."""
        m = _PATTERN.match(self.label.strip())
        if m["bit"] is not None:
            return ((actions >> int(m["bit"])) & 1).to(torch.float32)
        if m["op"] is not None:
            return _COMPARE[m["op"]](actions.to(torch.float64), float(m["value"])).to(torch.float32)
        return actions.to(torch.float32)


def parse_tasks(tasks: list[TaskSpec | dict]) -> list[TaskSpec]:
    """Accept specs or plain dicts (YAML); names must be unique and the list non-empty."""
    out = [t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in tasks]
    if not out:
        raise ValueError("at least one task is needed")
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    return out
