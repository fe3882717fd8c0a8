"""What one Lab round trip per crop changes: the packaged default's pixels and answers.

    python -m hemaedge.benchmarks.tools.lab_round_trip --bloodmnist-val ../shared/data/bloodmnist128/val \
        --pbc ../shared/data/pbc_raw_val --pbc-fields 400

An input contract with `one_lab_pass` does colour normalisation and CLAHE in one
RGB->Lab->RGB conversion (both work in Lab); without it (the packaged default, and the pixels
it was trained on) the image goes back to uint8 RGB in between and to Lab again. That round
trip clips Lab colours outside the RGB gamut and rounds, so the pixels are near, not equal.
This tool runs both on the same crops with the packaged default (its own test-time views) and
reports the pixel differences and the accuracy of each:
  * BloodMNIST-128 val (the pre-cropped images; validation split, nothing chosen on it);
  * PBC fields (pbc_raw_val, every k-th field): the crop `edge run` cuts around the cell nearest
    the field centre (3 red-cell diameters, as pbc_end_to_end's runtime mode).
Results: benchmarks/results/lab_round_trip.{json,md}.
"""
from __future__ import annotations

import csv
import datetime as dt
import sys
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.pbc_end_to_end import Classifier, class_index
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import machine
from hemaedge.edge import preprocess as pp
from hemaedge.edge.ruler import Ruler
from hemaedge.edge.segment import DEFAULT_RBC_FACTOR, SegmentParams, centre_in, extract_crop, nearest_to, segment
from hemaedge.edge.tta import predict_views

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "src/hemaedge/models/default"


def compare(clf: Classifier, images: list[np.ndarray], labels: np.ndarray) -> dict:
    c = clf.bundle.contract
    one_pass = pp.InputContract.from_dict({**c.to_dict(), "one_lab_pass": True})
    diffs, preds = [], {"one": [], "two": []}
    for k in range(0, len(images), 32):
        chunk = images[k:k + 32]
        one = np.stack([pp.apply_preprocess(im, one_pass) for im in chunk])
        two = np.stack([pp.apply_preprocess(im, c) for im in chunk])
        diffs.append(np.abs(one.astype(np.int16) - two))
        for name, x in (("one", one), ("two", two)):
            preds[name].append(predict_views(clf.backend.predict, pp.batch_tensor(x, c), clf.views).argmax(1))
    d = np.concatenate(diffs)
    p1, p2 = np.concatenate(preds["one"]), np.concatenate(preds["two"])
    per_image_max = d.reshape(len(d), -1).max(axis=1)
    return {"images": len(images), "max_pixel_difference": int(d.max()),
            "mean_pixel_difference": round(float(d.mean()), 3),
            "pixels_changed_fraction": round(float((d > 0).mean()), 4),
            "p99_9_pixel_difference": float(np.percentile(d, 99.9)),
            "images_with_max_difference_over_10": int((per_image_max > 10).sum()),
            "accuracy_one_round_trip": round(float(np.mean(p1 == labels)), 4),
            "accuracy_two_round_trips": round(float(np.mean(p2 == labels)), 4),
            "same_class_fraction": round(float(np.mean(p1 == p2)), 4),
            "answers_changed": int((p1 != p2).sum())}


def run(bloodmnist_val: Path, pbc: Path, pbc_fields: int, threads: int) -> dict:
    clf = Classifier(DEFAULT_BUNDLE, threads)
    rows = list(csv.DictReader(open(pbc / "labels.csv", encoding="utf-8")))
    classes = sorted({r["class"] for r in rows}, key=lambda c: int(next(r["label"] for r in rows if r["class"] == c)))
    idx = class_index(clf.bundle.classes, classes)
    files = [(f, idx[cls]) for cls in classes for f in sorted((bloodmnist_val / cls).glob("*.jpg"))]
    bm = compare(clf, [pp.read_image_rgb(f) for f, _ in tqdm(files, desc="bloodmnist val", unit="img")],
                 np.array([y for _, y in files]))
    rows = rows[:: max(1, len(rows) // pbc_fields)][:pbc_fields]
    params, ruler = SegmentParams(), Ruler(same_slide=True)
    crops, labels = [], []
    for r in tqdm(rows, desc="pbc fields", unit="field"):
        img = pp.read_image_rgb(pbc / r["file"])
        h, w = img.shape[:2]
        d = nearest_to(segment(img, params), (w / 2.0, h / 2.0))
        diameter = ruler.read(img, params).diameter
        if d is None or not centre_in(d.box, (w / 2.0, h / 2.0)):
            continue  # not found: no crop to compare (the same for both)
        side = int(round(DEFAULT_RBC_FACTOR * diameter)) if diameter else d.crop[2]
        crops.append(extract_crop(img, (d.crop[0], d.crop[1], side)))
        labels.append(idx[r["class"]])
    m = clf.bundle.manifest
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "command": "python -m hemaedge.benchmarks.tools.lab_round_trip " + " ".join(sys.argv[1:]),
            "bundle": m.get("name"), "weights": (m.get("source") or {}).get("weights", "unknown weights"),
            "views": clf.views_name, "bloodmnist128_val": bm,
            "pbc_fields": {"fields": len(rows), **compare(clf, crops, np.array(labels))}}


def to_markdown(r: dict) -> str:
    keys = [("images", "crops compared"), ("max_pixel_difference", "max pixel difference (levels)"),
            ("p99_9_pixel_difference", "99.9th percentile difference"),
            ("mean_pixel_difference", "mean difference"), ("pixels_changed_fraction", "channel values changed"),
            ("images_with_max_difference_over_10", "crops with some value > 10 levels off"),
            ("accuracy_two_round_trips", "accuracy, two Lab passes (the default's contract)"),
            ("accuracy_one_round_trip", "accuracy, one Lab pass (`one_lab_pass`)"),
            ("same_class_fraction", "same class"), ("answers_changed", "answers changed")]
    bm, pbc = r["bloodmnist128_val"], r["pbc_fields"]
    lines = [f"# One Lab round trip per crop: what it changes ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Weights: {r['bundle']} ({r['weights']}), views `{r['views']}`.  ",
             "Two passes (the default): normalisation RGB->Lab->table->RGB, then CLAHE RGB->Lab->CLAHE->RGB. One "
             "pass (`one_lab_pass: true` in the input contract): RGB->Lab->table->CLAHE->RGB, one conversion pair less per "
             "crop (its cost: `apply_preprocess_one_lab_pass` in speed_profile.md). The uint8 RGB in between clipped Lab colours outside the RGB gamut and rounded; the largest "
             "differences are such pixels after CLAHE. The default was trained on two passes, so one pass is for "
             "models trained with it (`hemaedge train finetune --one-lab-pass`), not a free switch.", "",
             f"| | BloodMNIST-128 val | PBC fields ({pbc['fields']} fields, device crop) |", "|---|---|---|"]
    lines += [f"| {label} | {bm[k]} | {pbc[k]} |" for k, label in keys]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bloodmnist-val", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--pbc", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--pbc-fields", type=click.IntRange(1), default=400, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def main(bloodmnist_val, pbc, pbc_fields, threads, out):
    """Pixels and answers of the packaged default with one Lab pass per crop against two."""
    r = run(bloodmnist_val, pbc, pbc_fields, threads)
    out.mkdir(parents=True, exist_ok=True)
    write_result(out / "lab_round_trip", r, to_markdown(r))
    click.echo(to_markdown(r))


if __name__ == "__main__":
    main()
