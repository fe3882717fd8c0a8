"""Run-time measurements: stage latencies, percentiles, resident memory, start-up time."""
from __future__ import annotations

import time

import numpy as np
import psutil

from hemaedge.edge.machine import describe_machine

STAGES = ("capture", "segment", "preprocess", "inference", "total")


def percentiles(values, qs=(50, 90, 99), digits: int | None = 3, unit: str = "") -> dict:
    """p50/p90/p99 (numpy's default linear interpolation, as LiteRT's benchmark_model) and the
    mean of `values`, rounded to `digits` (None: unrounded); None for each when there are no values.

    `unit` ends every key: the run summary says "p50", the benchmark schema "p50_ms".
    """
    keys = [f"p{q}{unit}" for q in qs] + [f"mean{unit}"]
    if not len(values):
        return dict.fromkeys(keys)
    arr = np.asarray(values, dtype=np.float64)
    vals = [float(v) for v in np.percentile(arr, qs)] + [float(arr.mean())]
    return {k: (v if digits is None else round(v, digits)) for k, v in zip(keys, vals)}


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (the kernel's high-water mark), MB of 10^6
    bytes; None where the platform keeps none."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * (1 if sys.platform == "darwin" else 1024) / 1e6  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):  # Windows: the working-set peak
        return getattr(psutil.Process().memory_info(), "peak_wset", 0) / 1e6 or None


class MemoryMeter:
    """Current and peak resident memory of this process (MB).

    Peak comes from the kernel's high-water mark (getrusage) where it exists, so a spike
    between samples is not missed; otherwise from the largest sample taken.
    """

    def __init__(self):
        self.proc = psutil.Process()
        self.sampled_peak = 0

    def current_mb(self) -> float:
        rss = self.proc.memory_info().rss
        self.sampled_peak = max(self.sampled_peak, rss)
        return rss / 1e6

    def peak_mb(self) -> float:
        return max(self.sampled_peak / 1e6, peak_rss_mb() or 0.0)


def seconds_since_process_start() -> float:
    """Wall time since this process was created (start-up time to a result)."""
    try:
        return time.time() - psutil.Process().create_time()
    except psutil.Error:
        return float("nan")


def machine_info() -> dict:
    """Where a run happened (the same description the benchmark tables carry)."""
    return describe_machine()
