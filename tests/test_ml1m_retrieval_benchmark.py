"""benchmarks/ml1m_retrieval.py (seeds, parallel runs, failures, summaries, --compare) and its results_table rows.

No training runs here: the CLI subprocess is replaced by tiny Python processes and MLflow by their output.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

T_975_DF4 = 2.7764451051977987  # Student t 97.5% quantile, 4 degrees of freedom (printed tables: 2.776)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load("ml1m_retrieval")
table = _load("results_table")
BASE = ["--data-root", "d", "--configs", "conf/ml-1m/hstu-large.yaml", "--out", "o.json"]


@pytest.mark.parametrize(("argv", "message"), [
    ([*BASE, "--parallel", "0"], "--parallel must be >= 1, got 0"),
    ([*BASE, "--parallel", "-2"], "--parallel must be >= 1, got -2"),
    ([*BASE, "--parallel", "two"], "invalid int value"),
    ([*BASE, "--seeds", "1", "2", "1"], "lists a seed twice"),
    ([*BASE, "--seeds", "-1"], "--seeds must lie in [0, 4294967295], got [-1]"),
    ([*BASE, "--seeds", str(2**32)], "got [4294967296]"),
    ([*BASE, "--seeds", "0.5"], "invalid int value"),
    ([*BASE, "--seeds"], "expected at least one argument"),
    ([*BASE, "--seeds", "0", "1", "--seed_everything=3"], "give one"),
    ([*BASE[:4], "--seeds", "0"], "--out required"),
    (["--compare", "a.json", "b.json", "--trainer.max_epochs=3"], "takes no training overrides"),
    (["--compare", "a.json", "b.json", "--tolerance", "0"], "--tolerance must be > 0"),
    ([*BASE, "--configs", "c.yaml", "c.yaml"], "lists a config twice"),
])
def test_bad_arguments_are_refused_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench._parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_keep_one_run_with_the_configs_seed_and_pass_overrides_through(tmp_path):
    args = bench._parse_args([*BASE, "--model.init_args.cuda_graphs=true"])
    assert args.seeds is None and args.parallel == 1
    assert args.extra == ["--model.init_args.cuda_graphs=true"]
    cmd = bench._cli_command(args.configs[0], None, args, tmp_path)
    assert not any(c.startswith("--seed_everything") for c in cmd)

    args = bench._parse_args([*BASE, "--kernel", "triton", "--seeds", "0", "1", "2", "--parallel", "3",
                              "--model.init_args.cuda_graphs=true"])
    assert args.seeds == [0, 1, 2] and args.parallel == 3
    assert args.extra == ["--model.init_args.cuda_graphs=true"]
    cmd = bench._cli_command(args.configs[0], 1, args, tmp_path)
    # The seed comes after the config and every override, so it is the one the CLI applies.
    assert cmd[-2:] == ["--model.backbone.init_args.kernel=triton", "--seed_everything=1"]
    assert cmd.index("--model.init_args.cuda_graphs=true") < cmd.index("--seed_everything=1")


def test_stats_match_hand_computed_values():
    s = bench._stats([0.31, 0.33, 0.35, 0.37])
    sd = math.sqrt((0.03**2 + 0.01**2 + 0.01**2 + 0.03**2) / 3)  # deviations from the mean 0.34
    assert s["n"] == 4
    assert s["mean"] == pytest.approx(0.34, abs=1e-12)
    assert s["sd"] == pytest.approx(sd, rel=1e-12)
    assert s["se"] == pytest.approx(sd / 2, rel=1e-12)
    assert bench._stats([0.4]) == {"mean": 0.4, "sd": None, "se": None, "n": 1}
    assert bench._stats([])["n"] == 0


def _run(config: str, seed: int | None, hr_10: float | None, **extra) -> dict:
    if hr_10 is None:
        return {"config": config, "seed": seed, "failed": True, "returncode": 1, "command": "x", **extra}
    test = {k: hr_10 if k == "hr_10" else hr_10 + 0.01 * (i + 1) for i, k in enumerate(bench.METRICS)}
    return {"config": config, "seed": seed, "command": "fit --model.init_args.cuda_graphs=true", "epochs_run": 101,
            "best_val_epoch": 90 + (seed or 0), "test": test, "seconds_per_epoch_median": 0.5 + 0.1 * (seed or 0),
            **extra}


def _file(path: Path, hr_10s: list[float | None], config: str = "conf/ml-1m/hstu-large.yaml", **top) -> Path:
    runs = [_run(config, seed, v) for seed, v in enumerate(hr_10s)]
    data = {"device": "H100", "kernel": "triton", "precision": "32-true", "data": "d", "epochs": 101,
            "seeds": list(range(len(hr_10s))), "concurrent_runs": 1, "runs": runs, "summary": bench._summaries(runs),
            **top}
    path.write_text(json.dumps(data))
    return path


def test_summaries_count_only_successful_seeds():
    runs = [_run("a.yaml", 0, 0.30), _run("a.yaml", 1, None), _run("a.yaml", 2, 0.32), _run("b.yaml", 0, 0.2)]
    s = bench._summaries(runs)
    assert s["a.yaml"]["seeds"] == [0, 2] and s["a.yaml"]["failed_seeds"] == [1]
    hr = s["a.yaml"]["test"]["hr_10"]
    assert hr["n"] == 2 and hr["mean"] == pytest.approx(0.31)
    assert hr["sd"] == pytest.approx(0.02 / math.sqrt(2)) and hr["se"] == pytest.approx(0.01)
    assert s["a.yaml"]["seconds_per_epoch_median"]["mean"] == pytest.approx(0.6)
    assert s["b.yaml"]["test"]["hr_10"]["n"] == 1


def test_compare_interval_and_verdicts_on_hand_computed_cases(tmp_path):
    a = json.loads(_file(tmp_path / "a.json", [0.340, 0.341, 0.342]).read_text())
    se = math.sqrt(2 * (0.001 / math.sqrt(3)) ** 2)  # both sides: sd 0.001, n 3
    close = bench.compare(a, json.loads(_file(tmp_path / "b.json", [0.339, 0.340, 0.341]).read_text()))
    row = close["conf/ml-1m/hstu-large.yaml"]["welch"]["hr_10"]
    assert row["diff"] == pytest.approx(0.001) and row["se"] == pytest.approx(se)
    assert row["df"] == pytest.approx(4.0)  # equal n and sd: Welch gives 2(n-1)
    assert row["ci95"] == pytest.approx([0.001 - T_975_DF4 * se, 0.001 + T_975_DF4 * se])
    assert row["verdict"] == "supported"

    far = bench.compare(a, json.loads(_file(tmp_path / "c.json", [0.320, 0.321, 0.322]).read_text()))
    assert far["conf/ml-1m/hstu-large.yaml"]["welch"]["hr_10"]["verdict"] == "contradicted"
    noisy = bench.compare(a, json.loads(_file(tmp_path / "d.json", [0.33, 0.34, 0.35]).read_text()))
    # interval +-0.016 around 0.001
    assert noisy["conf/ml-1m/hstu-large.yaml"]["welch"]["hr_10"]["verdict"] == "undecided"
    single = bench.compare(a, json.loads(_file(tmp_path / "e.json", [0.341]).read_text()))
    row = single["conf/ml-1m/hstu-large.yaml"]["welch"]["hr_10"]
    assert row["verdict"] == "undecided" and row["se"] is None and row["ci95"] is None  # n = 1: no spread at all


def test_welch_degrees_of_freedom_for_unequal_sides():
    a = {"mean": 0.34, "sd": 0.01, "se": 0.01 / math.sqrt(3), "n": 3}
    b = {"mean": 0.33, "sd": 0.02, "se": 0.02 / math.sqrt(2), "n": 2}
    va, vb = 0.01**2 / 3, 0.02**2 / 2
    row = bench._compare_stats(a, b, 0.005)
    assert row["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 1))  # 1.3425...
    assert row["se"] == pytest.approx(math.sqrt(va + vb))


def test_compare_command_line_prints_each_verdict(tmp_path, capsys):
    a = _file(tmp_path / "a.json", [0.340, 0.341, 0.342])
    b = _file(tmp_path / "b.json", [0.339, 0.340, 0.341], config="conf/ml-1m/hstu-large-copy.yaml", epochs=50)
    bench.main(["--compare", str(a), str(b)])
    out = capsys.readouterr().out
    paired_part, welch_part = out.split("\nWelch, every successful seed of each file\n")
    assert "paired by seed: 3 pairs, seeds [0, 1, 2]; successful in A only: [], in B only: []" in paired_part
    assert "mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n)" in paired_part
    assert welch_part.startswith("95% interval: diff +- t(0.975, Welch df)")
    for part in (paired_part, welch_part):
        lines = {line.split()[0]: line for line in part.splitlines() if line.split()
                 and line.split()[0] in bench.METRICS}
        assert set(lines) == set(bench.METRICS)
        assert "+0.0010" in lines["hr_10"] and "supported" in lines["hr_10"]
    assert "warning: the files differ in epochs" in out  # one config each: paired although the names differ
    two_others = {"runs": [_run("other.yaml", 0, 0.3), _run("x.yaml", 0, 0.3)]}
    with pytest.raises(ValueError, match="no config to compare"):
        bench.compare(json.loads(a.read_text()), two_others)


def _random_runs(rng: np.random.Generator, seeds: list[int], failed: set[int], config: str = "c.yaml") -> list[dict]:
    """Runs of ``seeds`` with fresh random test metrics; those in ``failed`` are marked failed (metrics kept, so
    that pairing them would change the numbers)."""
    runs = []
    for s in seeds:
        test = {k: float(v) for k, v in zip(bench.METRICS, rng.uniform(0.1, 0.6, len(bench.METRICS)), strict=True)}
        runs.append({"config": config, "seed": s, "test": test, "seconds_per_epoch_median": 1.0,
                     **({"failed": True, "returncode": 1} if s in failed else {})})
    return runs


def _result(runs: list[dict]) -> dict:
    return {"runs": runs}


def test_paired_statistics_match_hand_computation_over_seeds_in_both_files():
    rng = np.random.default_rng(20261123)
    # A: seed 6 failed, 8 only here; B: seed 2 failed, 7 only here. Pairs: seeds 0, 1, 3, 4, 5 (df 4).
    runs_a = _random_runs(rng, [5, 3, 0, 6, 8, 1, 2, 4], failed={6})  # file order is not seed order
    runs_b = _random_runs(rng, [0, 1, 2, 3, 4, 5, 6, 7], failed={2})
    result = bench.compare(_result(runs_a), _result(runs_b))["c.yaml"]
    assert result["paired_seeds"] == [0, 1, 3, 4, 5]
    assert result["a_only_seeds"] == [2, 8] and result["b_only_seeds"] == [6, 7]
    by_a = {r["seed"]: r["test"] for r in runs_a if not r.get("failed")}
    by_b = {r["seed"]: r["test"] for r in runs_b if not r.get("failed")}
    for metric in bench.METRICS:
        d = [by_a[s][metric] - by_b[s][metric] for s in (0, 1, 3, 4, 5)]
        mean = sum(d) / 5
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
        row = result["paired"][metric]
        assert row["n"] == 5 and row["df"] == 4
        assert row["diff"] == pytest.approx(mean, rel=1e-12)
        assert row["mean_a"] == pytest.approx(sum(by_a[s][metric] for s in (0, 1, 3, 4, 5)) / 5, rel=1e-12)
        assert row["mean_b"] == pytest.approx(sum(by_b[s][metric] for s in (0, 1, 3, 4, 5)) / 5, rel=1e-12)
        assert row["sd"] == pytest.approx(sd, rel=1e-12)
        assert row["se"] == pytest.approx(sd / math.sqrt(5), rel=1e-12)
        half = T_975_DF4 * sd / math.sqrt(5)
        assert row["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-9)
        assert row["verdict"] == "undecided"  # uniform values on [0.1, 0.6]: an interval far wider than 0.005
        welch = result["welch"][metric]  # every successful seed of each file, paired or not
        assert (welch["n_a"], welch["n_b"]) == (7, 7)


def test_pairing_decides_where_welch_does_not_when_pairs_are_correlated():
    rng = np.random.default_rng(7)
    seeds = list(range(6))
    seed_effect = rng.normal(0.0, 0.01, len(seeds))  # shared by both files: the spread that pairing removes

    def runs(shift: float) -> list[dict]:
        noise = rng.normal(0.0, 0.0003, len(seeds))
        return [{"config": "c.yaml", "seed": s, "seconds_per_epoch_median": 1.0,
                 "test": {k: 0.34 + shift + seed_effect[s] + noise[s] for k in bench.METRICS}} for s in seeds]

    b = _result(runs(0.0))
    close = bench.compare(_result(runs(0.001)), b)["c.yaml"]
    assert close["paired"]["hr_10"]["verdict"] == "supported"
    assert close["welch"]["hr_10"]["verdict"] == "undecided"
    assert close["paired"]["hr_10"]["se"] < close["welch"]["hr_10"]["se"] / 5
    far = bench.compare(_result(runs(0.008)), b)["c.yaml"]
    assert far["paired"]["hr_10"]["verdict"] == "contradicted"
    assert far["welch"]["hr_10"]["verdict"] == "undecided"


@pytest.mark.parametrize(("seeds_b", "n"), [([2, 3, 4], 1), ([3, 4], 0)])
def test_fewer_than_two_pairs_is_undecided_with_the_reason(seeds_b, n):
    rng = np.random.default_rng(n)
    result = bench.compare(_result(_random_runs(rng, [0, 1, 2], set())), _result(_random_runs(rng, seeds_b, set())))
    row = result["c.yaml"]["paired"]["hr_10"]
    assert row["n"] == n and row["verdict"] == "undecided" and "fewer than 2" in row["reason"]
    assert row["sd"] is None and row["se"] is None and row["ci95"] is None
    assert (row["diff"] is None) == (n == 0)
    assert result["c.yaml"]["welch"]["hr_10"]["se"] is not None  # Welch still has two seeds a side


def test_a_seed_that_succeeded_twice_cannot_be_paired():
    rng = np.random.default_rng(3)
    twice = _random_runs(rng, [0, 1, 1], set())
    with pytest.raises(ValueError, match="seed 1 succeeded twice"):
        bench.compare(_result(twice), _result(_random_runs(rng, [0, 1], set())))


def _fake_cli(monkeypatch, fail_seeds: set[int]):
    """Replace the training command by a tiny process per seed, and MLflow by the file that process writes."""

    launched = []

    def command(config, seed, args, workdir):
        launched.append(seed)
        if seed in fail_seeds:
            code = "import sys; sys.stderr.write('epoch 1\\r epoch 2\\nRuntimeError: boom\\n'); sys.exit(3)"
        else:
            code = (f"import json, sys; json.dump({{'seed': {seed}}}, open('fake.json', 'w')); "
                    "print('stdout line'); sys.stderr.write('stderr line')")
        return [sys.executable, "-c", code]

    snapshots = []

    def read(uri):
        seed = json.loads((Path(uri.removeprefix("sqlite:///")).parent / "fake.json").read_text())["seed"]
        snapshots.append(seed)
        run = _run("c", seed, 0.30 + 0.01 * seed)
        return {k: run[k] for k in ("epochs_run", "best_val_epoch", "test", "seconds_per_epoch_median")}

    monkeypatch.setattr(bench, "_cli_command", command)
    monkeypatch.setattr(bench, "_read_mlflow", read)
    monkeypatch.setattr(bench, "_device", lambda: {"device": "test", "torch": "t", "triton": "t"})
    return snapshots, launched


def test_a_failed_run_is_recorded_and_the_others_kept(tmp_path, monkeypatch, capsys):
    _fake_cli(monkeypatch, fail_seeds={1})
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--data-root", "d", "--configs", "conf/ml-1m/hstu-large.yaml", "--seeds", "0", "1", "2",
                    "--parallel", "2", "--out", str(out)])
    assert exit_info.value.code not in (0, None)
    data = json.loads(out.read_text())
    assert data["concurrent_runs"] == 2 and data["seeds"] == [0, 1, 2]
    assert [r["seed"] for r in data["runs"]] == [0, 1, 2]  # planned order, whatever order they finished in
    assert all(r["concurrent_runs"] == 2 for r in data["runs"])
    failed = data["runs"][1]
    assert failed["failed"] and failed["returncode"] == 3
    assert failed["stderr_tail"].endswith(" epoch 2\nRuntimeError: boom\n")  # progress redraws collapsed
    assert "test" not in failed and data["runs"][2]["test"]["hr_10"] == pytest.approx(0.32)
    summary = data["summary"]["conf/ml-1m/hstu-large.yaml"]
    assert summary["seeds"] == [0, 2] and summary["failed_seeds"] == [1]
    assert summary["test"]["hr_10"]["mean"] == pytest.approx(0.31) and summary["test"]["hr_10"]["n"] == 2
    captured = capsys.readouterr()
    assert "2 concurrent, not solo" in captured.out
    assert "RuntimeError: boom" in captured.err and "stdout line" not in captured.out  # concurrent: not echoed


def test_resume_reruns_only_failed_or_missing_seeds_of_a_matching_file(tmp_path, monkeypatch):
    _, launched = _fake_cli(monkeypatch, fail_seeds={1})
    out = tmp_path / "r.json"
    argv = ["--data-root", "d", "--configs", "conf/ml-1m/hstu-large.yaml", "--kernel", "triton", "--out", str(out),
            "--model.init_args.cuda_graphs=true", "--seeds"]
    with pytest.raises(SystemExit, match="rerun with --resume"):
        bench.main([*argv, "0", "1", "--parallel", "2"])
    with pytest.raises(SystemExit, match="kernel='triton', this invocation 'pytorch'"):
        bench.main([*argv[:5], "pytorch", *argv[6:], "0", "1", "--resume"])
    with pytest.raises(SystemExit, match="overrides"):
        bench.main([*argv[:-2], "--seeds", "0", "1", "--resume"])
    _, launched = _fake_cli(monkeypatch, fail_seeds=set())
    bench.main([*argv, "0", "1", "2", "--resume"])
    assert launched == [1, 2]  # seed 0 finished in the first invocation
    data = json.loads(out.read_text())
    assert [r["seed"] for r in data["runs"]] == [0, 1, 2] and not any(r.get("failed") for r in data["runs"])
    assert [r["concurrent_runs"] for r in data["runs"]] == [2, 1, 1] and data["concurrent_runs"] == 2
    assert data["seeds"] == [0, 1, 2] and data["summary"]["conf/ml-1m/hstu-large.yaml"]["test"]["hr_10"]["n"] == 3


def test_one_at_a_time_writes_the_json_after_every_run(tmp_path, monkeypatch, capfd):
    seeds_read, _ = _fake_cli(monkeypatch, fail_seeds=set())
    out = tmp_path / "r.json"
    seen = []
    read = bench._read_mlflow

    def read_and_look(uri):
        seen.append([r["seed"] for r in json.loads(out.read_text())["runs"]])
        return read(uri)

    monkeypatch.setattr(bench, "_read_mlflow", read_and_look)
    bench.main(["--data-root", "d", "--configs", "a-hstu.yaml", "b.yaml", "--seeds", "4", "--out", str(out)])
    assert seen == [[], [4]] and seeds_read == [4, 4]  # the file exists (empty) from the start
    data = json.loads(out.read_text())
    assert data["concurrent_runs"] == 1 and "summary" not in data  # one seed: no spread to summarise
    assert [r["config"] for r in data["runs"]] == ["a-hstu.yaml", "b.yaml"]
    captured = capfd.readouterr()
    assert captured.out.count("stdout line") == 2 and captured.err.count("stderr line") == 2  # shown live


def test_results_table_rows_for_seed_files_and_unchanged_single_runs(tmp_path):
    seeds = _file(tmp_path / "ml1m_half_seeds.json", [0.30, None, 0.32], concurrent_runs=3)
    (row,) = table._training_rows(seeds)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "ml-1m/hstu-large.yaml, seeds 0,2 (n=2, 1 failed)"
    assert cells[1:5] == ["H100", "triton", "32-true", "yes"]
    assert cells[5:7] == ["101", "90-92"]
    assert cells[7] == "0.60 ± 0.14 (3 concurrent)"
    assert cells[8] == "0.3100 ± 0.0141"  # HR@10: mean and sample sd of 0.30 and 0.32
    assert cells[-1] == "`ml1m_half_seeds.json`"

    mixed = json.loads(seeds.read_text())  # resumed by another invocation: the runs' own counts differ
    mixed["runs"][0]["concurrent_runs"], mixed["runs"][2]["concurrent_runs"] = 1, 5
    seeds.write_text(json.dumps(mixed))
    (row,) = table._training_rows(seeds)
    assert [c.strip() for c in row.strip("|").split("|")][7] == "0.60 ± 0.14 (1-5 concurrent)"

    legacy = {"device": "H100", "kernel": "pytorch", "precision": "32-true", "runs": [_run("conf/ml-1m/sasrec.yaml",
                                                                                          None, 0.25)]}
    del legacy["runs"][0]["seed"]
    (tmp_path / "ml1m_half_old.json").write_text(json.dumps(legacy))
    assert table._training_rows(tmp_path / "ml1m_half_old.json") == [
        "| ml-1m/sasrec.yaml | H100 | pytorch | 32-true | yes | 101 | 90 | 0.50 | 0.2500 | 0.3000 | 0.2800 | "
        "0.3100 | 0.3300 | `ml1m_half_old.json` |"]


def test_cold_triton_cache_gives_each_run_an_empty_cache_and_counts_its_compiled_kernels(tmp_path, monkeypatch):
    _fake_cli(monkeypatch, fail_seeds=set())
    seen = []

    fake_run = tmp_path / "fake_run.py"  # a "run" that compiles two forward variants and one backward
    fake_run.write_text(
        "import json, os, pathlib, sys\n"
        "json.dump({'seed': int(sys.argv[1])}, open('fake.json', 'w'))\n"
        "cache = os.environ.get('TRITON_CACHE_DIR')\n"
        "for d, name in [('a', '_fwd'), ('b', '_fwd'), ('c', '_bwd')] if cache else []:\n"
        "    folder = pathlib.Path(cache) / d\n"
        "    folder.mkdir(parents=True)\n"
        "    for file in (name + '.json', '__grp__' + name + '.json', name + '.autotune.json'):\n"
        "        (folder / file).write_text('{}')\n")

    def command(config, seed, args, workdir):
        seen.append(workdir)
        return [sys.executable, str(fake_run), str(seed)]

    monkeypatch.setattr(bench, "_cli_command", command)
    out = tmp_path / "r.json"
    argv = ["--data-root", "d", "--configs", "conf/ml-1m/hstu-large.yaml", "--seeds", "0", "1", "--out", str(out)]
    bench.main([*argv, "--cold-triton-cache"])
    data = json.loads(out.read_text())
    assert data["cold_triton_cache"] is True
    assert [r["triton_compiled"] for r in data["runs"]] == [{"_fwd": 2, "_bwd": 1}] * 2
    assert seen[0] != seen[1]  # a cache of its own per run
    with pytest.raises(SystemExit, match="cold_triton_cache=True, this invocation False"):
        bench.main([*argv, "--resume"])
    bench.main([*argv, "--out", str(tmp_path / "warm.json")])
    assert all("triton_compiled" not in r for r in json.loads((tmp_path / "warm.json").read_text())["runs"])


def test_results_table_lists_first_epochs_of_cold_cache_runs_only(tmp_path, capsys):
    cold = {"device": "H100", "kernel": "triton", "precision": "32-true", "cold_triton_cache": True,
            "runs": [{**_run("c", 0, 0.4), "seconds_per_epoch_first": 32.25, "seconds_per_epoch_median": 0.4,
                       "triton_compiled": {"_fwd": 2, "_bwd": 1}},
                     {"config": "c", "seed": 1, "failed": True}]}
    warm = {**cold, "cold_triton_cache": False, "runs": cold["runs"][:1]}
    (tmp_path / "ml1m_half_cold.json").write_text(json.dumps(cold))
    (tmp_path / "ml1m_half_warm.json").write_text(json.dumps(warm))
    table._print_cold_starts(sorted(tmp_path.glob("*.json")))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| H100")]
    assert rows == ["| H100 | triton | 32-true | 32.2 | 0.40 | _bwd 1, _fwd 2 | `ml1m_half_cold.json` |"]
    table._print_cold_starts([tmp_path / "ml1m_half_warm.json"])
    assert capsys.readouterr().out == ""  # no cold runs: no section
