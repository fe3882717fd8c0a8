"""Validation / test images for parity checks, as uint8 RGB arrays and integer labels.

Uses the project's data-set reader (`hemaedge.train.datasets.open_dataset`) when it is
installed; otherwise reads an ImageFolder tree `{split}/{class}/*.jpg` itself. Labels are
mapped to the model's class list by folder name, so a data set whose folders are ordered
differently still scores correctly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import read_image_rgb

from hemaedge.export.calibration import IMAGE_SUFFIXES, pick_evenly


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def load_split_folder(root, split: str, classes: list[str], limit: int | None = None,
                      seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """ImageFolder reader: root/split/<class>/*.jpg -> (uint8 N,H,W,3, labels in `classes` order)."""
    base = Path(root) / split
    if not base.is_dir():
        raise UserError(f"{base}: split folder not found (expected {Path(root)}/{{val,test}}/<class>/*.jpg)")
    index = {_norm(c): i for i, c in enumerate(classes)}
    files, labels = [], []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if _norm(folder.name) not in index:
            raise UserError(f"{folder}: class folder {folder.name!r} is not one of the model's classes {classes}")
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(index[_norm(folder.name)])
    if not files:
        raise UserError(f"{base}: no images")
    keep = pick_evenly(len(files), limit, seed)
    images = [read_image_rgb(files[i]) for i in keep]
    return images, np.asarray(labels, dtype=np.int64)[keep]


def _via_project_reader(root, split, classes, limit, seed):
    try:
        from hemaedge.train.datasets import open_dataset
    except ImportError:
        return None
    ds = open_dataset(root)
    images, labels = ds.load_images(split)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    names = list(getattr(ds, "classes", None) or getattr(ds, "class_names", None) or [])
    if names:  # re-map the data set's label order onto the model's
        index = {_norm(c): i for i, c in enumerate(classes)}
        missing = [n for n in names if _norm(n) not in index]
        if missing:
            raise UserError(f"{root}: classes {missing} of the data set are not among the model's classes {classes}")
        lut = np.array([index[_norm(n)] for n in names])
        labels = lut[labels]
    keep = pick_evenly(len(labels), limit, seed)
    return [np.asarray(images[i]) for i in keep], labels[keep]


def load_split(root, split: str, classes: list[str], limit: int | None = None,
               seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Images + labels of one split; `limit` takes a seeded random subset (for quick runs)."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: data set not found")
    # The ImageFolder layout is read directly (cheap with a limit); other formats go through
    # the project's reader.
    if (root / split).is_dir():
        return load_split_folder(root, split, classes, limit, seed)
    got = _via_project_reader(root, split, classes, limit, seed)
    if got is None:
        raise UserError(f"{root}: no {split}/ folder and the project's data-set reader is not installed")
    return got
