"""What drives the zero-shot errors on BCCD: the same white cells classified under controlled
changes of the crop and the input, beside the training domain (PBC fields, BloodMNIST val).

    python -m hemaedge.benchmarks.tools.zero_shot_errors --bundle src/hemaedge/models/default \\
        --pbc-every 3 --name default

Each BCCD frame of the chosen split (one white-cell label, one WBC box; `bccd_wbc.frames`) and
every `--pbc-every`-th PBC field goes through the device's segmentation and ruler
(`CellClassifier.find_cells`); the detection matching the labelled cell (BCCD: the WBC box,
as in bccd_wbc; PBC: the detection nearest the field centre containing it) is then cropped and
classified under each *variant*:

  crop scale   side x 0.8 / 0.9 / 1.1 / 1.25 (what a ruler error of that size does)
  centring     centre moved by 10 % of the side
  colour       no normalisation; lab-anchors to BloodMNIST train's reference colours
  blur         Gaussian blur (sigma 1 / 2 px in the frame) and an unsharp mask
  averaging    views averaged in probability (`edge.tta`): 4 flips, 8 dihedral, 3 scales
               (0.9 / 1 / 1.1), 8 dihedral x 3 scales

Reported: top-class accuracy per variant (BCCD, PBC, and BloodMNIST val for the view-averaging
variants, which need no segmentation), the BCCD confusion matrix and per-class recall of the
bundle's own setting, and a contact sheet of the misclassified BCCD crops
(docs/img/zero_shot_errors_NAME.png). Choose on `val`/`train` only; never on BCCD test.

Writes benchmarks/results/zero_shot_errors_NAME.{json,md}.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import os
from pathlib import Path

import click
import cv2
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.bccd_wbc import _Model, bloodmnist_reference, frames
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import machine, read_voc
from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
from hemaedge.edge.segment import centre_in, extract_crop, iou, nearest_to
from hemaedge.edge.tta import DIHEDRAL, FLIPS, dihedral_view

RESULTS = Path(__file__).resolve().parents[1] / "results"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


@dataclasses.dataclass
class Cell:
    image: np.ndarray  # the whole frame (uint8 RGB)
    crop: tuple  # (cx, cy, side) the device chose
    label: str


def _matched(clf, img, gt_box=None):
    """The detection of the labelled cell (BCCD: matching gt_box; PBC: nearest the centre)."""
    blank, _reading, dets, _crops = clf.find_cells(img)
    if blank:
        return None
    if gt_box is None:
        h, w = img.shape[:2]
        c = (w / 2.0, h / 2.0)
        d = nearest_to(dets, c)
        return d if d is not None and centre_in(d.box, c) else None
    best, best_iou = None, 0.0
    for d in dets:
        if d.kind != "wbc":
            continue
        v = iou(d.box, gt_box)
        if (v >= 0.3 or centre_in(gt_box, d.centre)) and v >= best_iou:
            best, best_iou = d, v
    return best


def bccd_cells(clf, data: Path, split: str) -> tuple[list[Cell], int]:
    rows = frames(data, split)
    cells = []
    for r in tqdm(rows, desc=f"BCCD {split}", unit="frame"):
        img = read_image_rgb(data / "JPEGImages" / f"{r['frame']}.jpg")
        d = _matched(clf, img, read_voc(data / "Annotations" / f"{r['frame']}.xml")["WBC"][0])
        if d is not None:
            cells.append(Cell(img, d.crop, r["categories"]))
    return cells, len(rows)


def pbc_cells(clf, data: Path, every: int) -> tuple[list[Cell], int]:
    rows = list(csv.DictReader(open(data / "labels.csv", encoding="utf-8")))[::every]
    cells = []
    for r in tqdm(rows, desc="PBC fields", unit="field"):
        img = read_image_rgb(data / r["file"])
        d = _matched(clf, img)
        if d is not None:
            cells.append(Cell(img, d.crop, r["class"]))
    return cells, len(rows)


def _scaled(c: Cell, s: float, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    cx, cy, side = c.crop
    return extract_crop(c.image, (int(round(cx + dx * side)), int(round(cy + dy * side)), max(8, int(round(side * s)))))


def _bordered(c: Cell, border: int) -> np.ndarray:
    """The crop with the part outside the frame filled by `border` (an OpenCV border type)
    instead of the device's replicated edge; BORDER_CONSTANT = the smear's background colour."""
    from hemaedge.edge.pipeline import background_colour

    cx, cy, side = c.crop
    pad = side
    value = [int(v) for v in background_colour(c.image)] if border == cv2.BORDER_CONSTANT else None
    big = cv2.copyMakeBorder(c.image, pad, pad, pad, pad, border, value=value)
    return extract_crop(big, (cx + pad, cy + pad, side))


def _blur(crop: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(crop, (0, 0), sigma)


def _unsharp(crop: np.ndarray) -> np.ndarray:
    return cv2.addWeighted(crop, 1.8, cv2.GaussianBlur(crop, (0, 0), 2.0), -0.8, 0)


# name -> (views of a cell: list of uint8 crops, colour setting); views are averaged in probability
CROP_VARIANTS = {
    "bundle's own setting": (lambda c: [_scaled(c, 1.0)], "bundle"),
    "crop side x0.8": (lambda c: [_scaled(c, 0.8)], "bundle"),
    "crop side x0.9": (lambda c: [_scaled(c, 0.9)], "bundle"),
    "crop side x1.1": (lambda c: [_scaled(c, 1.1)], "bundle"),
    "crop side x1.25": (lambda c: [_scaled(c, 1.25)], "bundle"),
    "centre moved 10% right": (lambda c: [_scaled(c, 1.0, 0.1, 0.0)], "bundle"),
    "centre moved 10% down": (lambda c: [_scaled(c, 1.0, 0.0, 0.1)], "bundle"),
    "off-frame part mirrored (not replicated)": (lambda c: [_bordered(c, cv2.BORDER_REFLECT_101)], "bundle"),
    "off-frame part filled with the background colour": (lambda c: [_bordered(c, cv2.BORDER_CONSTANT)], "bundle"),
    "no colour normalisation": (lambda c: [_scaled(c, 1.0)], "none"),
    "lab-anchors to BloodMNIST train reference": (lambda c: [_scaled(c, 1.0)], "reference"),
    "blur sigma 1 px": (lambda c: [_blur(_scaled(c, 1.0), 1.0)], "bundle"),
    "blur sigma 2 px": (lambda c: [_blur(_scaled(c, 1.0), 2.0)], "bundle"),
    "unsharp mask": (lambda c: [_unsharp(_scaled(c, 1.0))], "bundle"),
    "4 flips averaged": (lambda c: [dihedral_view(_scaled(c, 1.0), k) for k in FLIPS], "bundle"),
    "8 dihedral views averaged": (lambda c: [dihedral_view(_scaled(c, 1.0), k) for k in DIHEDRAL], "bundle"),
    "3 scales (0.9/1/1.1) averaged": (lambda c: [_scaled(c, s) for s in (0.9, 1.0, 1.1)], "bundle"),
    "8 dihedral x 3 scales averaged": (lambda c: [dihedral_view(_scaled(c, s), k) for s in (0.9, 1.0, 1.1)
                                                  for k in DIHEDRAL], "bundle"),
}
# the variants that need no segmentation (checked on the pre-cropped BloodMNIST val images too)
IMAGE_VARIANTS = {
    "bundle's own setting": lambda im: [im],
    "4 flips averaged": lambda im: [dihedral_view(im, k) for k in FLIPS],
    "8 dihedral views averaged": lambda im: [dihedral_view(im, k) for k in DIHEDRAL],
}


class Scorer:
    def __init__(self, bundle, backend, contracts: dict):
        self.bundle, self.backend, self.contracts = bundle, backend, contracts

    def probabilities(self, views_per_cell: list[list[np.ndarray]], colour: str, batch: int = 32) -> np.ndarray:
        flat = [v for views in views_per_cell for v in views]
        out = []
        for i in range(0, len(flat), batch):
            out.append(self.backend.predict(prepare_batch(flat[i:i + batch], self.contracts[colour])))
        p = np.concatenate(out) if out else np.zeros((0, len(self.bundle.classes)), np.float32)
        k = len(views_per_cell[0]) if views_per_cell else 1
        return p.reshape(len(views_per_cell), k, -1).mean(axis=1)


def _accuracy(p: np.ndarray, labels: list[str], classes: list[str], n_total: int) -> dict:
    pred = [classes[i] for i in p.argmax(1)]
    right = sum(a == b for a, b in zip(pred, labels))
    per_class = {c: {"cells": sum(lab == c for lab in labels),
                     "right": sum(a == b == c for a, b in zip(pred, labels))} for c in sorted(set(labels))}
    return {"right": right, "of": n_total, "accuracy": round(right / n_total, 4) if n_total else None,
            "per_class": per_class, "predicted": pred}


def contact_sheet(cells: list[Cell], pred: list[str], conf: np.ndarray, path: Path, tile: int = 128) -> int:
    wrong = [(c, p, q) for c, p, q in zip(cells, pred, conf) if p != c.label]
    if not wrong:
        return 0
    cols = 8
    rows = (len(wrong) + cols - 1) // cols
    sheet = np.full((rows * (tile + 30), cols * tile, 3), 255, np.uint8)
    for i, (c, p, q) in enumerate(wrong):
        y, x = (i // cols) * (tile + 30), (i % cols) * tile
        sheet[y:y + tile, x:x + tile] = cv2.resize(_scaled(c, 1.0), (tile, tile), interpolation=cv2.INTER_AREA)
        for j, text in enumerate((f"true {c.label[:12]}", f"got {p[:10]} {q:.2f}")):
            cv2.putText(sheet, text, (x + 2, y + tile + 12 + 13 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1,
                        cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return len(wrong)


def confusion(labels: list[str], pred: list[str], classes: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix

    truth = sorted(set(labels))
    m = confusion_matrix(labels, pred, labels=classes)
    return {t: {c: int(m[classes.index(t), j]) for j, c in enumerate(classes) if m[classes.index(t), j]} for t in truth}


def to_markdown(r: dict) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v['accuracy']:.1f}% ({v['right']}/{v['of']})"
    lines = [f"# What drives the zero-shot BCCD errors ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Bundle: `{r['bundle']}` ({r['bundle_name']}). BCCD split `{r['split']}`: {r['bccd_frames']} frames, "
             f"labelled WBC found in {r['bccd_found']}; PBC: every {r['pbc_every']}th field of pbc_raw_val "
             f"({r['pbc_fields']} fields, central cell found in {r['pbc_found']}). Accuracy = the top class against "
             "the label (no unidentified rule); a cell not found counts as wrong. Crops from the device's "
             "segmentation and per-field ruler; views averaged in (temperature-scaled) probability.", "",
             "| variant | BCCD | PBC fields | BloodMNIST val (pre-cropped) |", "|---|---|---|---|"]
    for name, v in r["variants"].items():
        lines.append(f"| {name} | {pct(v['bccd'])} | {pct(v['pbc'])} | {pct(v.get('bloodmnist_val'))} |")
    base = r["variants"]["bundle's own setting"]["bccd"]
    lines += ["", "BCCD per-class recall, bundle's own setting vs each variant (right / cells found):", "",
              "| variant | " + " | ".join(base["per_class"]) + " |", "|---|" + "---|" * len(base["per_class"])]
    for name, v in r["variants"].items():
        pc = v["bccd"]["per_class"]
        lines.append(f"| {name} | " + " | ".join(f"{pc[c]['right']}/{pc[c]['cells']}" for c in base["per_class"]) + " |")
    lines += ["", "BCCD confusion matrix, bundle's own setting (rows: label; counts of the top class):", ""]
    for t, row in r["confusion"].items():
        lines.append(f"- {t}: " + ", ".join(f"{c} {n}" for c, n in sorted(row.items(), key=lambda x: -x[1])))
    if r.get("contact_sheet"):
        lines += ["", f"Misclassified BCCD crops ({r['contact_sheet_n']}, bundle's own setting, as the model sees "
                      f"them before colour normalisation): `{r['contact_sheet']}`"]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--bccd", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=lambda: os.environ.get("HEMAEDGE_BCCD", "../shared/data/bccd"), show_default="../shared/data/bccd")
@click.option("--pbc", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default="../shared/data/pbc_raw_val", show_default=True)
@click.option("--bloodmnist128", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default="../shared/data/bloodmnist128", show_default=True)
@click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True,
              help="BCCD split to analyse (never test: this tool is for choosing).")
@click.option("--pbc-every", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--variant", "only", multiple=True, type=click.Choice(list(CROP_VARIANTS)),
              help="Only these variants (repeatable; default all).")
@click.option("--name", required=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(bundle, bccd, pbc, bloodmnist128, split, pbc_every, only, name, threads, out):
    """BCCD zero-shot error analysis: accuracy under crop/colour/blur/view-averaging variants."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier

    b = load_bundle(bundle)
    backend = load_backend(b, threads=threads)
    clf = CellClassifier(_Model(list(b.classes), b.contract, b.manifest), backend)
    ref = bloodmnist_reference(bloodmnist128)
    contracts = {"bundle": b.contract, "none": dataclasses.replace(b.contract, normalize=None),
                 "reference": dataclasses.replace(b.contract, normalize=ref)}
    scorer = Scorer(b, backend, contracts)
    classes = list(b.classes)
    bc, n_bccd = bccd_cells(clf, bccd, split)
    pc, n_pbc = pbc_cells(clf, pbc, pbc_every)
    val_files = sorted((bloodmnist128 / "val").glob("*/*.jpg"))
    val_images = [read_image_rgb(f) for f in val_files]
    val_labels = [f.parent.name for f in val_files]
    variants = {k: CROP_VARIANTS[k] for k in (only or CROP_VARIANTS)}
    variants.setdefault("bundle's own setting", CROP_VARIANTS["bundle's own setting"])
    report = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "bundle": str(bundle), "bundle_name": b.manifest.get("name"), "split": split,
              "bccd_frames": n_bccd, "bccd_found": len(bc), "pbc_every": pbc_every, "pbc_fields": n_pbc,
              "pbc_found": len(pc), "reference": ref,
              "command": "python -m hemaedge.benchmarks.tools.zero_shot_errors " + " ".join(
                  [f"--bundle {bundle}", f"--split {split}", f"--pbc-every {pbc_every}",
                   *[f"--variant '{v}'" for v in only], f"--name {name}"]),
              "variants": {}}
    for vname, (views, colour) in tqdm(variants.items(), desc="variants", unit="variant"):
        pb = scorer.probabilities([views(c) for c in bc], colour)
        pp = scorer.probabilities([views(c) for c in pc], colour)
        row = {"bccd": _accuracy(pb, [c.label for c in bc], classes, n_bccd),
               "pbc": _accuracy(pp, [c.label for c in pc], classes, n_pbc)}
        if vname in IMAGE_VARIANTS:
            pv = scorer.probabilities([IMAGE_VARIANTS[vname](im) for im in val_images], colour)
            row["bloodmnist_val"] = _accuracy(pv, val_labels, classes, len(val_images))
            row["bloodmnist_val"].pop("predicted")
        if vname == "bundle's own setting":
            report["confusion"] = confusion([c.label for c in bc], row["bccd"]["predicted"], classes)
            sheet = DOCS_IMG / f"zero_shot_errors_{name}.jpg"
            report["contact_sheet_n"] = contact_sheet(bc, row["bccd"]["predicted"], pb.max(1), sheet)
            report["contact_sheet"] = str(sheet.relative_to(DOCS_IMG.parents[1])) if report["contact_sheet_n"] else None
        row["bccd"]["confidence"] = [round(float(x), 4) for x in pb.max(1)]
        row["bccd"]["labels"] = [c.label for c in bc]
        row["pbc"].pop("predicted")
        report["variants"][vname] = row
        click.echo(f"{vname}: BCCD {row['bccd']['right']}/{n_bccd}, PBC {row['pbc']['right']}/{n_pbc}")
    write_result(out / f"zero_shot_errors_{name}", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
