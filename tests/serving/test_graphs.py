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


def test_an_input_that_was_none_at_capture_must_stay_none_or_be_left_out():
    static = {"x": torch.randn(4, 3)}
    absent = frozenset({"query_times"})
    _check_inputs(static, {"x": torch.randn(4, 3), "query_times": None}, absent)
    _check_inputs(static, {"x": torch.randn(4, 3)}, absent)
    with pytest.raises(ValueError, match="input 'query_times' was None when the graph was captured, so it must be "
                                         r"None \(or left out\) now"):
        _check_inputs(static, {"x": torch.randn(4, 3), "query_times": torch.randn(2)}, absent)
    with pytest.raises(ValueError, match=r"captured with inputs \['x'\], got \[\]"):
        _check_inputs(static, {"query_times": None}, absent)
    with pytest.raises(ValueError, match=r"captured with inputs \['x'\], got \['extra', 'x'\]"):
        _check_inputs(static, {"x": torch.randn(4, 3), "extra": torch.randn(2)}, absent)


def test_an_input_that_was_a_tensor_at_capture_cannot_be_none():
    static = {"x": torch.randn(4, 3), "query_times": torch.randn(2)}
    with pytest.raises(ValueError, match="input 'query_times' was a tensor when the graph was captured, got None"):
        _check_inputs(static, {"x": torch.randn(4, 3), "query_times": None})


def test_none_example_inputs_are_left_out_of_the_device_check():
    with pytest.raises(ValueError, match=r"CUDA graphs need every input on one CUDA device, got \['cpu'\]"):
        GraphedCall(lambda x, query_times=None: x * 2, {"x": torch.randn(3), "query_times": None})
    with pytest.raises(ValueError, match=r"CUDA graphs need every input on one CUDA device, got \[\]"):
        GraphedCall(lambda query_times=None: torch.ones(1), {"query_times": None})


def test_a_graph_needs_cuda_inputs():
    with pytest.raises(ValueError, match=r"CUDA graphs need every input on one CUDA device, got \['cpu'\]"):
        GraphedCall(lambda x: x * 2, {"x": torch.randn(3)})


def test_nothing_is_capturing_outside_a_graph():
    assert capturing() is False
