"""Calibration images for integer quantization (TFLite int8, ONNX QDQ, TensorRT int8).

Reads `calibration_data/` (class folders of JPEGs + manifest.csv, made by `hemaedge data`).
When the project's reader (`load_calibration_images`) is installed it is used; otherwise the
JPEGs are globbed here and decoded with the device's own `read_image_rgb`. Every tensor handed
to a calibrator comes from `prepare_batch`: the same code the device runs.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator

import numpy as np

from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import InputContract, prepare_batch, read_image_rgb

DEFAULT_CALIB_DIR = Path("calibration_data")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def _project_reader():
    for module in ("hemaedge.train.calibration", "hemaedge.edge.calibration"):
        try:
            return getattr(importlib.import_module(module), "load_calibration_images")
        except (ImportError, AttributeError):
            continue
    return None


def calibration_files(calib_dir) -> list[Path]:
    """Image files under calib_dir, in a stable order (sorted relative paths)."""
    root = Path(calib_dir)
    if not root.is_dir():
        raise UserError(f"{root}: calibration folder not found (make one with `hemaedge data calibration`, "
                        "or pass --calib-dir)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"{root}: no calibration images (expected JPEG/PNG files under class folders)")
    return files


def pick_evenly(n_total: int, count: int | None, seed: int = 0) -> np.ndarray:
    """`count` indices out of n_total, a seeded random subset (all when count is None or too big)."""
    if count is None or count >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=int(count), replace=False))


def load_calibration(calib_dir, count: int | None = None, seed: int = 0, size: int | None = None) -> list[np.ndarray]:
    """uint8 RGB calibration images, up to `count`.

    A folder with `manifest.csv` is read by the project's reader (checksums verified; the first
    `count` of a class-interleaved order, so any count stays stratified). A bare folder of images
    is globbed here and a seeded random subset taken. `size` resizes with the device's `resize`.
    """
    root = Path(calib_dir)
    reader = _project_reader()
    if reader is not None and (root / "manifest.csv").is_file():
        images = list(reader(root, limit=count, size=size))
        if not images:
            raise UserError(f"{root}: no calibration images")
        return images
    files = calibration_files(root)
    images = [read_image_rgb(files[i]) for i in pick_evenly(len(files), count, seed)]
    if size:
        from hemaedge.edge.preprocess import resize

        images = [resize(im, int(size)) for im in images]
    return images


def calibration_batches(images, contract: InputContract, batch_size: int = 1) -> Iterator[np.ndarray]:
    """Model-input tensors for calibration, batch by batch, through `prepare_batch`."""
    for start in range(0, len(images), batch_size):
        yield prepare_batch(images[start:start + batch_size], contract)
