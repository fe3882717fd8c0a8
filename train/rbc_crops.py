"""Point-labelled red-cell frames (Chula RBC-12) -> single-cell crops as an ImageFolder tree.

Chula RBC-12 marks each red cell by one point (its centre) and a type; the frames are
640x480 smears at 1000x. A classifier needs one crop per cell, and the device cuts its crops
around detected red cells at a side of `side_factor` red-cell diameters (edge/rbc.py), so the
crops here are cut the same way: centred on the labelled point, side = `side_factor` x the
red-cell diameter. The diameter is the median over all frames of the data set of the ruler
the device uses (`ruler.red_cell_diameter`): one microscope, one magnification, and a cell's
size relative to its neighbours (macrocyte vs microcyte) is kept, which per-cell scaling would
erase.

Split: by FRAME (never one frame's cells in two splits), seeded shuffle of the frame ids,
70/10/20 train/val/test. The split is written to manifest.csv with every crop, so it can be
checked and reused.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hemaedge.edge.atomic import replace_dir
from hemaedge.edge.errors import DataError, UsageError
from hemaedge.edge.preprocess import FrameFormatError, read_image_rgb
from hemaedge.edge.rbc import DEFAULT_SIDE_FACTOR, crop_side, rbc_crops
from hemaedge.edge.ruler import red_cell_diameter

log = logging.getLogger(__name__)

# Chula RBC-12's label ids (its README and the paper, arXiv:2012.01321); folder-safe names.
CHULA_TYPES = ("normal", "macrocyte", "microcyte", "spherocyte", "target_cell", "stomatocyte",
               "ovalocyte", "teardrop", "burr_cell", "schistocyte", "uncategorised", "hypochromia",
               "elliptocyte")
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.10, "test": 0.20}
DEFAULT_CROP_SIZE = 64
MANIFEST_FIELDS = ("split", "frame", "x", "y", "type", "class", "file")
# The crops' geometry in the device ruler's units, read by the export into the bundle manifest's
# `red_cells` section, so the device cuts its crops like the training crops even if the ruler or
# the crop side changes later (edge.rbc_morphology reads `crop_side_factor`).
GEOMETRY_FILE = "rbc_crops.json"


def crop_geometry(side_px: int, ruler_diameter_px: float, size: int) -> dict:
    return {"crop_side_factor": round(side_px / ruler_diameter_px, 4), "crop_side_px": int(side_px),
            "ruler_diameter_px": round(float(ruler_diameter_px), 2), "size": int(size),
            "ruler": "hemaedge.edge.ruler.red_cell_diameter (median over the data set's frames)"}


@dataclass(frozen=True)
class LabelledFrame:
    name: str          # frame id (file stem)
    image: Path
    points: tuple      # ((x, y, type_id), ...)


def read_point_labels(path: Path) -> tuple:
    """`x y type` per line; a malformed line is a DataError naming the file and line."""
    points = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            x, y, t = (int(float(v)) for v in line.split()[:3])
        except ValueError:
            raise DataError(f"{path}:{n}: expected 'x y type', got {line!r}") from None
        if not 0 <= t < len(CHULA_TYPES):
            raise DataError(f"{path}:{n}: type {t} is not one of Chula RBC-12's 0..{len(CHULA_TYPES) - 1}")
        points.append((x, y, t))
    return tuple(points)


def read_chula(root) -> list[LabelledFrame]:
    """Frames with their labels from `root/images/N.jpg` + `root/labels/N.txt`, sorted by id."""
    root = Path(root)
    images, labels = root / "images", root / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise DataError(f"{root}: expected the Chula RBC-12 layout images/N.jpg + labels/N.txt")
    frames = []
    for lab in labels.glob("*.txt"):
        img = next((images / f"{lab.stem}{s}" for s in (".jpg", ".png", ".bmp") if (images / f"{lab.stem}{s}").is_file()),
                   None)
        if img is None:
            log.warning("%s: no image for this label file; skipped", lab)
            continue
        frames.append(LabelledFrame(lab.stem, img, read_point_labels(lab)))
    if not frames:
        raise DataError(f"{root}: no labelled frames found")
    frames.sort(key=lambda f: (len(f.name), f.name))
    return frames


def split_frames(names, seed: int = 42, fractions=None) -> dict:
    """frame name -> split; a seeded permutation of the frames, cut by the fractions."""
    fractions = fractions or SPLIT_FRACTIONS
    names = sorted(names, key=lambda n: (len(n), n))
    order = np.random.default_rng(seed).permutation(len(names))
    n_train = int(round(fractions["train"] * len(names)))
    n_val = int(round(fractions["val"] * len(names)))
    out = {}
    for rank, i in enumerate(order):
        out[names[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def chula_frames(root: Path, split: str) -> list[LabelledFrame]:
    """The Chula frames of one split of the seeded frame-level split (`split_frames`), or "all"."""
    frames = read_chula(root)
    if split == "all":
        return frames
    splits = split_frames([f.name for f in frames])
    return [f for f in frames if splits[f.name] == split]


def dataset_diameter(frames, max_frames: int = 100) -> float:
    """Median red-cell diameter (px) over evenly spaced frames: the data set's magnification."""
    pick = frames[:: max(1, len(frames) // max_frames)]
    values = []
    for f in pick:
        try:
            d = red_cell_diameter(read_image_rgb(f.image))
        except FrameFormatError:
            continue
        if d:
            values.append(d)
    if not values:
        raise DataError("could not measure the red-cell diameter on any frame; pass --diameter PX")
    return float(np.median(values))


def make_rbc_crops(root, out, *, size: int = DEFAULT_CROP_SIZE, side_factor: float = DEFAULT_SIDE_FACTOR,
                   diameter: float | None = None, seed: int = 42, exclude=(), force: bool = False,
                   command: str = "", progress=None) -> dict:
    """Write OUT/{train,val,test}/{class}/<frame>_<i>.png, classes.txt, manifest.csv, README.md.

    Returns a summary (counts per split and class, diameter, skipped frames). The tree is built
    in a temporary folder next to OUT and moved into place at the end: an interrupted run leaves
    no half tree, and an existing OUT is replaced only with `force`.
    """
    out = Path(out)
    if out.exists() and not force:
        raise UsageError(f"{out} already exists; pass --force to replace it or choose another --out")
    unknown = [c for c in exclude if c not in CHULA_TYPES]
    if unknown:
        raise UsageError(f"--exclude {', '.join(unknown)}: not a Chula RBC-12 type; types are {', '.join(CHULA_TYPES)}")
    frames = read_chula(root)
    ruler_diameter = dataset_diameter(frames)  # what the device's ruler reads on these frames
    diameter = float(diameter) if diameter else ruler_diameter
    side = crop_side(diameter, side_factor)
    splits = split_frames([f.name for f in frames], seed)
    present = sorted({t for f in frames for *_, t in f.points})
    classes = [CHULA_TYPES[t] for t in present if CHULA_TYPES[t] not in exclude]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    counts = {s: {c: 0 for c in classes} for s in SPLIT_FRACTIONS}
    skipped = []
    try:
        with open(tmp / "manifest.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(MANIFEST_FIELDS)
            for f in (progress(frames) if progress else frames):
                try:
                    image = read_image_rgb(f.image)
                except FrameFormatError as exc:
                    skipped.append(f"{f.image}: {exc}")
                    continue
                split = splits[f.name]
                # the device's own crop function (one resize of the frame), so training pixels == device pixels
                crops = rbc_crops(image, [(x, y) for x, y, _ in f.points], diameter, size, side_factor)
                for i, ((x, y, t), crop) in enumerate(zip(f.points, crops)):
                    cls = CHULA_TYPES[t]
                    if cls not in counts[split]:
                        continue
                    rel = Path(split) / cls / f"{f.name}_{i:03d}.png"
                    (tmp / rel.parent).mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(tmp / rel), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                    writer.writerow([split, f.name, x, y, t, cls, rel.as_posix()])
                    counts[split][cls] += 1
        for s, per in counts.items():
            empty = [c for c, n in per.items() if not n]
            if empty:
                skipped.append(f"{s} split: no crops of {', '.join(empty)} (too few frames for a frame-level split)")
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n")
        (tmp / GEOMETRY_FILE).write_text(json.dumps(crop_geometry(side, ruler_diameter, size), indent=2) + "\n")
        frames_per_split = {s: sum(1 for f in frames if splits[f.name] == s) for s in SPLIT_FRACTIONS}
        (tmp / "README.md").write_text(_readme(root, classes, counts, frames_per_split, diameter, side, size,
                                               seed, exclude, command))
        replace_dir(tmp, out)  # the old crops stay whole until the new ones are in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "classes": classes, "counts": counts, "frames": frames_per_split,
            "diameter_px": diameter, "crop_side_px": side, "size": size, "skipped": skipped}


def _readme(root, classes, counts, frames, diameter, side, size, seed, exclude, command) -> str:
    rows = "\n".join(f"| {c} | " + " | ".join(str(counts[s][c]) for s in SPLIT_FRACTIONS) + " |" for c in classes)
    totals = " | ".join(str(sum(counts[s].values())) for s in SPLIT_FRACTIONS)
    return (f"# Red-cell crops from {root}\n\n"
            f"Made by `{command or 'hemaedge data rbc-crops'}`.\n\n"
            f"- One crop per labelled point, centred on it; side {side} px = {side / diameter:.2f} x the data set's "
            f"median red-cell diameter ({diameter:.1f} px), at {size}x{size} px (the frame resized once by "
            f"{size}/{side}, INTER_AREA, then cut: edge.rbc.rbc_crops, as on the device), PNG.\n"
            f"- Split by frame (seed {seed}): train {frames['train']}, val {frames['val']}, test {frames['test']} "
            f"frames; no frame has crops in two splits (manifest.csv lists split and frame of every crop).\n"
            f"- Classes (classes.txt, label order): {', '.join(classes)}"
            + (f"; left out: {', '.join(exclude)}" if exclude else "") + ".\n\n"
            f"| class | train | val | test |\n|---|---|---|---|\n{rows}\n| total | {totals} |\n")
