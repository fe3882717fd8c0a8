"""Red-cell detection (edge/rbc.py) against labelled points (Chula RBC-12) and boxes (BCCD RBC).

    python -m hemaedge.benchmarks.tools.rbc_detection --chula ../shared/data/chula_rbc12 \
        --bccd ../shared/data/bccd --split test

Chula RBC-12 marks each red cell by one point; not every cell is marked (overlapping and cut-off
cells are often left out), so points measure recall, not precision:
  * point recall: a point lies inside the box of some detection (the issue's criterion);
  * one-to-one recall: the point's nearest detection centre is within half a diameter AND that
    detection has no other labelled point in its box nearer to it (each cell found as its own);
  * touching cells split right: among points whose nearest labelled neighbour is closer than
    1.1 red-cell diameters (touching or overlapping cells), the share whose own detection (the
    region under the point) holds no other labelled point: the clump was cut between them;
  * duplicates: labelled points with two detection centres within half a diameter (over-split).
BCCD has RBC boxes (incomplete in places, as is well known): one-to-one greedy matches at IoU >= 0.5
give a box precision and recall, a cross-check at a second magnification and stain.

Frame splits: Chula uses the frame split of `hemaedge data rbc-crops` (seed 42; parameters were
chosen on train frames, `--split test` reports the held-out frames); BCCD its own ImageSets.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.machine import describe_machine, one_line
from hemaedge.benchmarks.tools.segmentation_bccd import frame_ids, read_voc
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.edge.preprocess import read_image_rgb
from hemaedge.edge.rbc import RBC_METHODS, RbcParams, detect_red_cells
from hemaedge.edge.segment import centre_in
from hemaedge.train.rbc_crops import chula_frames

RESULTS = Path(__file__).resolve().parents[1] / "results"


def score_points(cells, points, d: float) -> dict:
    """Counts for one frame: see the module docstring."""
    pts = np.asarray([(x, y) for x, y, *_ in points], float).reshape(-1, 2)
    out = {"points": len(pts), "in_box": 0, "one_to_one": 0, "touching": 0, "touching_split": 0,
           "duplicates": 0, "detections": len(cells)}
    if not len(pts):
        return out
    centres = np.asarray([c.centre for c in cells], float).reshape(-1, 2)
    if len(pts) > 1:
        dp = np.linalg.norm(pts[:, None] - pts[None], axis=2)
        np.fill_diagonal(dp, np.inf)
        nearest_pt = dp.min(axis=1)
    else:
        nearest_pt = np.full(1, np.inf)
    for i, p in enumerate(pts):
        holding = [k for k, c in enumerate(cells) if centre_in(c.box, p)]
        out["in_box"] += bool(holding)
        if len(centres):
            dc = np.linalg.norm(centres - p, axis=1)
            k = int(dc.argmin())
            close = dc <= 0.5 * d
            out["duplicates"] += int(close.sum() > 1)
            # the point's own detection: the nearest one, if it is close enough
            own = k if close[k] else None
        else:
            own = None
        others_in_own = False
        if own is not None:
            others = [j for j in range(len(pts)) if j != i and centre_in(cells[own].box, pts[j])
                      and np.linalg.norm(pts[j] - centres[own]) < np.linalg.norm(p - centres[own])]
            out["one_to_one"] += not others
            others_in_own = any(j != i and centre_in(cells[own].box, pts[j])
                                and np.linalg.norm(pts[j] - p) < 1.1 * d for j in range(len(pts)))
        if nearest_pt[i] < 1.1 * d:
            out["touching"] += 1
            out["touching_split"] += own is not None and not others_in_own
    return out


def run_chula(root: Path, split: str, params: RbcParams, progress=True) -> dict:
    tot: dict = {}
    times, cells_per_frame = [], []
    frames = chula_frames(root, split)
    for f in tqdm(frames, desc=f"chula {params.method}", disable=not progress, unit="frame"):
        img = read_image_rgb(f.image)
        t = time.perf_counter()
        cells, d = detect_red_cells(img, None, params)
        times.append(time.perf_counter() - t)
        cells_per_frame.append(len(cells))
        for k, v in score_points(cells, f.points, d or 40.0).items():
            tot[k] = tot.get(k, 0) + v
    return {"frames": len(frames), **tot,
            "point_recall": tot["in_box"] / max(1, tot["points"]),
            "one_to_one_recall": tot["one_to_one"] / max(1, tot["points"]),
            "touching_split_right": tot["touching_split"] / max(1, tot["touching"]),
            "duplicate_rate": tot["duplicates"] / max(1, tot["points"]),
            "cells_per_frame_median": float(np.median(cells_per_frame)),
            "ms_per_frame_p50": 1e3 * float(np.median(times))}


def run_bccd(root: Path, split: str, params: RbcParams, progress=True) -> dict:
    from hemaedge.benchmarks.tools.segmentation_bccd import match

    gt_n = pred_n = tp = tpc = 0
    ids = frame_ids(root, split)
    for fid in tqdm(ids, desc=f"bccd {params.method}", disable=not progress, unit="frame"):
        jpg = root / "JPEGImages" / f"{fid}.jpg"
        if not jpg.exists():
            continue
        gt = read_voc(root / "Annotations" / f"{fid}.xml").get("RBC", [])
        cells, _ = detect_red_cells(read_image_rgb(jpg), None, params)
        boxes = [c.box for c in cells]
        gt_n, pred_n, tp = gt_n + len(gt), pred_n + len(boxes), tp + match(boxes, gt, "iou")
        tpc += match(boxes, gt, "centre")
    return {"frames": len(ids), "gt_boxes": gt_n, "detections": pred_n, "matched_iou50": tp,
            "recall": tp / max(1, gt_n), "precision": tp / max(1, pred_n),
            "matched_centre": tpc, "recall_centre": tpc / max(1, gt_n), "precision_centre": tpc / max(1, pred_n)}


def markdown(report: dict) -> str:
    lines = [f"# Red-cell detection ({report['date']})", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}  ",
             f"Load average at start: {report['load_average']}  ",
             "Timings are single-process wall clock on a shared machine: noisy, compare rows only.", "",
             f"## Chula RBC-12, {report['split']} frames (labelled points)", "",
             "| method | frames | points | point recall (in a box) | one-to-one recall | touching cells | "
             "split right | duplicates | detections/frame (median) | ms/frame p50 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in report["chula"].items():
        lines.append(f"| {m} | {r['frames']} | {r['points']} | {r['point_recall']:.3f} | {r['one_to_one_recall']:.3f} | "
                     f"{r['touching']} | {r['touching_split_right']:.3f} | {r['duplicate_rate']:.3f} | "
                     f"{r['cells_per_frame_median']:.0f} | {r['ms_per_frame_p50']:.1f} |")
    if report.get("bccd"):
        lines += ["", f"## BCCD, {report['bccd_split']} split (RBC boxes; one-to-one matches at IoU >= 0.5, "
                  "or with the detection's centre inside the box)", "",
                  "| method | frames | boxes | detections | recall (IoU) | precision (IoU) | recall (centre in box) | "
                  "precision (centre in box) |", "|---|---|---|---|---|---|---|---|"]
        for m, r in report["bccd"].items():
            lines.append(f"| {m} | {r['frames']} | {r['gt_boxes']} | {r['detections']} | {r['recall']:.3f} | "
                         f"{r['precision']:.3f} | {r['recall_centre']:.3f} | {r['precision_centre']:.3f} |")
    lines += ["", "Definitions: see the docstring of benchmarks/rbc_detection.py. Chula marks only some cells, so "
              "its points give recall, not precision; BCCD's RBC boxes are incomplete, so its precision is a lower bound."]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--chula", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--bccd", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="test", show_default=True)
@click.option("--bccd-split", type=click.Choice(["train", "val", "test", "all"]), default="test", show_default=True)
@click.option("--method", "methods", multiple=True, type=click.Choice(RBC_METHODS), help="Default: all.")
@click.option("--out", "prefix", type=click.Path(path_type=Path), default=RESULTS / "rbc_detection", show_default=True,
              help="Writes PREFIX.md and PREFIX.json.")
@click.option("--quiet", is_flag=True)
def main(chula, bccd, split, bccd_split, methods, prefix, quiet):
    methods = methods or RBC_METHODS
    report = {"date": dt.date.today().isoformat(), "machine": one_line(describe_machine()),
              "load_average": [round(v, 2) for v in os.getloadavg()],
              "command": "python -m hemaedge.benchmarks.tools.rbc_detection --chula CHULA"
                         + (" --bccd BCCD" if bccd else "") + f" --split {split} --bccd-split {bccd_split}"
                         + "".join(f" --method {m}" for m in methods),
              "split": split, "bccd_split": bccd_split, "params": {}, "chula": {}, "bccd": {}}
    for m in methods:
        params = RbcParams(method=m)
        report["params"][m] = params.__dict__.copy()
        report["chula"][m] = run_chula(chula, split, params, not quiet)
        if bccd:
            report["bccd"][m] = run_bccd(bccd, bccd_split, params, not quiet)
    write_result(prefix, report, markdown(report))
    click.echo(markdown(report))


if __name__ == "__main__":
    main()
