"""Per-frame pipeline rows: the edge runtime's `CellClassifier` (segment every cell, crop,
classify all crops in one batch) on real whole-smear frames, timed stage by stage.

Runs inside the worker process (one process per row, like the per-model rows). The first
frame is a warm-up and is not counted; "read" is decoding the frame file (the capture stage
of a camera run).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hemaedge.train.data import IMAGE_SUFFIXES


def frame_files(path, limit: int | None) -> list[Path]:
    """Frames evenly picked from a folder of images (a BCCD root means its JPEGImages/)."""
    path = Path(path)
    if (path / "JPEGImages").is_dir():
        path = path / "JPEGImages"
    if not path.is_dir():
        raise FileNotFoundError(2, "no such frames folder", str(path))
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no image files")
    if limit and limit < len(files):
        idx = np.unique(np.linspace(0, len(files) - 1, int(limit)).round().astype(int))
        files = [files[i] for i in idx]
    return files


def run_pipeline(spec: dict, stage) -> dict:
    from hemaedge.benchmarks import stats
    from hemaedge.edge.metrics_runtime import peak_rss_mb
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.preprocess import read_image_rgb

    stage.name = "load"
    files = frame_files(spec["frames"], spec.get("frames_limit"))
    bundle = load_bundle(spec["bundle"])
    clf = CellClassifier(bundle, load_backend(bundle, threads=int(spec["threads"])))

    stage.name = "pipeline"
    clf.process(read_image_rgb(files[0]))  # warm-up: first-call allocations are not per-frame cost
    timings: dict[str, list[float]] = {}
    cells = 0
    t_start = time.perf_counter()
    for f in files:
        t0 = time.perf_counter()
        image = read_image_rgb(f)
        t1 = time.perf_counter()
        res = clf.process(image)
        t2 = time.perf_counter()
        cells += len(res.detections)
        per = dict(res.timings_ms, read=(t1 - t0) * 1e3, total=(t2 - t0) * 1e3)
        for k, v in per.items():
            timings.setdefault(k, []).append(v / 1e3)
    wall = time.perf_counter() - t_start
    order = ["read", "segment", "preprocess", "inference", "total"]
    names = [k for k in order if k in timings] + [k for k in timings if k not in order]
    return {"frames": len(files), "cells": cells, "cells_per_frame": cells / len(files),
            "fps": len(files) / wall if wall > 0 else None, "frames_source": str(Path(files[0]).parent),
            "stages": {k: stats.latency_summary(timings[k]) for k in names},
            "peak_rss_mb": peak_rss_mb()}
