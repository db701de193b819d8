"""``benchmarks/lightning_overhead.py`` times every variant and writes them as JSON."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("lightning_overhead", REPO_ROOT / "benchmarks" / "lightning_overhead.py")
lightning_overhead = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lightning_overhead)


def test_every_variant_is_timed(tmp_path, monkeypatch):
    out = tmp_path / "overhead.json"
    monkeypatch.setattr(sys, "argv", ["lightning_overhead.py", "--steps", "20", "--repeats", "2", "--out", str(out)])
    lightning_overhead.main()
    result = json.loads(out.read_text())
    medians = result["host_ms_per_step_median"]
    assert set(medians) == {"bare_loop", "fit_0_logs_per_step", "fit_1_logs_per_step", "fit_2_logs_per_step",
                            "fit_6_logs_per_step", "fit_log_training_loss"}
    assert all(ms > 0 for ms in medians.values())
    assert all(len(runs) == 2 for runs in result["host_ms_per_step_runs"].values())
