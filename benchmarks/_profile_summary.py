"""Summary of a ``torch.profiler`` window for ``scale_out.py --profile-steps``: where each step's time went.

:func:`profile_breakdown` ranks ops and kernels by self device (or CPU) time per step, and from the device
activities' intervals derives busy and idle GPU time, the NCCL share of kernel time, and the NCCL time that
no compute kernel overlaps (communication the step waited for).
"""

from __future__ import annotations

import math
from typing import Any

from torch.autograd import DeviceType


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``[start, end)`` intervals: kernels overlapping on several streams count once.

    Hand-written (a sort and a sweep): neither torch.profiler nor numpy offers an interval union.
    """
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


#: Kineto's names of the device activities that occupy the GPU (not annotation spans or CUDA_SYNC waits).
_DEVICE_WORK = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
#: CUDA_SYNC records, recognised by name where torch's events do not carry their kineto activity type.
_SYNC_NAMES = frozenset({"Context Sync", "Stream Sync", "Event Sync", "Stream Wait Event"})


def _is_device_activity(event: Any) -> bool:
    """A kernel, memcpy or memset on the device; not a GPU-side span of a ``record_function`` annotation."""
    if event.device_type == DeviceType.CPU or event.is_user_annotation:
        return False
    kind = getattr(event, "activity_type", None)  # FunctionEvent has it in newer torch only
    return kind in _DEVICE_WORK if kind else event.name not in _SYNC_NAMES


def profile_breakdown(events: Any, wall_s: float, steps: int, on_device: bool, top: int = 25) -> dict[str, Any]:
    """Where ``steps`` profiled steps spent their ``wall_s`` seconds, per step, from ``torch.profiler`` events.

    Args:
        events: ``profiler.events()`` of the profiled window.
        wall_s: Host wall time of the window, measured around it after synchronising the device.
        steps: Steps in the window.
        on_device: CUDA activities were recorded: rank ops and kernels by self device time (else by self CPU
            time, and no device section).
        top: Rows to keep in each table.

    Returns:
        ``wall_ms_per_step``, ``ranked_by``, ``top_ops`` (CPU-side ops: calls per step, self device and self
        CPU ms per step, ``share`` = the ranked time over the step's wall time), ``top_kernels`` (device
        activities by kernel name) and ``device`` (None on CPU): kernel time, busy and idle time, NCCL share
        and NCCL time that no other device activity overlaps.

    """
    per_step = 1e-3 / steps  # profiler microseconds over the window -> milliseconds per step
    wall_ms = wall_s * 1e3 / steps
    ranked = "self_device_time_total" if on_device else "self_cpu_time_total"
    ops = [a for a in events.key_averages() if a.device_type == DeviceType.CPU]
    ops.sort(key=lambda a: getattr(a, ranked), reverse=True)
    top_ops = [{"name": a.key[:120], "calls_per_step": a.count / steps,
                "device_ms_per_step": a.self_device_time_total * per_step if on_device else None,
                "cpu_ms_per_step": a.self_cpu_time_total * per_step,
                "share": getattr(a, ranked) * per_step / wall_ms} for a in ops[:top]]
    result: dict[str, Any] = {"steps": steps, "wall_ms_per_step": wall_ms,
                              "ranked_by": "self_device_time" if on_device else "self_cpu_time",
                              "top_ops": top_ops, "top_kernels": [], "device": None}
    if not on_device:
        return result
    activities = [e for e in events if _is_device_activity(e)]
    kernels: dict[str, list[float]] = {}
    for e in activities:
        kernels.setdefault(e.name, []).append(e.time_range.end - e.time_range.start)
    ordered = sorted(kernels.items(), key=lambda kv: sum(kv[1]), reverse=True)
    result["top_kernels"] = [{"name": name[:120], "calls_per_step": len(d) / steps,
                              "device_ms_per_step": sum(d) * per_step, "share": sum(d) * per_step / wall_ms}
                             for name, d in ordered[:top]]
    spans = [(e.time_range.start, e.time_range.end) for e in activities]
    compute = [(e.time_range.start, e.time_range.end) for e in activities if "nccl" not in e.name.lower()]
    kernel_us = sum(end - start for start, end in spans)
    nccl_us = kernel_us - sum(end - start for start, end in compute)
    busy_us = _union_length(spans)
    busy_ms = busy_us * per_step
    # GPU idle per step = host wall time of the window (device synchronised at both ends, so every device
    # activity of these steps lies inside it) minus the time at least one kernel/memcpy/memset ran on any
    # stream (union of their intervals on the device clock). Only durations are compared, never timestamps
    # of the two clocks. NCCL kernels count as busy while they spin waiting for a peer; "nccl_exposed" is
    # the time they ran with nothing else on the device: communication the step waited for.
    result["device"] = {
        "kernel_ms_per_step": kernel_us * per_step,
        "busy_ms_per_step": busy_ms,
        "idle_ms_per_step": max(wall_ms - busy_ms, 0.0),
        "idle_share": max(wall_ms - busy_ms, 0.0) / wall_ms,
        "nccl_ms_per_step": nccl_us * per_step,
        "nccl_share": nccl_us / kernel_us if kernel_us else 0.0,
        "nccl_exposed_ms_per_step": (busy_us - _union_length(compute)) * per_step,
    }
    return result
