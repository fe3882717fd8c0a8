"""Calibration images for integer quantization (TFLite int8, ONNX QDQ, TensorRT int8).

Reads a calibration set made by `hemaedge data calibration` (class folders of JPEGs +
manifest.csv, checksums verified) with the data package's reader. Every tensor handed to a
calibrator comes from `prepare_batch`: the same code the device runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from hemaedge.edge.errors import DataError
from hemaedge.edge.preprocess import InputContract, prepare_batch
from hemaedge.train.data import MANIFEST, load_calibration_images

DEFAULT_CALIB_DIR = Path("calibration_data")


def load_calibration(calib_dir, count: int | None = None, size: int | None = None) -> list[np.ndarray]:
    """uint8 RGB calibration images, up to `count`: the first `count` of the class-interleaved
    order, so any count stays stratified. `size` resizes with the device's `resize`."""
    root = Path(calib_dir)
    if not root.is_dir():
        raise DataError(f"{root}: calibration folder not found (make one with `hemaedge data calibration`, "
                        "or pass --calib-dir)")
    if not (root / MANIFEST).is_file():
        raise DataError(f"{root}: not a calibration set (no {MANIFEST}, so nothing says which images these are "
                        "or checks them); make one with `hemaedge data calibration --data DATA --out DIR`")
    images = list(load_calibration_images(root, limit=count, size=size))
    if not images:
        raise DataError(f"{root}: no calibration images")
    return images


def calibration_batches(images, contract: InputContract, batch_size: int = 1) -> Iterator[np.ndarray]:
    """Model-input tensors for calibration, batch by batch, through `prepare_batch`."""
    for start in range(0, len(images), batch_size):
        yield prepare_batch(images[start:start + batch_size], contract)
