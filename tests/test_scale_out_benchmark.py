"""benchmarks/scale_out.py: its CPU smoke sweep (DDP on 1 and 2 gloo processes), its data and its comparisons."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "scale_out.py"


def _load():
    spec = importlib.util.spec_from_file_location("scale_out", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scale_out = _load()


def test_smoke_sweep_measures_every_rank_on_the_same_data(tmp_path):
    out = tmp_path / "merged.json"
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1"}
    environ.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--sweep", "--strategies", "ddp", "--precisions",
                           "32-true", "--devices-list", "1", "2", "--max-minutes", "3", "--out", str(out)],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    merged = json.loads(out.read_text())
    assert merged["not_run"] == [], merged["not_run"]
    one, two = sorted(merged["runs"], key=lambda r: r["config"]["devices"])
    steps = scale_out.SMOKE["warmup"] + scale_out.SMOKE["steps"]
    for run, world in ((one, 1), (two, 2)):
        assert [r["rank"] for r in run["ranks"]] == list(range(world))
        assert all(len(r["steps"]) == steps for r in run["ranks"])
        summary = run["summary"]
        assert summary["world_size"] == world and len(summary["loss_curve"]) == steps
        assert summary["samples_per_s"] > 0 and summary["tokens_per_s"] > summary["samples_per_s"]
        assert all(np.isfinite(summary["loss_curve"]))
        assert run["env"]["NCCL_NVLS_ENABLE"] == "0"
        # DDP: every rank holds the whole table, its gradient and AdamW's two moments.
        full = run["embedding_table_bytes_fp32"]
        for rank in run["ranks"]:
            sizes = rank["embedding_bytes"]
            assert sizes["param"] == sizes["grad"] == full and sizes["optimizer"] >= 2 * full
    # Same weights, data and negative stream for rank 0 in both runs: the first loss (before any update) is equal.
    assert one["ranks"][0]["steps"][0]["loss"] == two["ranks"][0]["steps"][0]["loss"]
    first = [r["steps"][0] for r in two["ranks"]]
    assert first[0]["tokens"] != first[1]["tokens"]  # each rank trains on its own batches
    assert merged["comparisons"] == []  # no FSDP run on CPU to compare with


def test_histories_are_deterministic_per_rank_and_zipf_skewed():
    workload = {**scale_out.SMOKE, "batch_size": 64}
    data = scale_out.ZipfHistories(workload, seed=3, rank=0, num_steps=4)
    batch = data[1]
    batch.validate()
    assert batch.batch_size == 64
    assert workload["min_len"] <= int(batch.lengths.min()) and int(batch.lengths.max()) <= workload["max_len"]
    assert int(batch.items.min()) >= 1 and int(batch.items.max()) <= workload["num_items"]
    for b in range(batch.batch_size):  # time runs forward within each history
        ts = batch.timestamps[batch.offsets[b]:batch.offsets[b + 1]]
        assert bool((ts[1:] > ts[:-1]).all())
    again = scale_out.ZipfHistories(workload, seed=3, rank=0, num_steps=4)[1]
    assert torch.equal(batch.items, again.items) and torch.equal(batch.timestamps, again.timestamps)
    other = scale_out.ZipfHistories(workload, seed=3, rank=1, num_steps=4)[1]
    assert not torch.equal(batch.offsets, other.offsets)
    counts = np.bincount(np.concatenate([data[s].items.numpy() for s in range(4)]), minlength=workload["num_items"] + 1)
    harmonic = (1.0 / np.arange(1, workload["num_items"] + 1)).sum()
    assert counts.max() / counts.sum() == pytest.approx(1 / harmonic, rel=0.25)  # rank-1 item's Zipf share


def _run(strategy: str, precision: str, curve: list[float], embedding_gib: float) -> dict:
    return {"config": {"strategy": strategy, "precision": precision, "devices": 2},
            "summary": {"loss_curve": curve, "embedding_gib_per_gpu": embedding_gib, "peak_allocated_gib_max": 9.0,
                        "samples_per_s": 100.0}}


def test_fsdp_is_judged_against_ddp_and_the_bf16_noise():
    runs = [_run("ddp", "32-true", [5.0, 4.0, 3.0], 4.0), _run("ddp", "bf16-mixed", [5.0, 4.1, 3.05], 4.0),
            _run("fsdp", "bf16-mixed", [5.0, 4.05, 3.1], 1.0), _run("fsdp", "32-true", [5.0, 4.5, 3.0], 1.0)]
    rows = {r["precision"]: r for r in scale_out.compare(runs)}
    assert rows["bf16-mixed"]["loss_gap"]["max_abs"] == pytest.approx(0.05)
    assert rows["bf16-mixed"]["bf16_noise"]["max_abs"] == pytest.approx(0.1)
    assert rows["bf16-mixed"]["within_bf16_noise"] is True
    assert rows["32-true"]["within_bf16_noise"] is False  # 0.5 apart: more than bf16 explains
    assert rows["32-true"]["embedding_gib_per_gpu"] == {"ddp": 4.0, "fsdp": 1.0}
    with pytest.raises(ValueError, match="length"):
        scale_out.curve_gap([1.0], [1.0, 2.0])


def test_fsdp_on_cpu_is_refused_with_a_reason(tmp_path):
    with pytest.raises(SystemExit, match="FSDP needs CUDA"):
        scale_out.main(["--smoke", "--strategy", "fsdp", "--out", str(tmp_path / "x.json")])


def test_sweep_runs_the_informative_configurations_first():
    order = scale_out.sweep_order(["bf16-mixed", "32-true"], [4, 1, 2], ["ddp", "fsdp"])
    assert order[:5] == [("bf16-mixed", 1, "ddp"), ("bf16-mixed", 2, "ddp"), ("bf16-mixed", 2, "fsdp"),
                         ("bf16-mixed", 4, "ddp"), ("bf16-mixed", 4, "fsdp")]
    assert order[-2:] == [("bf16-mixed", 1, "fsdp"), ("32-true", 1, "fsdp")] and len(order) == 12
