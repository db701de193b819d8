"""DDP on CPU (gloo, 2 processes): a tiny HSTU fits, and evaluating one checkpoint on 1 or 2 processes gives
the same metrics (every user ranked exactly once, sums and counts reduced exactly). The user count is odd,
so a DistributedSampler-style padded evaluation would rank one user twice and fail the comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gr_lightning.nn.retrieval import stream_seed
from tests.distributed.helpers import REPO_ROOT, env, run


def _evaluate(ddp_fit: dict[str, Path], devices: int) -> dict[str, float]:
    out = ddp_fit["tmp"] / f"metrics_{devices}.json"
    proc = run([str(REPO_ROOT / "tests" / "distributed" / "evaluate.py"), str(ddp_fit["config"]), str(ddp_fit["ckpt"]),
                str(devices), str(out)], cwd=ddp_fit["tmp"], environ=env(ddp_fit["tmp"], ddp_fit["db"]), timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


def test_ddp_fits_a_tiny_model(ddp_fit):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ddp_fit['db']}")
    run_ = client.search_runs([client.get_experiment_by_name("distributed-test").experiment_id])[0]
    assert run_.info.status == "FINISHED"
    loss = [m.value for m in client.get_metric_history(run_.info.run_id, "train/loss")]
    assert len(loss) == 2 * 4  # 253 users, padded to 2 x 127, in batches of 32: 4 steps per epoch, 2 epochs
    assert sum(loss[-2:]) < sum(loss[:2])
    assert run_.data.metrics["val/hr_10"] > 0.1  # a random ranking of 200 items would give about 0.05
    ckpt = torch.load(ddp_fit["ckpt"], weights_only=False)
    assert ckpt["global_step"] == 8 and ckpt["epoch"] == 1


def test_one_and_two_processes_give_identical_metrics(ddp_fit):
    one, two = _evaluate(ddp_fit, 1), _evaluate(ddp_fit, 2)
    assert one.pop("world_size") == 1 and two.pop("world_size") == 2
    assert set(one) >= {"val/hr_10", "val/ndcg_10", "val/mrr", "test/hr_200", "test/ndcg_50"}
    assert one == two  # exact: float equality, not approximate


def test_each_rank_draws_its_own_negatives(ddp_fit):
    saved = torch.load(ddp_fit["ckpt"], weights_only=True)["callbacks"]["RNGStateCheckpoint"]["ranks"]
    streams = [rank["modules"]["loss_fn"] for rank in saved]
    assert [s["seed"] for s in streams] == [stream_seed(0, 0), stream_seed(0, 1)]  # seed_everything: 0
    draws = []
    for stream in streams:
        generator = torch.Generator()
        generator.set_state(stream["state"])
        draws.append(torch.randint(1, 201, (100, 16), generator=generator))  # each rank's next negatives
    assert (draws[0] == draws[1]).float().mean() < 0.05  # independent streams (chance: 1/200 per draw)
