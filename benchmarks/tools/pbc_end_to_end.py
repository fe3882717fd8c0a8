"""End to end on full PBC microscope fields: segment -> crop -> classify, against the labels.

    python -m hemaedge.benchmarks.tools.pbc_end_to_end                       # segmentation only
    python -m hemaedge.benchmarks.tools.pbc_end_to_end --bundle BUNDLE       # + accuracy

Each field of ../shared/data/pbc_raw_val shows one labelled cell near its centre. A field
counts as "found" when the detection nearest the field centre has a box containing the centre.
With a bundle, that detection's crop is classified (a field where nothing was found counts as
wrong) and the accuracy is reported next to the same bundle's accuracy on the pre-cropped
128 px images of ../shared/data/bloodmnist128/val (the crops BloodMNIST cut from the same
fields). Three crop modes are compared: a side of 3 red-cell diameters (the runtime default,
the magnification read off the smear), the cell's own box / cell fraction, and a fixed 200 px
square (what BloodMNIST cut at this magnification).

Results: benchmarks/results/pbc_end_to_end.{json,md}
"""
from __future__ import annotations

import csv
import datetime as dt
import os
from collections import Counter, defaultdict
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import machine
from hemaedge.edge.cli_support import FiniteFloat
from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
from hemaedge.edge.ruler import Ruler
from hemaedge.edge.tta import bundle_views, predict_views
from hemaedge.edge.segment import (DEFAULT_CELL_FRACTION, DEFAULT_RBC_FACTOR, SegmentParams, centre_in, extract_crop,
                                   extract_crops, nearest_to, segment)

RESULTS = Path(__file__).resolve().parents[1] / "results"
FIXED_SIDE = 200  # BloodMNIST: PBC fields centre-cropped to 200x200


def class_index(bundle_classes: list[str], dataset_classes: list[str]) -> dict[str, int]:
    """Dataset class name -> bundle output index, by name (case/space-insensitive)."""
    norm = lambda s: s.lower().replace(" ", "_").replace("-", "_")
    by_name = {norm(c): i for i, c in enumerate(bundle_classes)}
    missing = [c for c in dataset_classes if norm(c) not in by_name]
    if missing:
        raise click.ClickException(f"the bundle's classes {bundle_classes} lack {missing}: not a BloodMNIST/PBC model")
    return {c: by_name[norm(c)] for c in dataset_classes}


class Classifier:
    def __init__(self, bundle_path, threads):
        from hemaedge.edge.backends import load_backend
        from hemaedge.edge.bundle import load_bundle

        self.bundle = load_bundle(bundle_path)
        self.backend = load_backend(self.bundle, threads=threads)
        self.views_name, self.views = bundle_views(self.bundle.manifest)  # the device's test-time views

    def predict(self, images: list[np.ndarray], batch: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch):
            x = prepare_batch(images[i:i + batch], self.bundle.contract)
            out.append(predict_views(self.backend.predict, x, self.views).argmax(1))
        return np.concatenate(out) if out else np.zeros(0, int)


def precropped_accuracy(clf: Classifier, val_dir: Path, idx: dict[str, int], limit_files: set | None) -> dict:
    files, labels = [], []
    for cls, i in idx.items():
        for f in sorted((val_dir / cls).glob("*.jpg")):
            if limit_files is None or f.name in limit_files:
                files.append(f)
                labels.append(i)
    preds = []
    for k in tqdm(range(0, len(files), 64), desc="pre-cropped val", unit="batch"):
        preds.append(clf.predict([read_image_rgb(f) for f in files[k:k + 64]]))
    preds = np.concatenate(preds) if preds else np.zeros(0, int)
    return {"images": len(files), "accuracy": round(float(np.mean(preds == np.array(labels))), 4) if files else None}


def run(data: Path, bloodmnist_val: Path, bundle, threads, limit, cell_fraction, method,
        rbc_factor: float = DEFAULT_RBC_FACTOR) -> dict:
    rows = list(csv.DictReader(open(data / "labels.csv", encoding="utf-8")))
    if limit:
        rows = rows[:: max(1, len(rows) // limit)][:limit]
    params = SegmentParams(method=method)
    clf = Classifier(bundle, threads) if bundle else None
    dataset_classes = sorted({r["class"] for r in rows}, key=lambda c: int(next(r["label"] for r in rows if r["class"] == c)))
    idx = class_index(clf.bundle.classes, dataset_classes) if clf else None
    found = Counter()
    total = Counter()
    crops = {"rbc": [], "cell": [], "fixed": []}
    truth = []
    sides = defaultdict(list)
    rbc_sides = defaultdict(list)
    tracker = Ruler(same_slide=True)  # one microscope: a running estimate, as in a live run
    for r in tqdm(rows, desc="fields", unit="field"):
        img = read_image_rgb(data / r["file"])
        h, w = img.shape[:2]
        c = (w / 2.0, h / 2.0)
        d = nearest_to(segment(img, params, cell_fraction), c)
        diameter = tracker.read(img, params).diameter
        rbc_side = int(round(rbc_factor * diameter)) if diameter else None
        ok = d is not None and centre_in(d.box, c)
        total[r["class"]] += 1
        found[r["class"]] += ok
        if ok:
            sides[r["class"]].append(d.crop[2])
            rbc_sides[r["class"]].append(rbc_side or d.crop[2])
        if clf:
            truth.append(idx[r["class"]] if ok else -1)  # not found: wrong whatever the model says
            if ok:
                crops["cell"].append(extract_crop(img, d.crop))
                crops["rbc"].append(extract_crop(img, (d.crop[0], d.crop[1], rbc_side or d.crop[2])))
                crops["fixed"].append(extract_crop(img, (d.crop[0], d.crop[1], FIXED_SIDE)))
            else:
                for mode in crops:
                    crops[mode].append(np.zeros((8, 8, 3), np.uint8))
    report = {
        "fields": sum(total.values()),
        "found": sum(found.values()),
        "found_fraction": round(sum(found.values()) / max(1, sum(total.values())), 4),
        "per_class": {c: {"fields": total[c], "found": found[c], "found_fraction": round(found[c] / total[c], 4),
                          "median_crop_side_cell": float(np.median(sides[c])) if sides[c] else None,
                          "median_crop_side_rbc": float(np.median(rbc_sides[c])) if rbc_sides[c] else None}
                      for c in dataset_classes},
        "segmentation": params.to_dict(), "cell_fraction": cell_fraction, "rbc_factor": rbc_factor,
        "red_cell_diameter_px": tracker.diameter,
    }
    if clf:
        y = np.array(truth)
        report["bundle"] = {"path": str(bundle), "name": clf.bundle.manifest.get("name"),
                            "backend": clf.bundle.backend, "size_mb": round(clf.bundle.size_bytes / 1e6, 3),
                            "views": clf.views_name,
                            "weights": (clf.bundle.manifest.get("source") or {}).get("weights", "unknown weights")}
        for mode in ("rbc", "cell", "fixed"):
            pred = clf.predict(crops[mode])
            report[f"end_to_end_accuracy_{mode}"] = round(float(np.mean(pred == y)), 4)
            for c in dataset_classes:
                m = np.array([r["class"] == c for r in rows])
                report["per_class"][c][f"accuracy_{mode}"] = round(float(np.mean(pred[m] == y[m])), 4)
        names = {f"val_{int(r['bloodmnist_index']):05d}.jpg" for r in rows} if limit else None
        report["precropped"] = precropped_accuracy(clf, bloodmnist_val, idx, names)
        report["counting"] = count_fields(data, rows, clf, params, threads, cell_fraction, rbc_factor)
    return report


def count_fields(data: Path, rows: list[dict], clf: "Classifier", params: SegmentParams, threads: int,
                 cell_fraction: float, rbc_factor: float) -> dict:
    """Nucleated cells counted per field and the central cell's class, before and after the
    counting rules, in one run on the same fields.

    before: the pipeline of main before issue 12 (frame-fraction size limits, one running
    red-cell ruler for the folder, every crop classified, a cell counted as nucleated when its
    class is not "platelet"); after: `CellClassifier` + `CountingSession` as `edge run` uses them
    on an image folder (each field its own ruler, size limits in red-cell diameters, kind/class
    rules, cells cut by the frame edge not counted). A field's nucleated count is right when it is
    1 (0 for the platelet fields, whose labelled cell is a platelet).
    """
    from hemaedge.edge.counting import CountingSession
    from hemaedge.edge.identify import PLATELET, UNIDENTIFIED
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.sources import Frame

    classes = clf.bundle.classes
    after_clf = CellClassifier(clf.bundle, clf.backend, params, cell_fraction=cell_fraction, rbc_factor=rbc_factor)
    session = CountingSession(after_clf, one_slide=False)
    ruler = Ruler(same_slide=True)
    out = {k: {"right": 0, "over": 0, "under": 0, "central_correct": 0, "central_unidentified": 0,
               "central_correct_top_class": 0,
               "per_class": defaultdict(lambda: [0, 0])} for k in ("before", "after")}
    for i, r in enumerate(tqdm(rows, desc="counting", unit="field")):
        img = read_image_rgb(data / r["file"])
        h, w = img.shape[:2]
        centre = (w / 2.0, h / 2.0)
        expected = 0 if r["class"] == PLATELET else 1
        # before
        d = ruler.read(img, params).diameter
        dets = segment(img, params, cell_fraction, int(round(rbc_factor * d)) if d else None)
        probs = clf.backend.predict(prepare_batch(extract_crops(img, dets), clf.bundle.contract)) if dets else None
        labels = [classes[k] for k in probs.argmax(1)] if dets else []
        n = sum(lab != PLATELET for lab in labels)
        near = nearest_to(dets, centre)
        central = labels[dets.index(near)] if near is not None and centre_in(near.box, centre) else None
        _tally(out["before"], n, expected, central, r["class"])
        # after
        res, extras = session.process(Frame(i, img, r["file"], 0.0))
        n = sum(det.kind == "wbc" and not det.at_edge for det in res.detections)  # unidentified ones too
        near = nearest_to(res.detections, centre)
        central = res.labels[res.detections.index(near)] if near is not None and centre_in(near.box, centre) else None
        _tally(out["after"], n, expected, central, r["class"])
        out["after"]["central_unidentified"] += central == UNIDENTIFIED
        if near is not None and centre_in(near.box, centre):  # the model's top class, before the rules
            out["after"]["central_correct_top_class"] += classes[int(res.probabilities[res.detections.index(near)].argmax())] == r["class"]
    fields = len(rows)
    report = {}
    for k, v in out.items():
        report[k] = {"fields": fields, "nucleated_count_right": round(v["right"] / fields, 4),
                     "fields_with_extra_nucleated": round(v["over"] / fields, 4),
                     "fields_missing_nucleated": round(v["under"] / fields, 4),
                     "central_cell_accuracy": round(v["central_correct"] / fields, 4),
                     "central_unidentified": round(v["central_unidentified"] / fields, 4),
                     "central_cell_accuracy_top_class": round((v["central_correct_top_class"] if k == "after"
                                                               else v["central_correct"]) / fields, 4),
                     "per_class_nucleated_count_right": {c: round(a / b, 4) for c, (a, b) in sorted(v["per_class"].items())}}
    report["after"]["differential"] = session.summary()
    return report


def _tally(acc: dict, n: int, expected: int, central: str | None, truth: str) -> None:
    acc["right"] += n == expected
    acc["over"] += n > expected
    acc["under"] += n < expected
    acc["central_correct"] += central == truth
    acc["per_class"][truth][0] += n == expected
    acc["per_class"][truth][1] += 1


def counting_markdown(c: dict) -> list[str]:
    b, a = c["before"], c["after"]
    pct = lambda v: f"{100 * v:.1f}%"
    lines = ["## Counting: nucleated cells per field and the central cell's class", "",
             "before = main's pipeline before issue 12 (frame-fraction size limits, one running red-cell ruler, "
             "every crop classified, nucleated = class not platelet); after = `edge run` on an image folder now "
             "(per-field ruler, sizes in red-cell diameters, kind/class rules, cells cut by the frame edge not counted). "
             "Right = 1 nucleated cell (0 in the platelet fields). Central-cell accuracy counts *unidentified* as wrong.", "",
             "| pipeline | fields | nucleated count right | extra nucleated | missing nucleated | central-cell accuracy | central cell unidentified | central-cell accuracy of the top class (no unidentified rule) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in (("before", b), ("after", a)):
        lines.append(f"| {name} | {v['fields']} | **{pct(v['nucleated_count_right'])}** | {pct(v['fields_with_extra_nucleated'])} | "
                     f"{pct(v['fields_missing_nucleated'])} | {pct(v['central_cell_accuracy'])} | {pct(v['central_unidentified'])} | "
                     f"{pct(v['central_cell_accuracy_top_class'])} |")
    lines += ["", "| class | count right before | count right after |", "|---|---|---|"]
    for cls in b["per_class_nucleated_count_right"]:
        lines.append(f"| {cls} | {pct(b['per_class_nucleated_count_right'][cls])} | {pct(a['per_class_nucleated_count_right'][cls])} |")
    return lines + [""]


def to_markdown(r: dict) -> str:
    lines = [f"# End to end on PBC fields ({r['date']})", "", f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']}  ", f"Segmentation: method `{r['segmentation']['method']}`, cell fraction "
             f"{r['cell_fraction']}, red-cell factor {r['rbc_factor']} (running red-cell diameter {r['red_cell_diameter_px']:.1f} px); "
             "a field is *found* when the detection nearest the centre contains the centre.", "",
             f"**Labelled central cell found in {r['found']} of {r['fields']} fields ({100 * r['found_fraction']:.1f}%).**", ""]
    has_acc = "end_to_end_accuracy_rbc" in r
    if has_acc:
        b = r["bundle"]
        pc = r["precropped"]
        lines += [f"Bundle: `{b['path']}` ({b['backend']}, {b['size_mb']} MB; weights: {b.get('weights', 'not recorded')}; "
                  f"test-time views `{b.get('views', 'off')}` in every classified row except the 'before' pipeline)", "",
                  "| pipeline | images | accuracy |", "|---|---|---|",
                  f"| pre-cropped BloodMNIST 128 px val | {pc['images']} | {100 * pc['accuracy']:.2f}% |",
                  f"| field → segment → crop of {r['rbc_factor']} red-cell diameters (default) → classify | {r['fields']} | {100 * r['end_to_end_accuracy_rbc']:.2f}% |",
                  f"| field → segment → crop scaled to the cell's own box → classify | {r['fields']} | {100 * r['end_to_end_accuracy_cell']:.2f}% |",
                  f"| field → segment → fixed {FIXED_SIDE} px crop → classify | {r['fields']} | {100 * r['end_to_end_accuracy_fixed']:.2f}% |", ""]
    else:
        lines += ["Accuracy: not measured here (needs a trained bundle: rerun with `--bundle`).", ""]
    head = ("| class | fields | found | median crop side px (red-cell / own box) |"
            + (" acc. red-cell crop | acc. own-box crop | acc. fixed 200 px |" if has_acc else ""))
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for c, v in r["per_class"].items():
        row = (f"| {c} | {v['fields']} | {100 * v['found_fraction']:.1f}% | "
               f"{v['median_crop_side_rbc']} / {v['median_crop_side_cell']} |")
        if has_acc:
            row += f" {100 * v['accuracy_rbc']:.1f}% | {100 * v['accuracy_cell']:.1f}% | {100 * v['accuracy_fixed']:.1f}% |"
        lines.append(row)
    if "counting" in r:
        lines += [""] + counting_markdown(r["counting"])
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=lambda: os.environ.get("HEMAEDGE_PBC_RAW_VAL", "../shared/data/pbc_raw_val"),
              show_default="../shared/data/pbc_raw_val", help="Folder with the PBC fields and labels.csv.")
@click.option("--bloodmnist-val", type=click.Path(path_type=Path), default="../shared/data/bloodmnist128/val",
              show_default=True, help="Pre-cropped 128 px validation images (ImageFolder) for the comparison.")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A trained 8-class BloodMNIST bundle; without it only segmentation is measured.")
@click.option("--threads", default=2, show_default=True)
@click.option("--spread", "limit", type=click.IntRange(min=1), metavar="N",
              help="Evaluate N fields spread evenly over the set (quick check).")
@click.option("--cell-fraction", default=DEFAULT_CELL_FRACTION, show_default=True, type=FiniteFloat(0.05, 1.0))
@click.option("--rbc-factor", default=DEFAULT_RBC_FACTOR, show_default=True, type=FiniteFloat(0.5, 20),
              help="Crop side in red-cell diameters (the runtime's default crop mode).")
@click.option("--method", default="stain", show_default=True, type=click.Choice(["stain", "otsu"]))
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(data, bloodmnist_val, bundle, threads, limit, cell_fraction, rbc_factor, method, out):
    """Fraction of PBC fields whose labelled cell is found, and end-to-end accuracy with a bundle."""
    report = run(data, bloodmnist_val, bundle, threads, limit, cell_fraction, method, rbc_factor)
    args = [f"--bundle {bundle}"] if bundle else []
    args += [f"--spread {limit}"] if limit else []
    args += [f"--method {method}"] if method != "stain" else []
    args += [f"--cell-fraction {cell_fraction}"] if cell_fraction != DEFAULT_CELL_FRACTION else []
    args += [f"--rbc-factor {rbc_factor}"] if rbc_factor != DEFAULT_RBC_FACTOR else []
    report = {"date": dt.date.today().isoformat(), "machine": machine(),
              "command": " ".join(["python -m hemaedge.benchmarks.tools.pbc_end_to_end", *args]), **report}
    write_result(out / "pbc_end_to_end", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
