"""The two platelet levels of `edge.identify`, measured on a bundle's own outputs.

    python -m hemaedge.benchmarks.tools.identify_levels --bundle src/hemaedge/models/default \
        --bccd ../shared/data/bccd --pbc ../shared/data/pbc_raw_val

Both levels are probabilities of the classifier's platelet class, so they belong to a model: a
new default bundle can move them. This tool runs the whole pipeline once per frame
(`edge.pipeline.CellClassifier`, the bundle's own views and rules) and replays the two
decisions at several levels on the recorded outputs:

* **confirmation** (`identify.PLATELET_CONFIRM_ABOVE`): a platelet candidate is counted when its
  top class is platelet with at least this probability. Platelet recall / precision against
  every BCCD VOC platelet box, one-to-one at IoU >= 0.5 (`segmentation_bccd`, *every cell*).
  The level to use is the one whose smaller of recall and precision on train + val is largest
  (`choose_confirm`: the goal is a floor on both), the lower level on a tie.
* **clump** (`identify.PLATELET_KIND_ABOVE`): a size-ambiguous detection becomes a platelet
  (clump) at this probability, else it stays nucleated. BCCD white cells lost as clumps (recall
  of the VOC WBC boxes), the share of the size-ambiguous detections of PBC platelet fields kept
  as platelets, and PBC fields with exactly the right nucleated count (as `pbc_end_to_end`).

BCCD train + val and PBC val choose; BCCD test is only reported. Writes OUT/identify_levels.{md,json}.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import click
from tqdm import tqdm

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import frame_ids, machine, matches, rates, read_voc
from hemaedge.edge.identify import PLATELET, PLATELET_CONFIRM_ABOVE, PLATELET_KIND_ABOVE, decide, is_platelet_clump

ROOT = Path(__file__).resolve().parents[2]
CONFIRM_LEVELS = (0.4, 0.5, 0.6, 0.7, 0.8)
CLUMP_LEVELS = (0.9, 0.99, 0.995, 0.998, 0.999)


def record(clf, image) -> list[dict]:
    """Every detection of one frame with what the two decisions need: the segmenter's kind before
    the clump decision, its side in red-cell diameters, the probabilities."""
    res = clf.process(image)
    d_rbc = res.ruler.diameter if res.ruler is not None else None
    return [{"kind": "wbc" if d.size_ambiguous else d.kind, "ambiguous": d.size_ambiguous, "box": d.box,
             "side_rbc": d.size / d_rbc if d_rbc else None, "on_red_cell": d.on_red_cell, "at_edge": d.at_edge,
             "prob": res.probabilities[i]} for i, d in enumerate(res.detections)]


def choose_confirm(rows: list[dict]) -> float:
    """The confirmation level whose smaller of train + val recall and precision is largest."""
    def worst(row):
        a = row["choose"]["platelet"]
        return min(a["recall"] or 0.0, a["precision"] or 0.0)
    return max(rows, key=lambda row: (worst(row), -row["level"]))["level"]


def kinds(dets: list[dict], classes: list[str], clump: float) -> list[str]:
    return [PLATELET if d["ambiguous"] and is_platelet_clump(d["prob"], classes, d["side_rbc"], clump) else d["kind"]
            for d in dets]


def bccd_rates(frames: list[tuple[list[dict], dict]], classes: list[str], confirm: float, clump: float) -> dict:
    """Platelets counted and white cells (every nucleated detection) against the VOC boxes."""
    c = {"platelet": [0, 0, 0], "wbc": [0, 0, 0]}  # tp, gt, pred
    for dets, gt in frames:
        kk = kinds(dets, classes, clump)
        plt = [d["box"] for d, k in zip(dets, kk) if k == PLATELET
               and decide(PLATELET, d["prob"], classes, on_red_cell=d["on_red_cell"], platelet_confirm=confirm).counted]
        wbc = [d["box"] for d, k in zip(dets, kk) if k == "wbc"]
        for name, pred, truth in (("platelet", plt, gt.get("Platelets", [])), ("wbc", wbc, gt.get("WBC", []))):
            c[name][0] += len(matches(pred, truth, "iou"))
            c[name][1] += len(truth)
            c[name][2] += len(pred)
    return {k: {**rates(*v), "tp": v[0], "gt": v[1], "pred": v[2]} for k, v in c.items()}


def pbc_rates(fields: list[tuple[list[dict], str]], classes: list[str], clump: float) -> dict:
    kept = ambiguous = right = 0
    for dets, label in fields:
        kk = kinds(dets, classes, clump)
        if label == PLATELET:
            ambiguous += sum(d["ambiguous"] for d in dets)
            kept += sum(d["ambiguous"] and k == PLATELET for d, k in zip(dets, kk))
        n = sum(k == "wbc" and not d["at_edge"] for d, k in zip(dets, kk))  # as pbc_end_to_end counts
        right += n == (0 if label == PLATELET else 1)
    return {"platelet_field_ambiguous": ambiguous, "kept_as_platelet": kept,
            "kept_share": round(kept / ambiguous, 4) if ambiguous else None,
            "fields": len(fields), "nucleated_count_right": round(right / len(fields), 4) if fields else None}


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def to_markdown(r: dict) -> str:
    lines = [f"# Platelet levels of `edge.identify` on {r['bundle_name']} ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Bundle: `{r['bundle']}` ({r['bundle_name']}; weights: {r['weights']}); test-time views "
             f"`{r['views']}`. Levels in use: confirmation {r['in_use']['confirm']}, clump {r['in_use']['clump']}. "
             "BCCD train + val and PBC val fields choose; BCCD test is only reported.", "",
             f"Confirmation level chosen by the rule (the largest smaller-of-recall-and-precision on train + val): "
             f"**{r['chosen']['confirm']}**" + ("" if r["chosen"]["confirm"] == r["in_use"]["confirm"] else
                                                " (NOT the level in use: set `identify.PLATELET_CONFIRM_ABOVE` to it)")
             + ".", "",
             "## Confirmation level: platelets counted on BCCD (every cell, IoU ≥ 0.5)", "",
             "| confirm above | train + val recall / precision | counted / TP | test recall / precision | counted / TP |",
             "|---|---|---|---|---|"]
    for row in r["confirm"]:
        a, t = row["choose"]["platelet"], row["test"]["platelet"]
        mark = " (in use)" if row["level"] == r["in_use"]["confirm"] else ""
        lines.append(f"| {row['level']}{mark} | {_pct(a['recall'])} / {_pct(a['precision'])} | {a['pred']} / {a['tp']} | "
                     f"{_pct(t['recall'])} / {_pct(t['precision'])} | {t['pred']} / {t['tp']} |")
    lines += ["", "## Clump level: size-ambiguous detections made platelets", "",
              "| clump above | BCCD train + val WBC recall / precision | white cells found vs the lowest level | BCCD test WBC recall | "
              "PBC platelet fields: ambiguous kept as platelet | PBC fields, nucleated count right |",
              "|---|---|---|---|---|---|"]
    base = r["clump"][0]["choose"]["wbc"]["tp"]
    for row in r["clump"]:
        a, t, p = row["choose"]["wbc"], row["test"]["wbc"], row["pbc"]
        mark = " (in use)" if row["level"] == r["in_use"]["clump"] else ""
        lines.append(f"| {row['level']}{mark} | {_pct(a['recall'])} / {_pct(a['precision'])} | {a['tp'] - base:+d} | "
                     f"{_pct(t['recall'])} | {p['kept_as_platelet']} / {p['platelet_field_ambiguous']} "
                     f"({_pct(p['kept_share'])}) | {_pct(p['nucleated_count_right'])} |")
    lines += ["", "WBC recall here counts every nucleated detection (classified or unidentified), as "
              "`segmentation_bccd --bundle` does; a white cell taken for a clump leaves the count silently, a clump "
              "left nucleated is counted as unidentified and flagged for review (docs/edge.md)."]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=ROOT / "src/hemaedge/models/default", show_default="the packaged default")
@click.option("--bccd", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--pbc", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="pbc_raw_val (labels.csv + fields)")
@click.option("--first", type=click.IntRange(min=1), default=None, help="Quick check: the first N frames of each split / PBC fields.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "benchmarks/results",
              show_default="benchmarks/results")
def main(bundle, bccd, pbc, first, threads, out):
    """Platelet confirmation and clump levels replayed on one pipeline run per frame."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.preprocess import read_image_rgb

    b = load_bundle(bundle)
    classes = list(b.classes)
    backend = load_backend(b, threads=threads)
    splits = {}
    for split in ("train", "val", "test"):
        clf = CellClassifier(b, backend)  # a fresh per-field ruler per split, as segmentation_bccd
        ids = frame_ids(bccd, split)[:first]
        splits[split] = [(record(clf, read_image_rgb(bccd / "JPEGImages" / f"{f}.jpg")),
                          read_voc(bccd / "Annotations" / f"{f}.xml"))
                         for f in tqdm(ids, desc=f"BCCD {split}", unit="frame")]
    rows = list(csv.DictReader(open(pbc / "labels.csv", newline="")))[:first]
    clf = CellClassifier(b, backend)
    fields = [(record(clf, read_image_rgb(pbc / r["file"])), r["class"]) for r in tqdm(rows, desc="PBC", unit="field")]
    choose = splits["train"] + splits["val"]
    r = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
         "command": "python -m hemaedge.benchmarks.tools.identify_levels --bundle "
                    f"{os.path.relpath(bundle, ROOT) if bundle.resolve().is_relative_to(ROOT) else bundle.name}"
                    + (f" --first {first}" if first else ""),
         "bundle": os.path.relpath(bundle, ROOT) if bundle.resolve().is_relative_to(ROOT) else bundle.name,
         "bundle_name": b.manifest.get("name"), "weights": (b.manifest.get("source") or {}).get("weights", "?"),
         "views": clf.views_name, "in_use": {"confirm": PLATELET_CONFIRM_ABOVE, "clump": PLATELET_KIND_ABOVE},
         "frames": {k: len(v) for k, v in splits.items()}, "pbc_fields": len(fields),
         "confirm": [{"level": c, "choose": bccd_rates(choose, classes, c, PLATELET_KIND_ABOVE),
                      "test": bccd_rates(splits["test"], classes, c, PLATELET_KIND_ABOVE)} for c in CONFIRM_LEVELS],
         "clump": [{"level": k, "choose": bccd_rates(choose, classes, PLATELET_CONFIRM_ABOVE, k),
                    "test": bccd_rates(splits["test"], classes, PLATELET_CONFIRM_ABOVE, k),
                    "pbc": pbc_rates(fields, classes, k)} for k in CLUMP_LEVELS]}
    r["chosen"] = {"confirm": choose_confirm(r["confirm"])}
    md = to_markdown(r)
    write_result(out / "identify_levels", r, md)
    click.echo(md)


if __name__ == "__main__":
    main()
