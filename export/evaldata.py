"""Validation / test images for parity checks, as uint8 RGB arrays and labels in the model's
class order: read by the data package (`hemaedge.train.data`), so classes.txt, the class order,
the file types and the errors are the same as for training."""
from __future__ import annotations

import numpy as np

from hemaedge.train.data import label_map, open_dataset, sample


def load_split(root, split: str, classes: list[str], limit: int | None = None,
               seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Images + labels of one split; `limit` takes a seeded random subset of the split (quick runs).

    Labels are mapped onto `classes` by name; a data set whose classes are not the model's is a
    DataError naming them (never scored by position).
    """
    ds = open_dataset(root, splits=(split,))
    lut, _ = label_map(ds.classes, classes, where=str(root))
    keep = sample(len(ds.split(split)), limit, seed)
    return ds.image_list(split, keep), lut[ds.split(split).labels[keep]]
