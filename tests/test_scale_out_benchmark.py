"""benchmarks/scale_out.py and its helpers: CPU smoke sweeps (DDP on gloo processes), profiles, options, data,
loss-curve comparisons (``_loss_curves``) and the profiler summary (``_profile_summary``)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import EventList, FunctionEvent

from tests.conftest import REPO_ROOT

# benchmarks/ is a folder of scripts, not a package: its helper modules import by their top-level names, as
# scale_out.py imports them (it puts the same folder on sys.path).
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import _loss_curves as loss_curves
import _profile_summary as profile_summary

SCRIPT = REPO_ROOT / "benchmarks" / "scale_out.py"


def _load():
    spec = importlib.util.spec_from_file_location("scale_out", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scale_out = _load()


def _smoke_sweep(tmp_path, monkeypatch, *options: str) -> dict:
    """A CPU sweep; its runs are subprocesses, so the sweep itself runs in this process (no second start-up)."""
    out = tmp_path / "merged.json"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    scale_out.main(["--smoke", "--sweep", "--strategies", "ddp", "--precisions", "32-true", "--max-minutes", "3",
                    "--out", str(out), *options])
    return json.loads(out.read_text())


def test_smoke_sweep_measures_every_rank_on_the_same_data(tmp_path, monkeypatch):
    merged = _smoke_sweep(tmp_path, monkeypatch, "--devices-list", "1", "2", "--no-noise-runs", "--profile-steps", "2")
    assert merged["not_run"] == [], merged["not_run"]
    one, two = sorted(merged["runs"], key=lambda r: r["config"]["devices"])
    steps = scale_out.SMOKE["warmup"] + scale_out.SMOKE["steps"]
    for run, world in ((one, 1), (two, 2)):
        assert [r["rank"] for r in run["ranks"]] == list(range(world))
        assert all(len(r["steps"]) == steps for r in run["ranks"])
        summary = run["summary"]
        assert summary["world_size"] == world and len(summary["loss_curve"]) == steps  # profiled steps left out
        assert all(len(r["profiled_steps"]) == 2 for r in run["ranks"])
        _check_cpu_profile(run, steps)
        # Phases (host clock on CPU) are parts of the step; the time between steps is measured apart.
        unphased = []
        for step in run["ranks"][0]["steps"]:
            phases = step["phases_ms"]
            assert set(phases) == set(scale_out.PHASES) and min(phases.values()) >= 0
            unphased.append(step["seconds"] * 1e3 - sum(phases.values()))
        assert min(unphased) >= 0 and np.median(unphased) < 1.0  # the phases tile the step
        assert summary["median_outside_step_ms"] > 0
        assert summary["samples_per_s_incl_outside"] < summary["samples_per_s"]
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
    assert merged["noise"] == []  # --no-noise-runs, one precision: no reference


def _check_cpu_profile(run: dict, steps: int) -> None:
    profile = run["profile"]
    assert profile["rank"] == 0 and profile["activities"] == ["cpu"] and profile["steps"] == 2
    assert profile["ranked_by"] == "self_cpu_time" and profile["device"] is None and profile["top_kernels"] == []
    assert profile["timed_median_step_ms"] == pytest.approx(run["summary"]["median_step_s"] * 1e3)
    # The window holds 2 whole steps and what runs between them, so it is no shorter than those steps.
    profiled = run["ranks"][0]["profiled_steps"]
    assert profile["wall_ms_per_step"] * 2 >= sum(s["seconds"] for s in profiled) * 1e3
    ops = profile["top_ops"]
    assert 5 <= len(ops) <= 25 and all(len(o["name"]) <= 120 for o in ops)
    assert [o["cpu_ms_per_step"] for o in ops] == sorted((o["cpu_ms_per_step"] for o in ops), reverse=True)
    assert all(o["share"] >= 0 for o in ops) and sum(o["share"] for o in ops) <= 1.0
    names = {o["name"] for o in ops}
    assert "Optimizer.step#AdamW.step" in names and any(n.startswith("aten::") for n in names)


def test_noise_rerun_changes_only_the_bucket_boundaries(tmp_path, monkeypatch):
    merged = _smoke_sweep(tmp_path, monkeypatch, "--devices-list", "1", "--noise-bucket-cap-mb", "0.01")
    assert merged["not_run"] == [], merged["not_run"]
    runs = {r["config"]["variant"]: r for r in merged["runs"]}
    assert set(runs) == {"main", "reorder"} and runs["reorder"]["config"]["bucket_cap_mb"] == 0.01
    main, rerun = runs["main"]["effective"], runs["reorder"]["effective"]
    assert main["ddp_bucket_cap_bytes"] == 25 * 2**20 and rerun["ddp_bucket_cap_bytes"] == int(0.01 * 2**20)
    assert len(rerun["ddp_bucket_sizes"].split(",")) > len(main["ddp_bucket_sizes"].split(",")) == 1
    assert main["ddp_comm_hook"] is None and runs["main"]["profile"] is None
    # One CPU rank: the buckets are summed over nobody, so the rerun reproduces the run bit for bit.
    (noise,) = merged["noise"]
    assert (noise["devices"], noise["precision"]) == (1, "32-true") and "bf16_vs_fp32" not in noise
    assert noise["reorder"]["first_differing_step"] is None and noise["reorder"]["max_abs"] == 0.0


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


def _run(strategy: str, precision: str, curve: list[float], embedding_gib: float, variant: str | None = None) -> dict:
    config = {"strategy": strategy, "precision": precision, "devices": 2}
    if variant is not None:  # old JSON has no variant
        config["variant"] = variant
    return {"config": config, "summary": {"loss_curve": curve, "embedding_gib_per_gpu": embedding_gib,
                                          "peak_allocated_gib_max": 9.0, "samples_per_s": 100.0}}


def test_fsdp_is_judged_against_ddp_and_the_bf16_noise():
    runs = [_run("ddp", "32-true", [5.0, 4.0, 3.0], 4.0), _run("ddp", "bf16-mixed", [5.0, 4.1, 3.05], 4.0),
            _run("fsdp", "bf16-mixed", [5.0, 4.05, 3.1], 1.0), _run("fsdp", "32-true", [5.0, 4.5, 3.0], 1.0)]
    rows = {r["precision"]: r for r in loss_curves.compare(runs)}
    assert rows["bf16-mixed"]["loss_gap"]["max_abs"] == pytest.approx(0.05)
    assert rows["bf16-mixed"]["bf16_noise"]["max_abs"] == pytest.approx(0.1)
    assert rows["bf16-mixed"]["within_bf16_noise"] is True
    assert rows["32-true"]["within_bf16_noise"] is False  # 0.5 apart: more than bf16 explains
    assert rows["32-true"]["embedding_gib_per_gpu"] == {"ddp": 4.0, "fsdp": 1.0}
    assert rows["bf16-mixed"]["verdict"]["within_noise"] is True and rows["32-true"]["verdict"]["within_noise"] is False
    assert rows["32-true"]["verdict"]["reference"] == "bf16_vs_fp32" and "reorder_noise" not in rows["32-true"]
    with pytest.raises(ValueError, match="length"):
        loss_curves.curve_gap([1.0], [1.0, 2.0])


def test_curve_gap_smooths_out_a_single_spike():
    rng = np.random.default_rng(0)
    base = list(5.0 - np.cumsum(rng.uniform(0.01, 0.1, 14)))
    spiked = list(base)
    spiked[3] += 0.5
    gap = loss_curves.curve_gap(base, spiked)
    assert gap["max_abs"] == pytest.approx(0.5) and gap["mean_abs"] == pytest.approx(0.5 / 14)
    assert gap["first_differing_step"] == 3 and gap["smoothing_window"] == 10
    assert gap["smoothed_max_abs"] == pytest.approx(0.05)  # one step in a 10-step average
    assert gap["tail_abs"] == 0.0  # the last 10 steps (4..13) agree
    same = loss_curves.curve_gap(base, list(base))
    assert same["first_differing_step"] is None and same["max_abs"] == same["tail_abs"] == 0.0
    short = loss_curves.curve_gap([1.0, 2.0, 3.0], [1.0, 2.0, 3.3])
    assert short["smoothing_window"] == 3 and short["tail_abs"] == pytest.approx(0.1)


def test_fsdp_is_judged_against_the_reorder_noise_and_names_its_criterion():
    rng = np.random.default_rng(1)
    ddp = 6.0 - np.cumsum(rng.uniform(0.05, 0.1, 20))  # (20,)
    wiggle = rng.standard_normal(20)  # (20,)
    runs = [_run("ddp", "bf16-mixed", list(ddp), 4.0, "main"),
            _run("ddp", "bf16-mixed", list(ddp + 0.02 * wiggle), 4.0, "reorder"),
            _run("ddp", "32-true", list(ddp + 0.005 * wiggle), 4.0, "main"),
            _run("fsdp", "bf16-mixed", list(ddp + 0.01 * wiggle), 1.0, "main")]
    (row,) = loss_curves.compare(runs)
    reorder, bf16 = row["reorder_noise"], row["bf16_noise"]
    assert reorder["mean_abs"] == pytest.approx(0.02 * np.abs(wiggle).mean())
    assert bf16["mean_abs"] == pytest.approx(0.005 * np.abs(wiggle).mean())
    verdict = row["verdict"]
    # Within the wider (reorder) band, though twice the bf16-vs-fp32 gap: the old max-gap field says outside.
    assert verdict["within_noise"] is True and verdict["reference"] == "reorder" and verdict["statistic"] == "mean_abs"
    assert "mean_abs" in verdict["criterion"] and "reorder" in verdict["criterion"]
    assert verdict["ratio"] == pytest.approx(0.5)
    assert row["within_bf16_noise"] is False
    assert verdict["checks"]["reorder"] == dict.fromkeys(loss_curves.GAP_STATISTICS, True)
    assert verdict["checks"]["bf16_vs_fp32"] == dict.fromkeys(loss_curves.GAP_STATISTICS, False)
    fp32_row, bf16_row = loss_curves.noise_references(runs)  # by device count, then precision name
    assert (bf16_row["precision"], bf16_row["reorder"], bf16_row["bf16_vs_fp32"]) == ("bf16-mixed", reorder, bf16)
    assert fp32_row["precision"] == "32-true" and "reorder" not in fp32_row  # no fp32 rerun in this sweep
    # A rerun that reproduces DDP bit for bit: the verdict says FSDP's gap is deterministic, not noise.
    runs[1] = _run("ddp", "bf16-mixed", list(ddp), 4.0, "reorder")
    (row,) = loss_curves.compare(runs)
    assert row["verdict"]["reference"] == "bf16_vs_fp32" and row["verdict"]["within_noise"] is False
    assert "bitwise identical" in row["verdict"]["note"]
    (row,) = loss_curves.compare(runs[3:] + runs[:1])  # no reference at all
    assert row["verdict"]["within_noise"] is None and row["verdict"]["criterion"].startswith("none")


def test_scale_out_uses_the_helper_modules_the_tests_import():
    # One module object each, whether imported by name or by scale_out loaded from its path: no stale copy.
    assert scale_out.compare is loss_curves.compare and scale_out.noise_references is loss_curves.noise_references
    assert scale_out.profile_breakdown is profile_summary.profile_breakdown


def test_committed_sweeps_keep_their_comparison_fields():
    for path in sorted((REPO_ROOT / "benchmarks" / "results").glob("scale_out_*.json")):
        data = json.loads(path.read_text())
        rows = loss_curves.compare(data["runs"])
        assert len(rows) == len(data["comparisons"]) > 0, path.name
        for new, old in zip(rows, data["comparisons"], strict=True):
            assert set(old) <= set(new) and set(old["loss_gap"]) <= set(new["loss_gap"])
            assert new["within_bf16_noise"] == old["within_bf16_noise"]
            assert new["loss_gap"]["max_abs"] == old["loss_gap"]["max_abs"]


def _device_event(name: str, start: float, end: float, **kw) -> FunctionEvent:
    if name.startswith(("gemm", "elementwise", "nccl")) and not kw:
        kw["activity_type"] = "kernel"
    return FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end, device_type=DeviceType.CUDA,
                         use_device="cuda", stack=[], **kw)


def test_profile_breakdown_of_device_events():
    gemm = FunctionEvent(id=1, name="aten::mm", thread=0, start_us=0, end_us=10, use_device="cuda", stack=[])
    gemm.append_kernel("gemm", 0, 500.0)
    events = EventList([
        gemm,
        _device_event("gemm", 0, 300), _device_event("gemm", 400, 600),  # 2 steps, 500 us of kernel time
        _device_event("elementwise", 250, 350),  # overlaps gemm on another stream: 300..350 idle-free
        _device_event("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 500, 900),  # 600..900 exposed
        _device_event("nccl:all_reduce", 0, 1000, is_user_annotation=True),  # annotation span, not a kernel
        _device_event("Stream Wait Event", 0, 1000, activity_type="cuda_sync"),  # a wait, not work
        _device_event("Event Sync", 0, 1000),  # the same, from a torch without activity types
    ], use_device="cuda")
    events._build_tree()  # parents and children, as the profiler does before handing events out
    out = profile_summary.profile_breakdown(events, wall_s=2e-3, steps=2, on_device=True)
    assert out["wall_ms_per_step"] == pytest.approx(1.0) and out["ranked_by"] == "self_device_time"
    assert out["top_ops"][0]["name"] == "aten::mm" and out["top_ops"][0]["device_ms_per_step"] == pytest.approx(0.25)
    kernels = {k["name"]: k for k in out["top_kernels"]}
    assert set(kernels) == {"gemm", "elementwise", "ncclDevKernel_AllReduce_Sum_f32_RING_LL"}
    assert kernels["gemm"]["calls_per_step"] == 1 and kernels["gemm"]["share"] == pytest.approx(0.25)
    device = out["device"]
    assert device["kernel_ms_per_step"] == pytest.approx(0.5)  # 300 + 200 + 100 + 400 us over 2 steps
    assert device["busy_ms_per_step"] == pytest.approx(0.425)  # union: 0..350 and 400..900 us
    assert device["idle_ms_per_step"] == pytest.approx(0.575) and device["idle_share"] == pytest.approx(0.575)
    assert device["nccl_ms_per_step"] == pytest.approx(0.2) and device["nccl_share"] == pytest.approx(0.4)
    assert device["nccl_exposed_ms_per_step"] == pytest.approx(0.15)


def test_fsdp_on_cpu_is_refused_with_a_reason(tmp_path):
    with pytest.raises(SystemExit, match="FSDP needs CUDA"):
        scale_out.main(["--smoke", "--strategy", "fsdp", "--out", str(tmp_path / "x.json")])


def test_sweep_runs_the_informative_configurations_first():
    order = scale_out.sweep_order(["bf16-mixed", "32-true"], [4, 1, 2], ["ddp", "fsdp"])
    assert order[:5] == [("bf16-mixed", 1, "ddp", "main"), ("bf16-mixed", 2, "ddp", "main"),
                         ("bf16-mixed", 2, "fsdp", "main"), ("bf16-mixed", 4, "ddp", "main"),
                         ("bf16-mixed", 4, "fsdp", "main")]
    assert order[-2:] == [("bf16-mixed", 1, "fsdp", "main"), ("32-true", 1, "fsdp", "main")] and len(order) == 12
    noisy = scale_out.sweep_order(["bf16-mixed", "32-true"], [1, 2], ["ddp", "fsdp"], noise_runs=True)
    assert [r.name for r in noisy] == [
        "ddp_bf16-mixed_1gpu", "ddp_bf16-mixed_2gpu", "fsdp_bf16-mixed_2gpu",
        "ddp_32-true_1gpu", "ddp_32-true_2gpu", "fsdp_32-true_2gpu",
        "ddp_bf16-mixed_2gpu_reorder", "ddp_32-true_2gpu_reorder",  # the multi-GPU noise floor
        "fsdp_bf16-mixed_1gpu", "fsdp_32-true_1gpu",
        "ddp_bf16-mixed_1gpu_reorder", "ddp_32-true_1gpu_reorder"]
    assert scale_out.sweep_order(["32-true"], [2], ["fsdp"], noise_runs=True) == [("32-true", 2, "fsdp", "main")]


@pytest.mark.parametrize(("argv", "message"), [
    (["--strategy", "fsdp", "--bucket-cap-mb", "10"], "DDP options"),
    (["--strategy", "fsdp", "--ddp-comm-hook", "bf16"], "DDP options"),
    (["--sweep", "--strategies", "fsdp", "--bucket-cap-mb", "10"], "DDP options"),
    (["--param-dtype", "bfloat16"], "FSDP option"),
    (["--strategy", "fsdp", "--precision", "32-true", "--param-dtype", "bfloat16"], "needs --precision bf16-mixed"),
    (["--smoke", "--ddp-comm-hook", "bf16"], "needs CUDA"),
    (["--profile-steps", "-1"], "must be >= 0"),
    (["--profile-trace", "t.json"], "needs --profile-steps"),
    (["--bucket-cap-mb", "0"], "must be > 0"),
    (["--sweep", "--noise-bucket-cap-mb", "25"], "perturb nothing"),
    (["--sweep", "--bucket-cap-mb", "4", "--noise-bucket-cap-mb", "4"], "perturb nothing"),
    (["--variant", "reorder"], "needs --strategy ddp and --bucket-cap-mb"),
    (["--sweep", "--variant", "reorder"], "set by --sweep"),
])
def test_contradictory_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        scale_out.parse_args(["--out", "x.json", *argv])
    assert message in capsys.readouterr().err


def test_sweep_gives_each_strategy_its_own_options():
    args = scale_out.parse_args(["--out", "x.json", "--sweep", "--bucket-cap-mb", "50", "--ddp-comm-hook", "bf16",
                                 "--param-dtype", "bfloat16", "--noise-bucket-cap-mb", "3"])
    flags = {run.name: scale_out._run_flags(args, run)
             for run in scale_out.sweep_order(args.precisions, [2], args.strategies, noise_runs=True)}
    assert flags == {
        "ddp_bf16-mixed_2gpu": ["--bucket-cap-mb", "50.0", "--ddp-comm-hook", "bf16"],
        "ddp_32-true_2gpu": ["--bucket-cap-mb", "50.0", "--ddp-comm-hook", "bf16"],
        "ddp_bf16-mixed_2gpu_reorder": ["--variant", "reorder", "--bucket-cap-mb", "3.0", "--ddp-comm-hook", "bf16"],
        "ddp_32-true_2gpu_reorder": ["--variant", "reorder", "--bucket-cap-mb", "3.0", "--ddp-comm-hook", "bf16"],
        "fsdp_bf16-mixed_2gpu": ["--param-dtype", "bfloat16"],
        "fsdp_32-true_2gpu": [],  # 32-true FSDP parameters can only be float32
    }
    for run_flags in flags.values():  # each run's own command line is valid
        scale_out.parse_args(["--out", "x.json", "--strategy", "ddp" if "--ddp-comm-hook" in run_flags else "fsdp",
                              *run_flags])
