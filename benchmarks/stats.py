"""Statistics of a benchmark: latency summaries, timing loops, ratios, accuracy and macro F1.

numpy only, so it runs on a device with just the edge extra. Percentiles use numpy's default
("linear" interpolation between the two nearest ranks), the same as LiteRT's benchmark_model
reports them; all latencies are in milliseconds.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

from hemaedge.edge.metrics_runtime import percentiles

PERCENTILES = (50, 90, 99)


def latency_summary(samples_s: Sequence[float]) -> dict:
    """Summary of per-run times given in seconds -> milliseconds: n, mean, std, min, p50/p90/p99, max."""
    x = np.asarray(samples_s, dtype=np.float64) * 1e3
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("latency samples must be a non-empty list of finite numbers")
    pct = percentiles(x, PERCENTILES, digits=None, unit="_ms")
    return {"n": int(x.size), "mean_ms": pct["mean_ms"], "std_ms": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "min_ms": float(x.min()), **{f"p{p}_ms": pct[f"p{p}_ms"] for p in PERCENTILES}, "max_ms": float(x.max())}


def time_runs(fn: Callable[[], object], *, warmup: int = 10, min_runs: int = 100,
              min_seconds: float = 1.0, max_seconds: float = 10.0, floor_runs: int = 10,
              clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Call `fn` `warmup` times untimed, then time single calls (seconds each).

    Stops once at least `min_runs` runs AND `min_seconds` have passed (LiteRT benchmark_model
    style: many runs for fast models, enough time for stable numbers), or after `max_seconds`
    once `floor_runs` runs are in (slow models: "at least 100 runs or 10 s").
    """
    for _ in range(max(0, warmup)):
        fn()
    samples: list[float] = []
    start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if len(samples) >= min_runs and elapsed >= min_seconds:
            break
        if elapsed >= max_seconds and len(samples) >= floor_runs:
            break
    return samples


def throughput(fn: Callable[[], object], batch: int, *, min_runs: int = 5, min_seconds: float = 1.0,
               max_seconds: float = 10.0, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Images per second of `fn` that classifies `batch` images per call (one untimed warm-up)."""
    fn()
    runs = time_runs(fn, warmup=0, min_runs=min_runs, min_seconds=min_seconds,
                     max_seconds=max_seconds, floor_runs=2, clock=clock)
    total = float(np.sum(runs))
    ips = batch * len(runs) / total if total > 0 else math.inf
    return {"batch": int(batch), "runs": len(runs), "images_per_s": float(ips),
            "ms_per_image": float(1e3 / ips) if ips > 0 else None}


def ratio(value, reference) -> float | None:
    """value / reference, or None when either is missing or the reference is not positive."""
    if value is None or reference is None:
        return None
    value, reference = float(value), float(reference)
    if not (math.isfinite(value) and math.isfinite(reference)) or reference <= 0:
        return None
    return value / reference


def latency_ratios(row_latency: dict | None, base_latency: dict | None) -> dict | None:
    """Each latency statistic of a row divided by the same statistic of the baseline (lower = faster)."""
    if not row_latency or not base_latency:
        return None
    keys = ("mean_ms", "p50_ms", "p90_ms", "p99_ms")
    return {k.replace("_ms", ""): ratio(row_latency.get(k), base_latency.get(k)) for k in keys}


def classification_scores(y_true, y_pred, n_classes: int) -> dict:
    """Accuracy and macro F1 (the unweighted mean of per-class F1; a class never predicted
    and never present scores 0, as scikit-learn's f1_score(average='macro', zero_division=0))."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError("y_true and y_pred must be non-empty and of equal length")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    pred_n = cm.sum(axis=0).astype(np.float64)
    true_n = cm.sum(axis=1).astype(np.float64)
    denom = pred_n + true_n
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"n": int(y_true.size), "accuracy": float(tp.sum() / y_true.size), "macro_f1": float(f1.mean())}


def downsample(samples: Sequence[float], k: int = 500) -> list[float]:
    """At most k evenly spaced values of the sorted samples (keeps the distribution's shape for plots)."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    if x.size <= k:
        return [float(v) for v in x]
    idx = np.linspace(0, x.size - 1, k).round().astype(int)
    return [float(v) for v in x[idx]]
