"""Does the OOD score catch the wrong answers? The unidentified rule of `edge run` on three data
sets, for confidence only, OOD only and both (`edge.identify.decide`, the device's code).

    python -m hemaedge.benchmarks.tools.ood_rule --bundle BUNDLE --name default_v2_epoch4

* BloodMNIST-128 val (the training domain, pre-cropped images of the nucleated classes; where
  the threshold was calibrated, so ~5 % of its right answers are above it by construction);
* BCCD val frames end to end (`bccd_wbc.score_frames`: another microscope, never trained on);
* PBC fields end to end (`pbc_raw_val`, the training microscope's full fields; nucleated
  fields only: the rule is about nucleated cells).

"Right"/"wrong" = the classifier's top class against the label; flagged = unidentified (classified
as platelet, low confidence, out of distribution) or flagged for review (confidence below 0.6)
under each rule; a cell the segmenter did not find is a wrong answer, counted as flagged.
The OOD levels are the bundle's (`ood.threshold` = review level, `ood.unidentified_threshold` =
unidentified level, set on the training data's validation split: `ood_calibrate`); BCCD val is
only reported, never used to choose; no test split is read. Cells are classified with the
bundle's test-time views (`inference.views`). Also measures the rule's cost per cell (the OOD score is computed from the
probabilities the classifier already gave: a log and a max).

Writes benchmarks/results/ood_rule_NAME.{json,md}.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.bccd_wbc import RULES, _Model, flag_rates, frames, score_frames
from hemaedge.benchmarks.tools.segmentation_bccd import machine
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.edge.identify import decide
from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
from hemaedge.edge.segment import centre_in, nearest_to
from hemaedge.edge.tta import predict_views
from hemaedge.train.data.subsets import spread
from hemaedge.benchmarks.tools.data_options import evaluation_sets

RESULTS = Path(__file__).resolve().parents[1] / "results"


def bloodmnist_val(clf, val_dir: Path, n: int | None) -> list[dict]:
    """Pre-cropped val images of the nucleated classes through the bundle (the training domain)."""
    files = [(f, c) for c in clf.classes if c != "platelet" for f in sorted((val_dir / c).glob("*.jpg"))]
    files = [files[i] for i in spread(len(files), n)]
    out = []
    for k in tqdm(range(0, len(files), 64), desc="BloodMNIST val", unit="batch"):
        chunk = files[k:k + 64]
        p = predict_views(clf.backend.predict, prepare_batch([read_image_rgb(f) for f, _ in chunk], clf.contract),
                          clf.views)  # the bundle's test-time views, as CellClassifier runs them
        for (f, c), row in zip(chunk, p):
            out.append({"frame": f.name, "label": c, "found": True, "top": clf.classes[int(row.argmax())],
                        "probabilities": [float(v) for v in row]})
    return out


def pbc_fields(clf, pbc: Path, n: int | None) -> list[dict]:
    """The central nucleated cell of each PBC field, as `edge run` classifies a folder of fields."""
    rows = [r for r in csv.DictReader(open(pbc / "labels.csv", encoding="utf-8")) if r["class"] != "platelet"]
    rows = [rows[i] for i in spread(len(rows), n)]
    out = []
    for r in tqdm(rows, desc="PBC fields", unit="field"):
        img = read_image_rgb(pbc / r["file"])
        h, w = img.shape[:2]
        res = clf.process(img)
        wbc = [d for d in res.detections if d.kind == "wbc"]
        near = nearest_to(wbc, (w / 2.0, h / 2.0))
        row = {"frame": r["file"], "label": r["class"], "found": near is not None and centre_in(near.box, (w / 2, h / 2))}
        if row["found"]:
            p = res.probabilities[res.detections.index(near)]
            row.update(top=clf.classes[int(p.argmax())], probabilities=[float(v) for v in p])
        out.append(row)
    return out


def rule_cost_us(prob_rows: np.ndarray, classes: list[str], ood_threshold: float, repeats: int = 5) -> dict:
    """Microseconds per nucleated cell of `identify.decide`, confidence only vs confidence + OOD (best of `repeats`)."""
    def timed(thr):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for p in prob_rows:
                decide("wbc", p, classes, ood_threshold=thr)
            best = min(best, (time.perf_counter() - t0) / len(prob_rows) * 1e6)
        return round(best, 2)

    return {"cells": int(len(prob_rows)), "confidence_only_us": timed(None), "with_ood_us": timed(ood_threshold)}


def to_markdown(r: dict) -> str:
    o = r["ood_rule"]
    lines = [f"# The unidentified rule with the OOD score ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Bundle: `{r['bundle']}` ({r['weights']}); test-time views `{r.get('views', 'off')}`. OOD score: "
             f"{o['score']} after the bundle's temperature (T = {r['temperature']}); {o['source']}: {o['note']}. "
             f"Unidentified above {o['threshold']:g} (top probability below {np.exp(-o['threshold']):.3f})"
             + (f"; counted but flagged for review above {o['flag_threshold']:g} (top probability below "
                f"{np.exp(-o['flag_threshold']):.3f})" if o.get("flag_threshold") is not None else "") + ".", "",
             "Right/wrong = the classifier's top class against the label. Flagged = unidentified (classified as "
             "platelet, confidence < 0.4, OOD score above the unidentified level) or flagged for review (confidence "
             "< 0.6, OOD score above the review level), per rule: *confidence only* = the rule before the OOD score; "
             "*OOD only* = platelet-class + the two OOD levels; *confidence + OOD* = what `edge run` now does; "
             "*one tier (before)* = the previous rule (unidentified above the review level). Unidentified = left "
             "out of the count. A cell not found counts as wrong and flagged. Goal (issue 13, BCCD): >= 90% of "
             "wrong answers flagged with <= 15% of right ones.", "",
             "| data | cells | right | rule | wrong answers flagged | right answers flagged | right answers unidentified |",
             "|---|---|---|---|---|---|---|"]
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"
    for name, d in r["sets"].items():
        for rule in RULES:
            v = d["rules"][rule]
            if v is None:
                continue
            lines.append(f"| {name} | {d['cells']} | {v['right']} | {rule} | {pct(v['wrong_flagged'])} "
                         f"({v['wrong_flagged_n']}/{v['wrong']}) | {pct(v['right_flagged'])} "
                         f"({v['right_flagged_n']}/{v['right']}) | {v.get('right_unidentified_n', '–')}/{v['right']} |")
    c = r["cost"]
    lines += ["", f"Cost of the rule per nucleated cell (`identify.decide` on {c['cells']} real probability rows, "
                  f"best of 5, same run): confidence only {c['confidence_only_us']} µs, with the OOD score "
                  f"{c['with_ood_us']} µs — against {r['frame_ms']} ms per BCCD frame for the whole pipeline "
                  f"(segmentation, crops, inference) in the same run, load average {r['load_average_at_start']} "
                  "at start. Timings on a shared machine: noisy.", ""]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Results go to benchmarks/results/ood_rule_NAME.{json,md}.")
@evaluation_sets
@click.option("--pbc-spread", type=click.IntRange(1), default=None,
              help="Only this many nucleated PBC fields, spread over the list [default: all].")
@click.option("--val-spread", type=click.IntRange(1), default=None,
              help="Only this many BloodMNIST val images, spread over the split [default: all].")
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(bundle, name, bccd, pbc, bloodmnist128, pbc_spread, val_spread, threads, out):
    """Wrong and right answers flagged by each unidentified rule, on the training domain, BCCD and PBC."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier

    b = load_bundle(bundle)
    clf = CellClassifier(_Model(list(b.classes), b.contract, b.manifest), load_backend(b, threads=threads))
    thr = clf.ood_rule.threshold
    if thr is None:
        raise click.ClickException(f"{bundle}: the bundle has no OOD threshold ({clf.ood_rule.note})")
    load = os.getloadavg()[0]
    sets = {}
    val = bloodmnist_val(clf, bloodmnist128 / "val", val_spread)
    sets["BloodMNIST-128 val (training domain, pre-cropped, nucleated)"] = val
    t0 = time.perf_counter()
    bccd_rows = frames(bccd, "val")
    b_res = score_frames(bccd, bccd_rows, clf)
    bccd_s = time.perf_counter() - t0
    sets["BCCD val (another microscope), end to end"] = b_res["per_frame"]
    sets["PBC fields (pbc_raw_val, nucleated), end to end"] = pbc_fields(clf, pbc, pbc_spread)
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "load_average_at_start": round(load, 2),
              "bundle": str(bundle), "weights": (b.manifest.get("source") or {}).get("weights", "unknown weights"),
              "temperature": (b.manifest.get("output") or {}).get("temperature"),
              "ood_rule": clf.ood_rule.to_dict(), "views": clf.views_name,
              "command": "python -m hemaedge.benchmarks.tools.ood_rule " + " ".join(
                  [f"--bundle {bundle}", f"--name {name}",
                   *([f"--pbc-spread {pbc_spread}"] if pbc_spread else []),
                   *([f"--val-spread {val_spread}"] if val_spread else [])]),
              "sets": {}}
    probs = []
    for label, rows in sets.items():
        report["sets"][label] = {"cells": len(rows), "rules": {r: flag_rates(rows, clf.classes, r, thr, clf.ood_rule.flag_threshold)
                                                                   for r in RULES}}
        probs += [f["probabilities"] for f in rows if f["found"]]
    report["cost"] = rule_cost_us(np.asarray(probs, np.float32)[:2000], clf.classes, thr)
    report["frame_ms"] = round(1e3 * bccd_s / max(1, len(bccd_rows)), 1)  # whole pipeline per BCCD frame
    write_result(out / f"ood_rule_{name}", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
