"""The KV-cache benchmark's CPU smoke mode runs both kernels and finds cached == full scores."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kv_cache.py"


def test_smoke_mode_writes_timings_and_equal_scores(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_kv_cache", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "kv.json"
    bench.main(["--smoke", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["smoke"] and result["device"] == "cpu" and result["model"]["dtype"] == "float32"
    for kernel in ("pytorch", "triton"):  # the suite runs Triton on its interpreter
        assert result["checks"][kernel]["max_rel_err"] < 1e-5, result["checks"][kernel]
    runs = {(r["kernel"], r["batch"]): r for r in result["runs"]}
    assert set(runs) == {("pytorch", 1), ("pytorch", 2), ("triton", 1), ("triton", 2)}
    for run in runs.values():
        assert all(run[k]["ms"] > 0 for k in ("full", "prefill", "cached"))
        assert run["max_rel_err"] < 1e-5 and run["speedup"] > 0 and run["cache_bytes"] > 0
