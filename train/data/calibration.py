"""Calibration data for integer quantization: make it once, read it anywhere.

`make_calibration_set` draws a deterministic stratified sample of a data set's TRAIN split
(the same number of images per class, seeded) and writes it as class folders of the original
image files (byte-identical copies; PNG for arrays from a .npz), a `manifest.csv` (source
split, index, label, class, file, source, sha256) and a README.md with the regenerating command.

`load_calibration_images` reads such a folder back as uint8 RGB arrays. It imports only numpy,
OpenCV and hemaedge.edge, so the TensorRT calibrator can use it on a Jetson that has only the
edge extra installed.
"""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np

from hemaedge.edge.atomic import replace_dir
from hemaedge.edge.bundle import sha256_file
from hemaedge.edge.errors import DataError
from hemaedge.train.data.medmnist import CLASS_NAMES_BLOODMNIST
from hemaedge.train.data.readers import Dataset, read_image
from hemaedge.train.data.subsets import sample_per_class

# The repo's committed calibration set (editable installs); $HEMAEDGE_CALIBRATION overrides.
REPO_CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "calibration_data"
MANIFEST = "manifest.csv"
FIELDS = ("split", "index", "label", "class", "file", "source", "sha256")
DEFAULT_PER_CLASS = 64
DEFAULT_SEED = 42

BLOODMNIST_LICENCE = """\
## Licence

The images are from BloodMNIST (MedMNIST v2), licence CC BY 4.0, built from the PBC data set
of normal peripheral blood cells, licence CC BY 4.0. Cite both when you use them:

- Acevedo A, Merino A, Alférez S, Molina Á, Boldú L, Rodellar J. A dataset of microscopic
  peripheral blood cell images for development of automatic recognition systems.
  Data in Brief 30, 105474 (2020).
- Yang J, Shi R, Wei D, Liu Z, Zhao L, Ke B, Pfister H, Ni B. MedMNIST v2 - A large-scale
  lightweight benchmark for 2D and 3D biomedical image classification.
  Scientific Data 10, 41 (2023).
"""


def default_calibration_dir() -> Path:
    env = os.environ.get("HEMAEDGE_CALIBRATION")
    return Path(env).expanduser() if env else REPO_CALIBRATION_DIR


def _safe_name(name: str) -> str:
    """A class name as a folder name (MedMNIST names may hold spaces, commas or slashes)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "class"


def _readme(ds: Dataset, split: str, per_class: int, seed: int, counts, command: str) -> str:
    lines = [
        "# Calibration data",
        "",
        f"{int(sum(counts))} images from the **{split}** split of `{ds.name}` "
        f"({ds.kind}, {ds.protocol}): up to {per_class} per class, drawn with seed {seed}, so",
        "every class is present. Integer quantization (TFLite int8, ONNX QDQ, TensorRT int8) reads",
        f"them to choose activation ranges; they come from the {split} split only.",
        "",
        "| class | images |",
        "|---|---:|",
        *[f"| {c} | {int(n)} |" for c, n in zip(ds.classes, counts)],
        "",
        "Files keep their source names (copied byte for byte from an image tree; PNG when the",
        "source is a .npz array). `manifest.csv` gives, per file: source split, `index` (position",
        "in that split as `hemaedge.train.data.open_dataset` orders it), label, class, file,",
        "source (path inside the data set) and sha256. For BloodMNIST-128 the number in a file",
        "name is the image's row in the official BloodMNIST .npz.",
        "",
        "Regenerate from the repository root (deterministic: same files, same manifest):",
        "",
        "```",
        command,
        "```",
        "",
        "Read in Python (no TensorFlow needed):",
        "",
        "```",
        "from hemaedge.train.data import load_calibration_images",
        "images = load_calibration_images()        # uint8 RGB, shape (N, H, W, 3)",
        "```",
        "",
    ]
    if set(ds.classes) == set(CLASS_NAMES_BLOODMNIST):
        lines.append(BLOODMNIST_LICENCE)
    else:
        lines += ["## Licence", "", "The images carry the licence of the source data set.", ""]
    return "\n".join(lines)


def _replace_dir(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished folder into place; never delete a folder that is not a calibration set."""
    if out.exists():
        entries = [p for p in out.iterdir()]
        if entries and not (out / MANIFEST).is_file():
            raise DataError(f"{out}: exists and is not a calibration folder (no {MANIFEST}); "
                            "choose another --out")
        if entries and not force:
            raise DataError(f"{out}: a calibration set is already there; pass --force to replace it")
    replace_dir(tmp, out)


def make_calibration_set(ds: Dataset, out, per_class: int = DEFAULT_PER_CLASS, split: str = "train",
                         seed: int = DEFAULT_SEED, force: bool = False, command: str | None = None) -> Path:
    """Write the calibration folder `out` (atomically: built aside, then renamed into place)."""
    import cv2
    from tqdm import tqdm

    if per_class < 1:
        raise DataError(f"--per-class must be at least 1 (got {per_class})")
    s = ds.split(split)
    counts_all = np.bincount(s.labels, minlength=ds.num_classes)
    empty = [c for c, n in zip(ds.classes, counts_all) if n == 0]
    if empty:
        raise DataError(f"{ds.root}: the {split} split has no images of {empty}; every class must be present")
    picked = sample_per_class(s.labels, ds.num_classes, per_class, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    rows = []
    try:
        for i in tqdm(picked, desc="calibration images", unit="img", disable=None):
            label = int(s.labels[i])
            folder = _safe_name(ds.classes[label])
            (tmp / folder).mkdir(exist_ok=True)
            if s.paths is not None:
                src = s.paths[i]
                read_image(src)  # refuse to ship a corrupt or truncated file
                rel = Path(folder) / src.name
                shutil.copyfile(src, tmp / rel)
                source = src.relative_to(ds.root).as_posix()
            else:
                rel = Path(folder) / f"{split}_{int(i):05d}.png"
                rgb = ds.load_images(split, indices=[i])[0][0]
                ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV writes BGR
                if not ok:
                    raise DataError(f"{ds.root}: could not encode {split} image {i} as PNG")
                (tmp / rel).write_bytes(buf.tobytes())
                source = f"{ds.root.name}:{split}_images[{int(i)}]"
            rows.append({"split": split, "index": int(i), "label": label, "class": ds.classes[label],
                         "file": rel.as_posix(), "source": source, "sha256": sha256_file(tmp / rel)})
        with open(tmp / MANIFEST, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        counts = np.bincount([r["label"] for r in rows], minlength=ds.num_classes)
        cmd = command or (f"hemaedge data calibration --data {ds.root} --out {out} "
                          f"--sample-per-class {per_class} --split {split} --seed {seed} --force")
        (tmp / "README.md").write_text(_readme(ds, split, per_class, seed, counts, cmd), encoding="utf-8")
        _replace_dir(tmp, out, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_manifest(path=None) -> list[dict]:
    """The rows of `<path>/manifest.csv` (path defaults to the repo's calibration_data)."""
    root = Path(path) if path is not None else default_calibration_dir()
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{manifest}: calibration manifest not found (make the folder with "
                        "`hemaedge data calibration --data DATA --out DIR`)")
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{manifest}: missing columns {missing}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{manifest}: no images listed")
    for n, row in enumerate(rows, start=2):
        f = Path(row["file"])
        if f.is_absolute() or ".." in f.parts:
            raise DataError(f"{manifest}: line {n}: file {row['file']!r} points outside the folder")
        try:
            row["label"], row["index"] = int(row["label"]), int(row["index"])
        except ValueError:
            raise DataError(f"{manifest}: line {n}: label and index must be integers") from None
    return rows


def verify_calibration(path=None) -> list[str]:
    """Problems with a calibration folder: files missing, changed (sha256) or not listed."""
    root = Path(path) if path is not None else default_calibration_dir()
    problems = []
    rows = read_manifest(root)
    listed = set()
    for row in rows:
        f = root / row["file"]
        listed.add(Path(row["file"]).as_posix())
        if not f.is_file():
            problems.append(f"{f}: listed in {MANIFEST} but missing")
        elif sha256_file(f) != row["sha256"]:
            problems.append(f"{f}: sha256 differs from {MANIFEST} (file changed)")
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and f.parent != root and rel not in listed and not f.name.startswith("."):
            problems.append(f"{f}: image not listed in {MANIFEST}")
    return problems


def _round_robin(rows: list[dict]) -> list[dict]:
    """Interleave classes so any prefix of the list is (nearly) stratified."""
    by_class: dict[int, list[dict]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(r)
    queues = [by_class[k] for k in sorted(by_class)]
    out = []
    for i in range(max(len(q) for q in queues)):
        out += [q[i] for q in queues if i < len(q)]
    return out


def load_calibration_images(path=None, limit: int | None = None, size: int | None = None,
                            verify: bool = True, return_labels: bool = False):
    """uint8 RGB calibration images, shape (N, H, W, 3), classes interleaved.

    path: a calibration folder (default: $HEMAEDGE_CALIBRATION or the repo's calibration_data).
    limit: the first `limit` images of the interleaved order, so a small limit still covers every
    class. size: resize to size x size (the device's `resize`). verify: check every file's sha256
    against the manifest first. return_labels: also return the int64 labels.
    """
    root = Path(path) if path is not None else default_calibration_dir()
    rows = _round_robin(read_manifest(root))
    if limit is not None:
        rows = rows[: max(0, int(limit))]
    images, labels = [], []
    for row in rows:
        f = root / row["file"]
        if not f.is_file():
            raise DataError(f"{f}: listed in {root / MANIFEST} but missing")
        if verify and sha256_file(f) != row["sha256"]:
            raise DataError(f"{f}: sha256 differs from {root / MANIFEST} (file changed)")
        img = read_image(f)
        if size:
            from hemaedge.edge.preprocess import resize

            img = resize(img, int(size))
        images.append(img)
        labels.append(row["label"])
    if images and len({im.shape for im in images}) > 1:
        raise DataError(f"{root}: calibration images differ in size; pass size= to resize them")
    arr = np.stack(images) if images else np.zeros((0, size or 0, size or 0, 3), np.uint8)
    return (arr, np.asarray(labels, np.int64)) if return_labels else arr


__all__ = ["load_calibration_images", "make_calibration_set", "read_manifest", "verify_calibration",
           "sample_per_class", "default_calibration_dir", "MANIFEST", "FIELDS"]
