"""Run-time measurements: stage latencies, percentiles, resident memory, start-up time."""
from __future__ import annotations

import time

import numpy as np
import psutil

from hemaedge.edge.machine import describe_machine

STAGES = ("capture", "segment", "preprocess", "inference", "total")


def percentiles(values, qs=(50, 90, 99)) -> dict:
    if not len(values):
        return {f"p{q}": None for q in qs} | {"mean": None}
    arr = np.asarray(values, dtype=np.float64)
    out = {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs}
    out["mean"] = round(float(arr.mean()), 3)
    return out


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
        peak = self.sampled_peak
        try:
            import resource
            import sys

            ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = max(peak, ru if sys.platform == "darwin" else ru * 1024)
        except (ImportError, OSError):
            pass
        return peak / 1e6


def seconds_since_process_start() -> float:
    """Wall time since this process was created (start-up time to a result)."""
    try:
        return time.time() - psutil.Process().create_time()
    except psutil.Error:
        return float("nan")


def machine_info() -> dict:
    """Where a run happened (the same description the benchmark tables carry)."""
    return describe_machine()
