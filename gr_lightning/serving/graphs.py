"""CUDA-graph replay of launch-bound inference calls (serving side of HSTU paper Sec. 3.4, M-FALCON).

Scoring a few hundred candidates behind a cached history runs a few hundred small kernels: at batch 1
the GPU mostly waits for the host that launches them. A CUDA graph records the launches once and
replays them with one call. ``torch.cuda.make_graphed_callables`` is built for training (it captures
the autograd backward too and needs ``requires_grad`` bookkeeping); this is the inference form: fixed
input shapes, new values copied into static buffers, no gradients.

A graph fixes, at capture: every input's shape and dtype, every Python number the call uses (such as
``max_len``) and every tensor it reads that is not an input (weights, the buffers of a KV cache). It
reads the *contents* of those tensors at each replay, so a cache that grows in place (``append``) is
seen by later replays. A function to capture must not read device values on the host (``.item()``,
data-dependent shapes): the library's checks that do so are skipped while :func:`capturing`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from gr_lightning.serving.cache import KVCache


def capturing() -> bool:
    """Whether the current CUDA stream is being captured into a graph (then no host may read the device)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _check_inputs(static: dict[str, Tensor], given: dict[str, Tensor | None],
                  absent: frozenset[str] = frozenset()) -> None:
    """Raise ValueError unless ``given`` has the names, shapes and dtypes the graph was captured with.

    Args:
        static: The captured tensor inputs.
        given: The call's inputs.
        absent: Optional inputs that were None at capture: a call passes None for them or leaves them out.

    """
    for name in sorted(absent & set(given)):
        if given[name] is not None:
            raise ValueError(f"input {name!r} was None when the graph was captured, so it must be None (or left "
                             "out) now; capture another graph with an example tensor for it")
    tensors = set(given) - absent
    if tensors != set(static):
        raise ValueError(f"the graph was captured with inputs {sorted(static)}, got {sorted(tensors)}")
    for name, want in static.items():
        got = given[name]
        if got is None:
            raise ValueError(f"input {name!r} was a tensor when the graph was captured, got None; capture "
                             "another graph with None for it")
        if not isinstance(got, Tensor):
            raise ValueError(f"input {name!r} must be a tensor, got {type(got).__name__}")
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(f"input {name!r} is {tuple(got.shape)} {got.dtype}, but the graph was captured for "
                             f"{tuple(want.shape)} {want.dtype}; capture another graph for this shape")


class GraphedCall:
    """``fn(**inputs)`` captured once as a CUDA graph, replayed with new input values.

    Args:
        fn: Function of keyword tensor arguments returning one tensor. It must not change what it reads
            (it runs ``warmup`` times before the capture), must not read device values on the host, and
            must not draw random numbers.
        example_inputs: Keyword tensors with the shapes, dtypes and (CUDA) device of every later call; the
            warm-up and the capture run on copies of them, so give valid values (offsets that describe
            real sequences). An optional input given as None is passed to ``fn`` as None in the capture,
            and every later call must pass None for it or leave it out.
        warmup: Eager calls before the capture: first calls compile and tune Triton kernels, which a
            capture cannot do.

    """

    def __init__(self, fn: Callable[..., Tensor], example_inputs: dict[str, Tensor | None], warmup: int = 2) -> None:
        self._absent = frozenset(name for name, t in example_inputs.items() if t is None)
        tensors = {name: t for name, t in example_inputs.items() if t is not None}
        devices = {t.device for t in tensors.values()}
        if len(devices) != 1 or next(iter(devices)).type != "cuda":
            raise ValueError(f"CUDA graphs need every input on one CUDA device, got {sorted(map(str, devices))}")
        device = next(iter(devices))
        self._static = {name: t.clone() for name, t in tensors.items()}
        args = {**self._static, **dict.fromkeys(self._absent)}  # the capture's arguments, Nones included
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):
                fn(**args)
        torch.cuda.current_stream(device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self._graph):
            self._out = fn(**args)

    def __call__(self, **inputs: Tensor | None) -> Tensor:
        """Copy ``inputs`` into the graph's buffers, replay it, return a copy of its output."""
        _check_inputs(self._static, inputs, self._absent)
        for name, buffer in self._static.items():
            buffer.copy_(inputs[name], non_blocking=True)
        self._graph.replay()
        return self._out.clone()


def candidate_scoring_graph(backbone: torch.nn.Module, cache: KVCache, x: Tensor, offsets: Tensor, max_len: int,
                            timestamps: Tensor, query_times: Tensor | None = None) -> GraphedCall:
    """Capture ``backbone.score_candidates(cache, ...)`` for one candidate layout.

    The example call is checked eagerly first (so bad input fails with the usual message). Replay with
    ``graph(x=..., offsets=..., timestamps=..., query_times=...)`` (``query_times`` None or left out if the
    example had none): the same number of candidate rows and batch size, at most ``max_len`` candidates per
    sequence (the caller's promise, as in ``score_candidates``: the graph cannot read the offsets to check it).

    Args:
        backbone: An HSTU in eval mode on CUDA.
        cache: Its prefilled cache; replays read the cache's current contents.
        x: ``(sum_K, D)`` example candidate tokens.
        offsets: ``(B+1,)`` example candidate boundaries.
        max_len: Most candidates any sequence may have in later calls.
        timestamps: ``(sum_K,)`` example candidate times.
        query_times: ``(B,)`` example request times, or None (then replays take none).

    """
    backbone.score_candidates(cache, x, offsets, max_len, timestamps, query_times)  # validates eagerly

    def score(x: Tensor, offsets: Tensor, timestamps: Tensor, query_times: Tensor | None = None) -> Tensor:
        return backbone.score_candidates(cache, x, offsets, max_len, timestamps, query_times)

    return GraphedCall(score, dict(x=x, offsets=offsets, timestamps=timestamps, query_times=query_times))


__all__ = ["GraphedCall", "candidate_scoring_graph", "capturing"]
