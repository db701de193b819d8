"""Exact resume: a fit SIGKILLed mid-epoch and resumed from its last checkpoint ends bitwise equal to an
uninterrupted fit with the same seed (weights, optimizer state and validation metrics), through the real CLI,
on one process and on two (DDP, gloo).

It needs every piece: the checkpoint written atomically, the dataloader position (ResumableDataLoader),
the epoch's batch plan (seeded sampler) and the torch/numpy/python RNG states and each rank's
negative-sampling stream (RNGStateCheckpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from tests.distributed.helpers import ddp_args, env, run, tiny_config, write_config

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


def _assert_same_state(a: Path, b: Path, steps_per_epoch: int = STEPS_PER_EPOCH) -> None:
    ca, cb = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    assert ca["global_step"] == cb["global_step"] == 2 * steps_per_epoch
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
    # The epoch means too: the checkpoint carried epoch 1's running loss sum across the kill.
    assert before["train/loss_epoch"] + after["train/loss_epoch"] == straight["train/loss_epoch"]


def test_two_process_ddp_fit_killed_mid_epoch_resumes_bitwise(ddp_fit, tmp_path):
    """Both ranks die by SIGKILL at step 7 (the job torn down); resuming on 2 processes equals ``ddp_fit``."""
    steps_per_epoch = 4  # 253 users padded to 2 x 127, batches of 32
    config, environ = ddp_fit["config"], env(tmp_path, tmp_path / "resumed.db")
    killed = run(ddp_args(config, tmp_path / "ckpt", "--trainer.callbacks+=tests.distributed.helpers.KillAtStep",
                          "--trainer.callbacks.init_args.step=7"), cwd=tmp_path, environ=environ, timeout=150)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}\n{killed.stderr[-4000:]}"
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 6 and saved["epoch"] == 1  # two batches into the second epoch
    assert len(saved["callbacks"]["RNGStateCheckpoint"]["ranks"]) == 2

    resumed = run(ddp_args(config, tmp_path / "ckpt", "--ckpt_path=last"), cwd=tmp_path, environ=environ,
                  timeout=150)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-5000:]

    _assert_same_state(ddp_fit["ckpt"], tmp_path / "ckpt" / "last.ckpt", steps_per_epoch)
    final = [torch.load(path, weights_only=True)["callbacks"]["RNGStateCheckpoint"]["ranks"]
             for path in (ddp_fit["ckpt"], tmp_path / "ckpt" / "last.ckpt")]
    for straight_rank, resumed_rank in zip(*final, strict=True):  # every rank continued its own streams
        assert torch.equal(straight_rank["torch"], resumed_rank["torch"])
        assert torch.equal(straight_rank["modules"]["loss_fn"]["state"], resumed_rank["modules"]["loss_fn"]["state"])

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'resumed.db'}")
    runs = client.search_runs([client.get_experiment_by_name("distributed-test").experiment_id],
                              order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["RUNNING", "FINISHED"]  # the killed run never closed
    straight = _metrics(ddp_fit["db"])
    before, after = (_metrics(tmp_path / "resumed.db", r.info.run_id) for r in runs)
    for key in ("val/ndcg_10", "val/hr_10", "val/mrr"):
        assert before[key] + after[key] == straight[key], key
    assert dict(straight["train/loss"]) == {**dict(before["train/loss"]), **dict(after["train/loss"])}
    assert len(before["train/loss"]) == 6 and len(after["train/loss"]) == 2
