"""Loss-curve comparison for ``scale_out.py --sweep``: is FSDP's curve within the noise of DDP's?

:func:`curve_gap` measures two curves' distance (raw, smoothed, tail); :func:`noise_references` measures
how far DDP's curve moves under perturbations unrelated to sharding (a bucket-order rerun, bf16 vs fp32);
:func:`compare` sets FSDP's gap to DDP against those references and gives a verdict naming its criterion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Steps of the moving average and of the tail mean in loss-curve comparisons.
SMOOTH_WINDOW = 10
#: The loss-gap statistics every comparison reports and checks against each noise reference.
GAP_STATISTICS = ("max_abs", "mean_abs", "smoothed_max_abs", "tail_abs")
#: The statistic the verdict uses: the mean over all steps, not one step's extreme in a chaotic stretch.
VERDICT_STATISTIC = "mean_abs"


def curve_gap(a: list[float], b: list[float], window: int = SMOOTH_WINDOW) -> dict[str, Any]:
    """How far two loss curves are apart, raw and smoothed.

    Args:
        a: One loss curve.
        b: The other, as long.
        window: Steps of the moving average and of the tail mean (shortened to the curve's length).

    Returns:
        ``max_abs``, ``mean_abs`` and ``max_rel`` of the per-step difference; ``smoothed_max_abs``, the
        largest difference of the two curves' ``window``-step moving averages; ``tail_abs``, the difference
        of their means over the last ``window`` steps; ``first_differing_step``, the first step whose
        losses are not bitwise equal (None: identical curves); and ``smoothing_window``.

    Raises:
        ValueError: The curves differ in length or are empty.

    """
    if len(a) != len(b) or not a:
        raise ValueError(f"loss curves of different or zero length: {len(a)} vs {len(b)}")
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = np.abs(x - y)
    w = min(window, x.size)
    box = np.full(w, 1.0 / w)
    smoothed = np.abs(np.convolve(x, box, mode="valid") - np.convolve(y, box, mode="valid"))  # (n - w + 1,)
    differing = np.flatnonzero(x != y)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "max_rel": float((diff / np.maximum(np.abs(x), 1e-12)).max()),
            "smoothed_max_abs": float(smoothed.max()), "tail_abs": float(abs(x[-w:].mean() - y[-w:].mean())),
            "first_differing_step": int(differing[0]) if differing.size else None, "smoothing_window": w}


def _key(run: dict[str, Any]) -> tuple[str, str, int, str]:
    config = run["config"]
    return config["strategy"], config["precision"], config["devices"], config.get("variant", "main")


def _noise(by_key: dict[tuple[str, str, int, str], dict[str, Any]], precision: str,
           devices: int) -> dict[str, dict[str, Any]]:
    """The noise references at one precision and device count: whichever of the two this sweep measured."""
    refs = {}
    ddp, rerun = by_key.get(("ddp", precision, devices, "main")), by_key.get(("ddp", precision, devices, "reorder"))
    if ddp is not None and rerun is not None:
        refs["reorder"] = curve_gap(ddp["summary"]["loss_curve"], rerun["summary"]["loss_curve"])
    bf16, fp32 = by_key.get(("ddp", "bf16-mixed", devices, "main")), by_key.get(("ddp", "32-true", devices, "main"))
    if bf16 is not None and fp32 is not None:
        refs["bf16_vs_fp32"] = curve_gap(bf16["summary"]["loss_curve"], fp32["summary"]["loss_curve"])
    return refs


def noise_references(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per precision and device count: how far DDP's loss curve moves under perturbations unrelated to sharding.

    ``reorder``: DDP against its rerun with other bucket boundaries (same seed, data and math). Over more
    than 2 ranks the boundaries change where NCCL's ring starts each element's sum, so the float
    summation order; over 2 ranks ``a + b`` is commutative and over 1 there is no sum, so there it
    measures only the run-to-run nondeterminism of atomic-add kernels (zero if training is bitwise
    reproducible). ``bf16_vs_fp32``: DDP's bf16-mixed against its 32-true curve, a much larger per-step
    perturbation. Training is chaotic, so after enough steps any perturbation grows to a similar gap.
    """
    by_key = {_key(r): r for r in runs}
    out = []
    for precision, devices in sorted({(p, d) for s, p, d, v in by_key if s == "ddp" and v == "main"},
                                     key=lambda pd: (pd[1], pd[0])):
        refs = _noise(by_key, precision, devices)
        if refs:
            out.append({"devices": devices, "precision": precision, **refs})
    return out


def _verdict(gap: dict[str, Any], refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether ``gap`` is within the noise, saying which criterion decided, and every check besides."""
    checks = {name: {stat: gap[stat] <= ref[stat] for stat in GAP_STATISTICS} for name, ref in refs.items()}
    if not refs:
        return {"within_noise": None, "criterion": "none: this sweep measured no noise reference at this "
                "precision and device count", "checks": checks}
    # The widest band of the references measured: each is one draw of how far chaos alone moves the curve.
    name = max(refs, key=lambda n: refs[n][VERDICT_STATISTIC])
    band = refs[name][VERDICT_STATISTIC]
    verdict = {"within_noise": gap[VERDICT_STATISTIC] <= band,
               "criterion": f"{VERDICT_STATISTIC} (mean |loss gap| over all steps) of FSDP vs DDP <= that of the "
                            f"widest noise reference measured ({name}: {band:.4g})",
               "statistic": VERDICT_STATISTIC, "reference": name, "gap": gap[VERDICT_STATISTIC], "band": band,
               "ratio": gap[VERDICT_STATISTIC] / band if band else None, "checks": checks}
    if "reorder" in refs and refs["reorder"]["first_differing_step"] is None:
        verdict["note"] = ("DDP and its rerun are bitwise identical: training is reproducible here, so any FSDP "
                           "gap is a deterministic numerical difference, judged against bf16-vs-fp32's size")
    return verdict


def compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FSDP against DDP at each device count and precision: loss curves and per-GPU memory.

    FSDP's loss-curve gap to DDP is reported against the noise references of :func:`noise_references`
    at the same device count (``reorder_noise`` and ``bf16_noise``), by every statistic of
    :func:`curve_gap`. ``verdict`` decides by :data:`VERDICT_STATISTIC` against the widest reference
    and names it; ``verdict["checks"]`` holds every statistic against every reference.
    ``within_bf16_noise`` is the first criterion, kept for old readers: max gap <= DDP's bf16-vs-fp32
    max gap (one noisy extreme against another).
    """
    by_key = {_key(r): r for r in runs}
    out = []
    for (strategy, precision, devices, variant), fsdp in sorted(by_key.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        ddp = by_key.get(("ddp", precision, devices, "main"))
        if strategy != "fsdp" or variant != "main" or ddp is None:
            continue
        row: dict[str, Any] = {"devices": devices, "precision": precision,
                               "loss_gap": curve_gap(ddp["summary"]["loss_curve"], fsdp["summary"]["loss_curve"]),
                               "embedding_gib_per_gpu": {"ddp": ddp["summary"]["embedding_gib_per_gpu"],
                                                         "fsdp": fsdp["summary"]["embedding_gib_per_gpu"]},
                               "peak_allocated_gib_max": {"ddp": ddp["summary"]["peak_allocated_gib_max"],
                                                          "fsdp": fsdp["summary"]["peak_allocated_gib_max"]},
                               "samples_per_s": {"ddp": ddp["summary"]["samples_per_s"],
                                                 "fsdp": fsdp["summary"]["samples_per_s"]}}
        refs = _noise(by_key, precision, devices)
        if "bf16_vs_fp32" in refs:
            row["bf16_noise"] = refs["bf16_vs_fp32"]
            row["within_bf16_noise"] = row["loss_gap"]["max_abs"] <= refs["bf16_vs_fp32"]["max_abs"]
        if "reorder" in refs:
            row["reorder_noise"] = refs["reorder"]
        row["verdict"] = _verdict(row["loss_gap"], refs)
        out.append(row)
    return out
