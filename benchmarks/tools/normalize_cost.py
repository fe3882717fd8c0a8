"""Cost of the device-side colour normalisation per 640x480 frame, against its baseline.

    python -m hemaedge.benchmarks.tools.normalize_cost --data ../shared/data/bccd --split val

For every frame of the split (BCCD val: real 640x480 smears from another microscope) the
device pipeline's segmentation and crops are computed once (not timed); then, repeated
`--repeat` times, the per-frame cost of
  * baseline:  `apply_preprocess` of the frame's crops without normalisation (resize + CLAHE)
  * with normalisation: the same with `input.normalize` (lab-anchors) — what the device runs
and their difference (the normalisation's own cost) are timed with perf_counter. p50/p90 over
frames, the ratio to the baseline measured in the same run, the machine, date and load average
go to benchmarks/results/normalize_cost.{json,md}. The machine is shared: absolute times are
noisy, the ratio less so.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import click
import numpy as np

from hemaedge.edge.atomic import atomic_write_text
from hemaedge.benchmarks.tools.segmentation_bccd import frame_ids, machine
from hemaedge.edge.preprocess import InputContract, apply_preprocess, read_image_rgb
from hemaedge.edge.ruler import Ruler
from hemaedge.edge.segment import DEFAULT_RBC_FACTOR, SegmentParams, extract_crops, segment

RESULTS = Path(__file__).resolve().parents[1] / "results"
REFERENCE = {"method": "lab-anchors", "background": [234.0, 133.0, 143.0], "cells": [183.0, 142.0, 132.0]}


def frame_crops(data: Path, split: str, limit: int | None):
    params = SegmentParams()
    ruler = Ruler(same_slide=False)  # independent fields, as `edge run` reads an image folder
    out = []
    for fid in frame_ids(data, split)[:limit]:
        img = read_image_rgb(data / "JPEGImages" / f"{fid}.jpg")
        d = ruler.read(img, params).diameter
        dets = segment(img, params, crop_side=int(round(DEFAULT_RBC_FACTOR * d)) if d else None, rbc_diameter=d)
        out.append((img.shape, extract_crops(img, dets)))
    return out


def time_frames(frames, contract, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and thread-CPU ms per frame (best of the repeats: the least disturbed by other
    jobs). The preprocessing of 128-px crops runs in this one thread, so its thread CPU time is
    the work itself, without the waits a loaded machine adds to the wall-clock figure."""
    wall = np.zeros((repeat, len(frames)))
    cpu = np.zeros((repeat, len(frames)))
    for r in range(repeat):
        for i, (_, crops) in enumerate(frames):
            t0, c0 = time.perf_counter(), time.thread_time()
            for c in crops:
                apply_preprocess(c, contract)
            wall[r, i] = (time.perf_counter() - t0) * 1e3
            cpu[r, i] = (time.thread_time() - c0) * 1e3
    return wall.min(axis=0), cpu.min(axis=0)


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=lambda: os.environ.get("HEMAEDGE_BCCD", "../shared/data/bccd"), show_default="../shared/data/bccd")
@click.option("--split", default="val", show_default=True)
@click.option("--size", default=128, show_default=True, help="Model input size the crops are resized to.")
@click.option("--repeat", default=5, show_default=True)
@click.option("--first", "limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the first N frames of the split (quick check).")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(data, split, size, repeat, limit, out):
    """Per-frame cost of colour normalisation on the device (p50 over BCCD frames)."""
    frames = frame_crops(data, split, limit)
    base = InputContract(size=size, preprocess="clahe")
    norm = InputContract(size=size, preprocess="clahe", normalize=REFERENCE)
    load = os.getloadavg()
    t_base, c_base = time_frames(frames, base, repeat)
    t_norm, c_norm = time_frames(frames, norm, repeat)
    extra, c_extra = t_norm - t_base, c_norm - c_base
    crops = np.array([len(c) for _, c in frames])
    q = lambda a, p: round(float(np.percentile(a, p)), 3)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"), "machine": machine(),
              "load_average": [round(v, 2) for v in load],
              "command": f"python -m hemaedge.benchmarks.tools.normalize_cost --split {split} --size {size} --repeat {repeat}"
                         + (f" --first {limit}" if limit else ""),
              "frames": len(frames), "frame_shape": list(frames[0][0]) if frames else None,
              "crops_per_frame": {"p50": q(crops, 50), "max": int(crops.max()) if len(crops) else 0},
              "ms_per_frame": {"baseline_p50": q(t_base, 50), "baseline_p90": q(t_base, 90),
                               "with_normalisation_p50": q(t_norm, 50), "with_normalisation_p90": q(t_norm, 90),
                               "normalisation_only_p50": q(extra, 50), "normalisation_only_p90": q(extra, 90)},
              "thread_cpu_ms_per_frame": {"baseline_p50": q(c_base, 50), "with_normalisation_p50": q(c_norm, 50),
                                          "normalisation_only_p50": q(c_extra, 50),
                                          "normalisation_only_p90": q(c_extra, 90)},
              "ratio_p50": round(float(np.median(t_norm) / max(np.median(t_base), 1e-9)), 3)}
    m, c = report["ms_per_frame"], report["thread_cpu_ms_per_frame"]
    md = [f"# Colour normalisation cost per frame ({report['date']})", "",
          f"Command: `{report['command']}`  ", f"Machine: {report['machine']}; load average "
          f"{report['load_average']} (shared machine: absolute times are noisy, best of {repeat} repeats per frame)  ",
          f"Frames: {len(frames)} BCCD `{split}` frames {report['frame_shape']}, crops per frame p50 "
          f"{report['crops_per_frame']['p50']} (max {report['crops_per_frame']['max']}), each resized to {size} px. "
          "Normalisation runs on the crops the classifier sees (estimated on each crop, as in training).", "",
          "| per frame | p50 ms | p90 ms | thread CPU p50 ms |", "|---|---|---|---|",
          f"| baseline: resize + CLAHE of the frame's crops | {m['baseline_p50']} | {m['baseline_p90']} | "
          f"{c['baseline_p50']} |",
          f"| with lab-anchors normalisation | {m['with_normalisation_p50']} | {m['with_normalisation_p90']} | "
          f"{c['with_normalisation_p50']} |",
          f"| **normalisation alone** | **{m['normalisation_only_p50']}** | {m['normalisation_only_p90']} | "
          f"**{c['normalisation_only_p50']}** |", "",
          "Wall-clock (perf_counter) and the thread's CPU time (thread_time: the work without the waits of a "
          "loaded machine), each the best of the repeats per frame.", "",
          f"Ratio (with / baseline, p50): {report['ratio_p50']}. Goal: normalisation <= 1 ms p50 per 640x480 frame.", ""]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "normalize_cost.json", json.dumps(report, indent=1))
    atomic_write_text(out / "normalize_cost.md", "\n".join(md))
    click.echo("\n".join(md))


if __name__ == "__main__":
    main()
