"""MLflow tracking: the default logger and what every run records.

Runs go to ``MLFLOW_TRACKING_URI`` when it is set, else to the SQLite store ``sqlite:///mlruns.db`` in
the working directory (the SQL store needs the full ``mlflow`` package, not ``mlflow-skinny``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

DEFAULT_EXPERIMENT = "gr-lightning"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite store in the current working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


class GRMLFlowLogger(MLFlowLogger):
    """MLFlowLogger whose tracking URI is resolved when the run starts, not when the config is written.

    Args:
        experiment_name: MLflow experiment.
        run_name: Optional run name.
        tracking_uri: Store URI; None means :func:`default_tracking_uri`.
        tags: Extra run tags.
        artifact_location: Where a newly created experiment keeps artifacts (default: ``./mlartifacts``
            beside the store).
        run_id: Resume an existing run.

    """

    def __init__(
        self,
        experiment_name: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        artifact_location: str | None = None,
        run_id: str | None = None,
    ) -> None:
        uri = tracking_uri or default_tracking_uri()
        if artifact_location is None and uri.startswith("sqlite:///"):
            artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        super().__init__(experiment_name=experiment_name, run_name=run_name, tracking_uri=uri, tags=tags,
                         artifact_location=artifact_location, run_id=run_id, log_model=False)


def _mlflow_loggers(trainer: Trainer) -> list[MLFlowLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class MLflowConfigCallback(SaveConfigCallback):
    """Record the resolved CLI config in the run: every leaf as a param, the YAML as an artifact.

    Loggers with a local folder (TensorBoard, CSV) also get ``config.yaml`` there, as Lightning does.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Save beside the logs only when the logger has a folder (an SQL-backed MLflow run has none)."""
        self.save_to_log_dir = trainer.log_dir is not None
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Log the config to every MLflow logger (rank zero only, once per run)."""
        loggers = _mlflow_loggers(trainer)
        if not loggers or not trainer.is_global_zero:
            return
        text = self.parser.dump(self.config, skip_none=False)
        as_dict = self.parser.dump(self.config, format="json_indented", skip_none=False)
        params = {k: v for k, v in _flatten(json.loads(as_dict)).items() if not k.startswith("config")}
        for logger in loggers:
            # A resumed run (``trainer.logger.init_args.run_id``) already holds the config; MLflow refuses to
            # change a logged param, so only new keys are added and the resumed config gets its own artifact.
            logged = logger.experiment.get_run(logger.run_id).data.params
            fresh = {k: v for k, v in params.items() if k not in logged}
            if fresh:
                logger.log_hyperparams(fresh)
            logger.experiment.log_text(logger.run_id, text, "config-resumed.yaml" if logged else "config.yaml")


class BestCheckpointTag(Callback):
    """Tag the MLflow run with the best checkpoint's path and its monitored score when fitting ends."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the tags (rank zero)."""
        ckpt = trainer.checkpoint_callback
        if not isinstance(ckpt, ModelCheckpoint) or not ckpt.best_model_path or not trainer.is_global_zero:
            return
        for logger in _mlflow_loggers(trainer):
            logger.experiment.set_tag(logger.run_id, "best_checkpoint", str(Path(ckpt.best_model_path).resolve()))
            if ckpt.best_model_score is not None:
                logger.experiment.set_tag(logger.run_id, f"best_{ckpt.monitor}", f"{float(ckpt.best_model_score):.6f}")
