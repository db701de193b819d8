"""Exploration helpers behind the notebooks in ``notebooks/``: MLflow runs, checkpoints, recommendations, biases.

Every function returns plain pandas DataFrames (or modules), so the notebooks only load, call and plot, and
the logic is tested in ``tests/test_analysis.py``. pandas is imported lazily (it ships with the ``dev`` and
``notebooks`` extras, not with the core package).
"""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd

    from gr_lightning.data import RetrievalDataModule
    from gr_lightning.module import GRModule

#: Params holding the backbone and the data source class paths (flattened config keys).
BACKBONE_PARAM = "model.init_args.backbone.class_path"
SOURCE_PARAM = "data.init_args.source.class_path"


def _short(class_path: str | None) -> str | None:
    return class_path.rsplit(".", 1)[-1] if class_path else None


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def runs_table(tracking_uri: str, experiment: str | None = None) -> pd.DataFrame:
    """One row per MLflow run: what was trained on what, and how well and fast.

    Args:
        tracking_uri: MLflow store, e.g. ``sqlite:///mlruns.db``.
        experiment: Only this experiment (by name); None means every experiment.

    Returns:
        Columns ``experiment``, ``run_id``, ``run_name``, ``status``, ``backbone`` (short class name),
        ``dataset`` (short source class name), one column per ``test/*`` metric, ``best_val_ndcg_10``
        (maximum over epochs), ``best_val_epoch``, ``epochs``, ``median_epoch_s`` and, when logged, the
        median of each ``throughput/*`` metric; ``best_checkpoint`` is the run's tag. Sorted by experiment,
        dataset, backbone.

    Raises:
        ValueError: ``experiment`` names no experiment of the store.

    """
    import pandas as pd

    client = _client(tracking_uri)
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ValueError(f"no experiment {experiment!r} in {tracking_uri}")
        experiments = [found]
    else:
        experiments = client.search_experiments()
    rows = []
    for exp in experiments:
        for run in client.search_runs([exp.experiment_id], max_results=10_000):
            params, metrics = run.data.params, run.data.metrics
            row: dict[str, Any] = {
                "experiment": exp.name,
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "backbone": _short(params.get(BACKBONE_PARAM)),
                "dataset": _short(params.get(SOURCE_PARAM)),
            }
            row.update({k: v for k, v in sorted(metrics.items()) if k.startswith("test/")})
            val = metric_history(tracking_uri, run.info.run_id, "val/ndcg_10", client=client)
            row["best_val_ndcg_10"] = float(val["value"].max()) if len(val) else math.nan
            row["best_val_epoch"] = int(val["value"].to_numpy().argmax()) if len(val) else None
            epoch_s = metric_history(tracking_uri, run.info.run_id, "time/epoch_s", client=client)
            row["epochs"] = len(epoch_s)
            row["median_epoch_s"] = float(epoch_s["value"].median()) if len(epoch_s) else math.nan
            for key in sorted(k for k in metrics if k.startswith("throughput/")):
                history = metric_history(tracking_uri, run.info.run_id, key, client=client)
                row[key] = float(history["value"].median())
            row["best_checkpoint"] = run.data.tags.get("best_checkpoint")
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.sort_values(["experiment", "dataset", "backbone", "run_name"], na_position="last").reset_index(
        drop=True
    )


def metric_history(tracking_uri: str, run_id: str, key: str, *, client: Any = None) -> pd.DataFrame:
    """Every logged value of one metric of one run, in step order.

    Args:
        tracking_uri: MLflow store.
        run_id: The run.
        key: Metric key, e.g. ``val/ndcg_10``.
        client: An existing ``MlflowClient`` to reuse (optional).

    Returns:
        Columns ``step``, ``value``, ``timestamp`` (datetime); empty when the metric was never logged.

    """
    import pandas as pd

    client = client or _client(tracking_uri)
    history = client.get_metric_history(run_id, key)
    frame = pd.DataFrame(
        {
            "step": [m.step for m in history],
            "value": [m.value for m in history],
            "timestamp": pd.to_datetime([m.timestamp for m in history], unit="ms"),
        }
    )
    return frame.sort_values(["step", "timestamp"], kind="stable").reset_index(drop=True)


def load_model(checkpoint_path: str | Path, map_location: str | torch.device = "cpu") -> GRModule:
    """Rebuild a :class:`~gr_lightning.module.GRModule` from a checkpoint written by the CLI, in eval mode.

    The checkpoint's hyperparameters are the config as given (``class_path`` + ``init_args`` for the backbone
    and optimizer); Lightning instantiates them through the CLI's instantiator.

    Args:
        checkpoint_path: A ``.ckpt`` file (e.g. a run's ``best_checkpoint`` tag).
        map_location: Device to load onto.

    Returns:
        The model with the checkpoint's weights, in eval mode.

    """
    from gr_lightning.cli import registry
    from gr_lightning.module import GRModule

    registry()  # plugins registered, so short backbone names resolve
    model = GRModule.load_from_checkpoint(str(checkpoint_path), map_location=map_location, weights_only=False)
    return model.eval()


def movie_titles(root: str | Path) -> pd.Series:
    """Movie titles of a MovieLens folder, by raw movie id.

    Reads ML-1M/10M/20M-style ``movies.dat`` (``id::title::genres``) or ML-100K ``u.item``
    (``id|title|...``), optionally gzipped; both are Latin-1.

    Args:
        root: The dataset folder.

    Returns:
        A Series of titles (``str``) indexed by the int64 raw movie id, named ``title``.

    Raises:
        FileNotFoundError: Neither file is in ``root``.

    """
    import pandas as pd

    root = Path(root)
    for name, sep in (("movies.dat", "::"), ("u.item", "|")):
        for path in (root / name, root / f"{name}.gz"):
            if path.is_file():
                raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
                ids, titles = [], []
                for line in io.StringIO(raw.decode("latin-1")):
                    line = line.rstrip("\r\n")
                    if not line:
                        continue
                    fields = line.split(sep)
                    ids.append(int(fields[0]))
                    titles.append(fields[1])
                return pd.Series(titles, index=pd.Index(np.asarray(ids, dtype=np.int64), name="item_id"),
                                 name="title")
    raise FileNotFoundError(f"no movies.dat(.gz) or u.item(.gz) in {root}")


def movielens_datamodule(root: str | Path, max_seq_len: int, cache_dir: str | None = None) -> RetrievalDataModule:
    """The retrieval DataModule of a local MovieLens folder (ML-1M if it has ``movies.dat``, else ML-100K).

    Args:
        root: The dataset folder (``ml-1m`` or ``ml-100k``).
        max_seq_len: Longest history, as the model was trained (``model.hparams.max_seq_len``).
        cache_dir: Preprocessing cache (default: the package's default).

    Returns:
        A set-up :class:`~gr_lightning.data.RetrievalDataModule`.

    """
    from gr_lightning.data import MovieLens1M, MovieLens100K, RetrievalDataModule

    root = Path(root)
    is_1m = any((root / n).is_file() for n in ("movies.dat", "movies.dat.gz"))
    source = MovieLens1M(root=str(root)) if is_1m else MovieLens100K(root=str(root))
    kwargs = {"cache_dir": cache_dir} if cache_dir is not None else {}
    dm = RetrievalDataModule(source, max_seq_len=max_seq_len, **kwargs)
    dm.setup("predict")
    return dm


@torch.no_grad()
def user_history_and_top_k(
    model: GRModule,
    datamodule: RetrievalDataModule,
    user_raw_id: Any,
    k: int = 10,
    titles: pd.Series | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One user's full history (the ``predict`` split) and the model's top-``k`` next items for it.

    Args:
        model: A trained GRModule (see :func:`load_model`).
        datamodule: The DataModule the model was trained on (same source, so the same dense ids).
        user_raw_id: The user's raw id in the source.
        k: Recommendations to return.
        titles: Optional titles by raw item id (see :func:`movie_titles`); adds a ``title`` column.

    Returns:
        ``(history, top_k)``: ``history`` has ``position``, ``item_id`` (raw), ``timestamp`` (datetime, from
        epoch seconds) and ``title``, oldest first; ``top_k`` has ``rank`` (1-based), ``item_id`` (raw),
        ``score`` (cosine) and ``title``. History items are excluded when the model filters history.

    Raises:
        KeyError: The user is unknown or has no history in the predict split.

    """
    import pandas as pd

    from gr_lightning.data import gather_batch

    user_ids = datamodule.user_raw_ids()
    matches = np.flatnonzero(user_ids == np.asarray(user_raw_id, dtype=user_ids.dtype))
    if matches.size == 0:
        raise KeyError(f"user {user_raw_id!r} is not in the data")
    split = datamodule.split("predict")
    rows = np.flatnonzero(np.asarray(split.users) == matches[0])
    if rows.size == 0:
        raise KeyError(f"user {user_raw_id!r} has too few events to be served")
    store = datamodule.store
    batch = gather_batch(store.items, store.timestamps, split, rows[:1])
    device = next(model.parameters()).device
    batch_in = batch.to(device) if hasattr(batch, "to") else batch
    was_training = model.training
    model.eval()
    try:
        predicted = model.predict_step(batch_in, 0)  # columns, one row per recommendation of this one user
        if model.predict_top_k < k:  # predict_top_k smaller than asked: rank again with a larger cut-off
            saved, model.predict_top_k = model.predict_top_k, k
            try:
                predicted = model.predict_step(batch_in, 0)
            finally:
                model.predict_top_k = saved
    finally:
        model.train(was_training)
    raw_items = datamodule.item_raw_ids()
    items = batch.items.cpu().numpy()
    history = pd.DataFrame(
        {
            "position": np.arange(items.size),
            "item_id": raw_items[items],
            "timestamp": pd.to_datetime(batch.timestamps.cpu().numpy(), unit="s"),
        }
    )
    top_items = predicted["item_id"][:k].cpu().numpy()
    top = pd.DataFrame(
        {
            "rank": np.arange(1, top_items.size + 1),
            "item_id": raw_items[top_items],
            "score": predicted["score"][:k].float().cpu().numpy(),
        }
    )
    if titles is not None:
        for frame in (history, top):
            frame["title"] = frame["item_id"].map(titles)
    return history, top


def attention_biases(model: GRModule) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The learned relative attention biases of every HSTU block.

    Args:
        model: A GRModule whose backbone has ``HSTUBlock`` layers (others give empty frames).

    Returns:
        ``(positional, temporal)``: ``positional`` has ``block``, ``distance`` (``i - j``, query minus key
        position; causal attention uses ``distance >= 0``) and ``bias``; ``temporal`` has ``block``,
        ``bucket``, ``lower_bound_s`` (smallest gap in seconds between the query's request time and the key's
        event that falls in the bucket; the last bucket also holds every longer gap) and ``bias``.

    """
    import pandas as pd

    from gr_lightning.ops.pytorch.hstu_attention import TIME_BUCKET_WIDTH
    from gr_lightning.zoo.hstu import HSTUBlock

    positional, temporal = [], []
    blocks = [m for m in model.modules() if isinstance(m, HSTUBlock)]
    for index, block in enumerate(blocks):
        if block.pos_bias is not None:
            table = block.pos_bias.detach().float().cpu().numpy()
            n = (table.size + 1) // 2
            positional.append(pd.DataFrame({"block": index, "distance": np.arange(table.size) - (n - 1),
                                            "bias": table}))
        if block.time_bias is not None:
            table = block.time_bias.detach().float().cpu().numpy()
            buckets = np.arange(table.size)
            lower = np.where(buckets == 0, 0.0, np.exp(buckets * TIME_BUCKET_WIDTH))
            temporal.append(pd.DataFrame({"block": index, "bucket": buckets, "lower_bound_s": lower, "bias": table}))
    empty_p = pd.DataFrame({"block": [], "distance": [], "bias": []})
    empty_t = pd.DataFrame({"block": [], "bucket": [], "lower_bound_s": [], "bias": []})
    return (
        pd.concat(positional, ignore_index=True) if positional else empty_p,
        pd.concat(temporal, ignore_index=True) if temporal else empty_t,
    )


def kernel_benchmark_frame(path: str | Path) -> pd.DataFrame:
    """Tidy frame of an attention benchmark JSON (``benchmarks/results/attention_*.json``).

    Args:
        path: The JSON file written by ``benchmarks/bench_attention.py``.

    Returns:
        One row per (shape, variant) that was measured: ``device``, ``dtype``, ``shape`` (``BxN``), ``B``,
        ``N``, ``variant``, ``fwd_ms``, ``fwd_tflops``, ``fwd_bwd_ms``, ``fwd_bwd_tflops``. Shapes or
        variants that were skipped are left out. Sorted by N, then variant.

    """
    import pandas as pd

    data = json.loads(Path(path).read_text())
    rows = []
    for shape in data.get("shapes", []):
        batch, _, length = str(shape["shape"]).partition("x")
        for variant, m in shape.get("variants", {}).items():
            if "fwd_ms" not in m:
                continue
            rows.append(
                {
                    "device": data.get("device"),
                    "dtype": data.get("dtype"),
                    "shape": shape["shape"],
                    "B": int(shape.get("B", batch)),
                    "N": int(shape.get("N", length)),
                    "variant": variant,
                    "fwd_ms": float(m["fwd_ms"]),
                    "fwd_tflops": float(m["fwd_tflops"]),
                    "fwd_bwd_ms": float(m["fwd_bwd_ms"]) if "fwd_bwd_ms" in m else math.nan,
                    "fwd_bwd_tflops": float(m["fwd_bwd_tflops"]) if "fwd_bwd_tflops" in m else math.nan,
                }
            )
    columns = ["device", "dtype", "shape", "B", "N", "variant", "fwd_ms", "fwd_tflops", "fwd_bwd_ms",
               "fwd_bwd_tflops"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["N", "B", "variant"]).reset_index(drop=True)
