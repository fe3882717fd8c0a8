"""White cells of BCCD frames end to end: segment -> crop -> classify, against the white-cell type.

    python -m hemaedge.benchmarks.tools.bccd_wbc --bundle src/hemaedge/models/default --split val \\
        --normalize none --normalize reference --name default

BCCD is a different microscope, stain and camera from PBC/BloodMNIST, so this is the measure of
how a model holds up on a microscope it was not trained on. Frames: the rows of
`bccd/wbc_subtypes.csv` with one white-cell label and one WBC box, of the chosen split. Each frame
runs through the device pipeline (`edge.pipeline.CellClassifier`: segmentation, red-cell-scaled
crops, `prepare_batch` with the bundle's input contract); the white-cell detection that overlaps
the annotated WBC box most (IoU >= 0.3, or its centre inside the box) is the answer, and a frame
where no detection matches counts as wrong ("not found").

`--normalize` (repeatable) compares input contracts for the same bundle:
  bundle     the bundle's own contract (with or without its colour normalisation)
  none       the bundle's contract without colour normalisation
  reference  the bundle's contract with `lab-anchors` normalisation to the reference colours of
             BloodMNIST-128 train (every 6th image; `edge.preprocess.reference_anchors`); this is
             how an existing bundle is measured with the device-side normalisation
Choose with `val` (or `train`); `test` is for reporting only, never for choosing.

Writes benchmarks/results/bccd_wbc_NAME.{json,md}; the JSON keeps every frame's probabilities
(for calibration / OOD analysis on val).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import os
from collections import Counter
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import machine, read_voc
from hemaedge.edge.identify import REVIEW_BELOW, UNIDENTIFIED, UNIDENTIFIED_BELOW, cell_ood_score, decide
from hemaedge.edge.preprocess import read_image_rgb, reference_anchors
from hemaedge.edge.segment import centre_in, iou

RESULTS = Path(__file__).resolve().parents[1] / "results"
REVIEW_THRESHOLD = REVIEW_BELOW  # the recorder's default: a cell below this confidence is flagged for review


def frames(data: Path, split: str) -> list[dict]:
    rows = list(csv.DictReader(open(data / "wbc_subtypes.csv", encoding="utf-8")))
    return [r for r in rows if r["split"] == split and r["n_labels"] == "1" and r["n_wbc_boxes"] == "1"]


def bloodmnist_reference(bloodmnist128: Path, every: int = 6) -> dict:
    files = sorted((bloodmnist128 / "train").glob("*/*.jpg"))[::every]
    return reference_anchors(read_image_rgb(f) for f in files)


@dataclasses.dataclass
class _Model:  # what CellClassifier needs: classes + contract (+ the manifest's ood section)
    classes: list
    contract: object
    manifest: dict = dataclasses.field(default_factory=dict)


# The unidentified/flag rules compared (edge.identify.decide with these settings). "confidence +
# OOD" is what `edge run` does with the bundle's levels (two tiers: unidentified above the strict
# level, counted but flagged above the review level); "one tier (before)" is the rule of the first
# OOD bundles: unidentified above the review level.
RULES = ("confidence only", "OOD only", "confidence + OOD", "one tier (before)")


def rule_settings(rule: str, ood_threshold: float | None, ood_flag_threshold: float | None = None) -> dict:
    """decide(...) keyword arguments of one rule (OOD rules need a threshold)."""
    conf = {"threshold": UNIDENTIFIED_BELOW, "review_below": REVIEW_THRESHOLD}
    ood = {"ood_threshold": ood_threshold, "ood_flag_threshold": ood_flag_threshold}
    if rule == "confidence only":
        return {**conf, "ood_threshold": None}
    if rule == "OOD only":
        return {"threshold": 0.0, "review_below": 0.0, **ood}
    if rule == "one tier (before)":
        return {**conf, "ood_threshold": ood_flag_threshold}
    return {**conf, **ood}


def evaluate(data: Path, rows: list[dict], bundle, contract, threads: int = 2, ood_override=None) -> dict:
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.pipeline import CellClassifier

    model = _Model(list(bundle.classes), contract, bundle.manifest)
    clf = CellClassifier(model, load_backend(bundle, threads=threads), ood_threshold=ood_override)
    out = score_frames(data, rows, clf)
    out["identify"] = clf.identify_rule()  # views and OOD levels this variant ran with
    return out


def score_frames(data: Path, rows: list[dict], clf) -> dict:
    """Every frame through `clf` (a CellClassifier); the WBC detection matching the label box is the answer."""
    per_frame = []
    for r in tqdm(rows, desc="frames", unit="frame"):
        img = read_image_rgb(data / "JPEGImages" / f"{r['frame']}.jpg")
        gt = read_voc(data / "Annotations" / f"{r['frame']}.xml")["WBC"][0]
        res = clf.process(img)
        best, best_iou = None, 0.0
        for k, d in enumerate(res.detections):
            if d.kind != "wbc":
                continue
            v = iou(d.box, gt)
            if (v >= 0.3 or centre_in(gt, d.centre)) and v >= best_iou:
                best, best_iou = k, v
        row = {"frame": r["frame"], "label": r["categories"], "found": best is not None}
        if best is not None:
            p = res.probabilities[best]
            dec = res.decisions[best]
            row.update(predicted=res.labels[best], top=clf.classes[int(np.argmax(p))], confidence=float(np.max(p)),
                       probabilities=[round(float(v), 6) for v in p], iou=round(best_iou, 3),
                       ood_score=round(float(cell_ood_score(p)), 6), flag=dec.flag, reason=dec.reason)
        per_frame.append(row)
    return summarise(per_frame, clf.classes, clf.ood_rule.threshold, clf.ood_rule.flag_threshold)


def flag_rates(per_frame: list[dict], classes: list[str], rule: str, ood_threshold: float | None,
               ood_flag_threshold: float | None = None) -> dict | None:
    """Right / wrong answers (the classifier's top class against the label) flagged for review or
    unidentified under one rule, and how many of each are unidentified (left out of the count);
    a frame whose WBC is not found is a wrong answer, flagged."""
    if rule != "confidence only" and ood_threshold is None:
        return None
    if rule == "one tier (before)" and ood_flag_threshold is None:
        return None
    kw = rule_settings(rule, ood_threshold, ood_flag_threshold)
    right = wrong = right_f = wrong_f = right_u = wrong_u = 0
    for f in per_frame:
        if not f["found"]:
            wrong, wrong_f = wrong + 1, wrong_f + 1
            continue
        d = decide("wbc", np.asarray(f["probabilities"], np.float32), classes, **kw)
        unidentified = d.label == UNIDENTIFIED
        flagged = unidentified or bool(d.flag)
        if f["top"] == f["label"]:
            right, right_f, right_u = right + 1, right_f + flagged, right_u + unidentified
        else:
            wrong, wrong_f, wrong_u = wrong + 1, wrong_f + flagged, wrong_u + unidentified
    return {"right": right, "wrong": wrong, "right_flagged": round(right_f / right, 4) if right else None,
            "wrong_flagged": round(wrong_f / wrong, 4) if wrong else None,
            "right_flagged_n": right_f, "wrong_flagged_n": wrong_f,
            "right_unidentified_n": right_u, "wrong_unidentified_n": wrong_u}


def summarise(per_frame: list[dict], classes: list[str], ood_threshold: float | None = None,
              ood_flag_threshold: float | None = None) -> dict:
    """Accuracy after the pipeline's rules (unidentified = not right), top-class accuracy, and the
    flag rates of each rule in RULES."""
    n = len(per_frame)
    right = [f for f in per_frame if f.get("predicted") == f["label"]]
    per_class = {}
    for c in sorted({f["label"] for f in per_frame}):
        fs = [f for f in per_frame if f["label"] == c]
        per_class[c] = {"frames": len(fs), "right": sum(f.get("predicted") == c for f in fs),
                        "predicted_as": dict(Counter(f.get("predicted", "not found") for f in fs).most_common())}
    rules = {r: flag_rates(per_frame, classes, r, ood_threshold, ood_flag_threshold) for r in RULES}
    top_right = sum(1 for f in per_frame if f.get("top") == f["label"])
    conf_rule = rules["confidence only"]
    return {"frames": n, "found": sum(f["found"] for f in per_frame),
            "right": len(right), "accuracy": round(len(right) / n, 4) if n else None,
            "top_right": top_right, "top_accuracy": round(top_right / n, 4) if n else None,
            "ood_threshold": ood_threshold, "ood_flag_threshold": ood_flag_threshold,
            "right_flagged": conf_rule["right_flagged"], "wrong_flagged": conf_rule["wrong_flagged"],
            "rules": rules,
            "unidentified_reasons": dict(Counter(f["reason"] for f in per_frame if f.get("reason"))),
            "predicted_as": dict(Counter(f.get("predicted", "not found") for f in per_frame).most_common()),
            "per_class": per_class, "per_frame": per_frame}


def to_markdown(r: dict) -> str:
    lines = [f"# BCCD white cells end to end ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Bundle: `{r['bundle']}`; split `{r['split']}` ({r['frames']} frames with one white-cell label "
             "and one WBC box; a frame whose WBC is not found counts as wrong). "
             "Right/wrong answers for the flag columns = the classifier's top class against the label; flagged = "
             f"unidentified or confidence < {REVIEW_THRESHOLD} (the recorder's review threshold) under the "
             "confidence-only rule, or not found (rules with the OOD score: the table below). "
             f"Weights: {r.get('weights', 'not recorded')}. " + " ".join(
                 f"{name}: test-time views `{v['identify']['views']}`, {v['identify']['ood']['note']}."
                 for name, v in r["variants"].items() if v.get("identify")), "",
             "| input contract | frames | WBC found | right | accuracy | right answers flagged | wrong answers flagged | predicted as |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        pa = ", ".join(f"{k} {c}" for k, c in v["predicted_as"].items())
        pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"
        lines.append(f"| {name} | {v['frames']} | {v['found']} | {v['right']} | {pct(v['accuracy'])} | "
                     f"{pct(v['right_flagged'])} | {pct(v['wrong_flagged'])} | {pa} |")
    lines += ["", "Per class (right / frames):", "", "| class | " + " | ".join(r["variants"]) + " |",
              "|---|" + "---|" * len(r["variants"])]
    classes = sorted({c for v in r["variants"].values() for c in v["per_class"]})
    for c in classes:
        cells = [f"{v['per_class'][c]['right']} / {v['per_class'][c]['frames']}" if c in v["per_class"] else "–"
                 for v in r["variants"].values()]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "Flag rules (`edge.identify.decide`; OOD levels from the bundle's manifest; *confidence + OOD* = "
                  "what `edge run` does; flagged = flagged for review or unidentified):", "",
              "| input contract | rule | wrong answers flagged | right answers flagged | wrong unidentified | right unidentified |",
              "|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        for rule, f in (v.get("rules") or {}).items():
            if f:
                lines.append(f"| {name} | {rule} | {f['wrong_flagged_n']}/{f['wrong']} | {f['right_flagged_n']}/{f['right']} | "
                             f"{f.get('wrong_unidentified_n', '–')}/{f['wrong']} | {f.get('right_unidentified_n', '–')}/{f['right']} |")
    if r.get("reference"):
        lines += ["", f"Reference colours (BloodMNIST-128 train, every 6th image; OpenCV 8-bit Lab): "
                      f"background {r['reference']['background']}, red cells {r['reference']['cells']}"]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=lambda: os.environ.get("HEMAEDGE_BCCD", "../shared/data/bccd"), show_default="../shared/data/bccd")
@click.option("--bloodmnist128", type=click.Path(path_type=Path), default="../shared/data/bloodmnist128", show_default=True,
              help="For --normalize reference: the training set whose colours are the reference.")
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True)
@click.option("--normalize", "variants", multiple=True, type=click.Choice(["bundle", "none", "reference"]),
              default=("bundle",), show_default=True)
@click.option("--name", required=True, help="Results go to benchmarks/results/bccd_wbc_NAME.{json,md}.")
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(data, bloodmnist128, bundle, split, variants, name, threads, out):
    """Fraction of BCCD white cells classified right end to end (one bundle, one or more contracts)."""
    from hemaedge.edge.bundle import load_bundle

    b = load_bundle(bundle)
    rows = frames(data, split)
    ref = bloodmnist_reference(bloodmnist128) if "reference" in variants else None
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "bundle": str(bundle), "split": split,
              "frames": len(rows), "reference": ref,
              "weights": (b.manifest.get("source") or {}).get("weights", "unknown weights"),
              "command": "python -m hemaedge.benchmarks.tools.bccd_wbc " + " ".join(
                  [f"--bundle {bundle}", f"--split {split}", *[f"--normalize {v}" for v in variants], f"--name {name}"]),
              "variants": {}}
    for v in variants:
        contract = b.contract
        if v == "none":
            contract = dataclasses.replace(contract, normalize=None)
        elif v == "reference":
            contract = dataclasses.replace(contract, normalize=ref)
        label = {"bundle": "bundle's own", "none": "no colour normalisation",
                 "reference": "lab-anchors normalisation to BloodMNIST train"}[v]
        report["variants"][label] = evaluate(data, rows, b, contract, threads)
        click.echo(f"{label}: {report['variants'][label]['right']}/{len(rows)} right")
    write_result(out / f"bccd_wbc_{name}", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
