"""Host time per training step that Lightning's loop and ``self.log`` add, on a model that does nearly nothing.

A graphed HSTU step is launched in a few milliseconds, so the host's per-step work outside the model is a
share of the step. This script times, per step on the host (no GPU needed; on a GPU machine it measures that
host's CPU):

- a bare loop (forward, backward, AdamW step) over the same batches;
- ``Trainer.fit`` of the same model, calling ``self.log`` 0, 1, 2 or 6 times per step (6: what
  ``Throughput`` logged every step before it logged only on logging steps);
- ``Trainer.fit`` with ``TrainingLossLogging`` (``self.log`` only on logging steps and per epoch).

    python benchmarks/lightning_overhead.py --out benchmarks/results/lightning_overhead_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import lightning as L
import torch
from torch.utils.data import DataLoader

from gr_lightning.loss_log import TrainingLossLogging


class _Tiny(TrainingLossLogging, L.LightningModule):
    """A 4 -> 1 linear model; ``logs`` calls of ``self.log`` per step, or ``None`` for ``log_training_loss``."""

    def __init__(self, logs: int | None) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.logs = logs

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.linear(batch).square().mean()
        if self.logs is None:
            self.log_training_loss(loss, batch.shape[0])
        for k in range(self.logs or 0):
            self.log(f"train/metric{k}", loss, batch_size=batch.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters())


def _fit_ms(logs: int | None, batches: list[torch.Tensor]) -> float:
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=50)
    model = _Tiny(logs)
    start = time.perf_counter()
    trainer.fit(model, DataLoader(batches, batch_size=None))
    return (time.perf_counter() - start) / len(batches) * 1e3


def _bare_ms(batches: list[torch.Tensor]) -> float:
    model = _Tiny(0)
    opt = torch.optim.AdamW(model.parameters())
    start = time.perf_counter()
    for b in batches:
        model.linear(b).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - start) / len(batches) * 1e3


def _cpu_name() -> str:
    """The CPU's model name where Linux tells it, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000, help="steps per timed run (one epoch)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median reported)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    batches = [torch.randn(8, 4) for _ in range(args.steps)]
    variants = {"bare_loop": lambda: _bare_ms(batches)}
    variants |= {f"fit_{n}_logs_per_step": (lambda n=n: _fit_ms(n, batches)) for n in (0, 1, 2, 6)}
    variants["fit_log_training_loss"] = lambda: _fit_ms(None, batches)
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drifts of the machine hit every variant alike
        for name, fn in variants.items():
            runs[name].append(fn())
    result = {"benchmark": "lightning_overhead", "date": date.today().isoformat(),
              "cpu": _cpu_name(), "python": platform.python_version(),
              "torch": torch.__version__, "lightning": L.__version__, "steps": args.steps,
              "repeats": args.repeats, "host_ms_per_step_median": {k: statistics.median(v) for k, v in runs.items()},
              "host_ms_per_step_runs": runs}
    for name, ms in result["host_ms_per_step_median"].items():
        print(f"{name:28} {ms:7.3f} ms/step")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
