"""CUDA-graph replay: the input contract and the capture-safe checks (replay itself is checked on the GPU by
``benchmarks/bench_kv_cache.py``, which compares replayed and eager scores; CI has no GPU)."""

from __future__ import annotations

import pytest
import torch

from gr_lightning.serving.graphs import GraphedCall, _check_inputs, capturing


def test_inputs_must_match_the_captured_names_shapes_and_dtypes():
    static = {"x": torch.randn(4, 3), "offsets": torch.tensor([0, 1, 4])}
    _check_inputs(static, {"x": torch.randn(4, 3), "offsets": torch.tensor([0, 3, 4])})
    with pytest.raises(ValueError, match=r"captured with inputs \['offsets', 'x'\], got \['x'\]"):
        _check_inputs(static, {"x": torch.randn(4, 3)})
    with pytest.raises(ValueError, match=r"input .x. is \(5, 3\) torch.float32, but the graph was captured for "):
        _check_inputs(static, {"x": torch.randn(5, 3), "offsets": torch.tensor([0, 1, 4])})
    with pytest.raises(ValueError, match=r"input 'offsets' is \(3,\) torch.int32"):
        _check_inputs(static, {"x": torch.randn(4, 3), "offsets": torch.tensor([0, 1, 4], dtype=torch.int32)})
    with pytest.raises(ValueError, match="input 'x' must be a tensor, got list"):
        _check_inputs(static, {"x": [1.0], "offsets": torch.tensor([0, 1, 4])})


def test_a_graph_needs_cuda_inputs():
    with pytest.raises(ValueError, match=r"CUDA graphs need every input on one CUDA device, got \['cpu'\]"):
        GraphedCall(lambda x: x * 2, {"x": torch.randn(3)})


def test_nothing_is_capturing_outside_a_graph():
    assert capturing() is False
