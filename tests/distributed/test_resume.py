"""Exact resume: a fit SIGKILLed mid-epoch and resumed from its last checkpoint ends bitwise equal to an
uninterrupted fit with the same seed (weights, optimizer state and validation metrics), through the real CLI.

It needs every piece: the checkpoint written atomically, the dataloader position (ResumableDataLoader),
the epoch's batch plan (seeded sampler) and the torch/numpy/python RNG states (RNGStateCheckpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from tests.distributed.helpers import env, run, tiny_config, write_config

STEPS_PER_EPOCH = 8  # 253 users in batches of 32


def _fit(tmp: Path, name: str, *extra: str) -> None:
    args = ["-m", "gr_lightning", "fit", "--config", str(tmp / "tiny.yaml"), f"--checkpoint.dirpath={tmp / name}",
            "--checkpoint.every_n_train_steps=2", "--test_after_fit=false",
            f"--trainer.logger.init_args.run_name={name}", *extra]
    proc = run(args, cwd=tmp, environ=env(tmp, tmp / f"{name}.db"), timeout=120)
    killed = "--trainer.callbacks+=tests.distributed.helpers.KillAtStep" in extra
    if killed:
        assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}\n{proc.stderr[-4000:]}"
    else:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]


def _metrics(db: Path, run_id: str | None = None) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    if run_id is None:
        (only,) = client.search_runs([client.get_experiment_by_name("distributed-test").experiment_id])
        run_id = only.info.run_id
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(("val/", "train/loss"))]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def _assert_same_state(a: Path, b: Path) -> None:
    ca, cb = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    assert ca["global_step"] == cb["global_step"] == 2 * STEPS_PER_EPOCH
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key, value in ca["state_dict"].items():
        assert torch.equal(value, cb["state_dict"][key]), key
    sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    for param, state in sa.items():
        for name, value in state.items():
            assert torch.equal(value, sb[param][name]), (param, name)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path / "cache"))
    _fit(tmp_path, "straight")

    # Killed at global step 11 (epoch 1, batch 3): the last checkpoint is step 10, saved mid-epoch.
    _fit(tmp_path, "resumed", "--trainer.callbacks+=tests.distributed.helpers.KillAtStep",
         "--trainer.callbacks.init_args.step=11")
    saved = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 10 and saved["epoch"] == 1
    assert not list((tmp_path / "resumed").glob(".*.tmp"))  # no half-written leftovers
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'resumed.db'}")
    (killed,) = client.search_runs([client.get_experiment_by_name("distributed-test").experiment_id])
    assert killed.info.status == "RUNNING"  # it never got to close its run

    # Resume from the last checkpoint (a new MLflow run: continuing the killed one needs tracking support).
    _fit(tmp_path, "resumed", "--ckpt_path=last")
    runs = client.search_runs([killed.info.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2 and runs[0].info.run_id == killed.info.run_id

    _assert_same_state(tmp_path / "straight" / "last.ckpt", tmp_path / "resumed" / "last.ckpt")
    straight = _metrics(tmp_path / "straight.db")
    before, after = _metrics(tmp_path / "resumed.db", killed.info.run_id), _metrics(tmp_path / "resumed.db",
                                                                                      runs[1].info.run_id)
    assert len(straight["val/ndcg_10"]) == 2
    for key in ("val/ndcg_10", "val/hr_10", "val/mrr"):
        assert before[key] + after[key] == straight[key], key  # epoch 0 before the kill, epoch 1 after
    # Every training loss equals the uninterrupted run's at the same step; the step killed mid-way is replayed.
    assert dict(straight["train/loss"]) == {**dict(before["train/loss"]), **dict(after["train/loss"])}
    assert len(before["train/loss"]) == 10 and len(after["train/loss"]) == 6
