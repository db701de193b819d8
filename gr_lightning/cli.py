"""The ``gr-lightning`` command: LightningCLI for fit/validate/test/predict, plus ``zoo`` and ``export-embeddings``.

``gr-lightning fit --config conf/demo.yaml`` trains, validates every epoch, keeps the checkpoint with
the best validation NDCG@10 and then tests that checkpoint, all in one MLflow run.
"""

from __future__ import annotations

import os
import sys
import warnings

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    RichModelSummary,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from rich.console import Console
from rich.table import Table

from gr_lightning.callbacks import EpochTimer, Throughput
from gr_lightning.checkpointing import RNGStateCheckpoint
from gr_lightning.prediction import PredictionWriter
from gr_lightning.tracking import BestCheckpointTag, MLflowConfigCallback
from gr_lightning.zoo import registry

#: The metric that selects the checkpoint reported on the test split.
MONITOR = "val/ndcg_10"


class GRLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults, argument links and test-after-fit."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link data-derived sizes into the model and register the always-on callbacks."""
        parser.link_arguments("data.num_items", "model.init_args.num_items", apply_on="instantiate")
        parser.link_arguments("data.max_seq_len", "model.init_args.max_seq_len", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": MONITOR,
            "checkpoint.mode": "max",
            "checkpoint.filename": "epoch{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
            "checkpoint.save_last": True,
            "trainer.logger": {"class_path": "gr_lightning.tracking.GRMLFlowLogger"},
            "trainer.default_root_dir": "outputs",
        })
        # Scale-out: atomic checkpoint writes (a YAML `trainer.plugins` list replaces it) and throughput/MFU
        # logging (`throughput.peak_flops` overrides the device's peak).
        parser.set_defaults({"trainer.plugins": [{"class_path": "gr_lightning.checkpointing.AtomicCheckpointIO"}]})
        parser.add_lightning_class_args(Throughput, "throughput")
        # Predictions stream to a file (the writer acts only in `predict`); nothing is kept in memory.
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        if "return_predictions" in {action.dest for action in parser._actions}:
            parser.set_defaults({"return_predictions": False})
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="After fit, test the best-validation checkpoint in the same run.")
        parser.add_argument("--rich", type=bool, default=True,
                            help="Rich progress bar and model summary (turn off for plain logs).")

    def before_instantiate_classes(self) -> None:
        """Add the callbacks every run gets (progress, summary, timing, MLflow tags)."""
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        self._rich = bool(config.get("rich", True))

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        extra = [EpochTimer(), RNGStateCheckpoint(), BestCheckpointTag(), LearningRateMonitor(logging_interval="epoch")]
        if self._rich:
            extra += [RichProgressBar(leave=True), RichModelSummary(max_depth=2)]
        return super()._instantiate_trainer(config, [*callbacks, *extra])

    def after_fit(self) -> None:
        """Test the best-validation checkpoint (or the final weights when none was saved)."""
        if not self.config[self.subcommand].get("test_after_fit", True) or self.trainer.interrupted:
            return
        ckpt = self.trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if isinstance(ckpt, ModelCheckpoint) else ""
        if not best:
            warnings.warn("no best checkpoint was saved; testing the final weights", stacklevel=1)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def print_zoo(console: Console | None = None) -> None:
    """Print the registered backbones as a table."""
    table = Table(title="gr-lightning zoo (entry-point group gr_lightning.zoo)")
    table.add_column("name", style="bold")
    table.add_column("class")
    table.add_column("description")
    for name, cls in sorted(registry().items()):
        table.add_row(name, f"{cls.__module__}.{cls.__qualname__}", cls.description)
    (console or Console()).print(table)


def build_cli(args: list[str] | None, run: bool = True) -> GRLightningCLI:
    """The LightningCLI of ``gr-lightning``; ``run=False`` only builds the model, data and trainer from ``args``."""
    registry()  # import every plugin so YAML can name backbones by class name
    return GRLightningCLI(
        LightningModule,  # GRModule (retrieval) or RankingModule (ranking), by class_path
        subclass_mode_model=True,
        save_config_callback=MLflowConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf",
                       "epilog": "Also: 'gr-lightning zoo' lists the registered backbones; 'gr-lightning "
                                 "export-embeddings' writes item embeddings for an ANN index."},
        subclass_mode_data=True,
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``gr-lightning`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    # LightningCLI itself calls jsonargparse APIs that warn about their v5 deprecation; not actionable here.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    if args[:1] == ["zoo"]:
        print_zoo()
        return
    if args[:1] == ["export-embeddings"]:
        from gr_lightning.export import main as export_main

        export_main(args[1:])
        return
    build_cli(None if argv is None else args)


if __name__ == "__main__":
    main()
