"""Validate and test one checkpoint on ``devices`` CPU processes (DDP, gloo); rank 0 writes the metrics.

Usage: ``python tests/distributed/evaluate.py CONFIG CKPT DEVICES OUT_JSON``.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import lightning as L
import yaml
from jsonargparse import ArgumentParser

from gr_lightning.data import RetrievalDataModule
from gr_lightning.module import GRModule
from gr_lightning.zoo.hstu import HSTU


def main(config_path: str, ckpt: str, devices: int, out: str) -> None:
    """Evaluate ``ckpt`` with the data and model of ``config_path``."""
    config = yaml.safe_load(Path(config_path).read_text())
    parser = ArgumentParser()
    parser.add_subclass_arguments(RetrievalDataModule, "data")
    data = parser.instantiate_classes(parser.parse_object({"data": config["data"]})).data
    backbone = config["model"]["init_args"]["backbone"]
    assert backbone["class_path"].endswith("HSTU"), backbone["class_path"]
    model = GRModule.load_from_checkpoint(ckpt, backbone=partial(HSTU, **backbone["init_args"]), weights_only=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=False, enable_progress_bar=False, enable_model_summary=False)
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    if trainer.is_global_zero:
        Path(out).write_text(json.dumps({"world_size": trainer.world_size, **val, **test}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
