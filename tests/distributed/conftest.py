"""The 2-process DDP fit that several distributed tests read (run once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.helpers import ddp_args, env, run, tiny_config, write_config


@pytest.fixture(scope="session")
def ddp_fit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fit the tiny model with ``trainer.strategy=ddp`` on 2 CPU processes through the real CLI, uninterrupted."""
    tmp = tmp_path_factory.mktemp("ddp")
    config = write_config(tmp / "tiny.yaml", tiny_config(tmp / "cache"))
    proc = run(ddp_args(config, tmp / "ckpt"), cwd=tmp, environ=env(tmp, tmp / "mlruns.db"), timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"tmp": tmp, "config": config, "ckpt": tmp / "ckpt" / "last.ckpt", "db": tmp / "mlruns.db"}
