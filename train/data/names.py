"""Matching a data set's class names to a model's: one rule for parity checks, benchmarks and export.

Names match ignoring case, spaces and dashes ("Immature Granulocyte" == "immature_granulocyte").
Numbered labels ("0", "1", ... from a .npz without names) map by position, and the note says so.
Anything else that does not match is an error naming the classes: scoring by position when the
names differ would publish an accuracy for the wrong classes.
"""
from __future__ import annotations

import numpy as np

from hemaedge.edge.errors import DataError


def normalise(name) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def label_map(data_classes, model_classes, where: str = "") -> tuple[np.ndarray, str]:
    """(array: data-set label -> model class index, how it was matched); DataError when names differ."""
    data_classes, model_classes = [str(c) for c in data_classes], [str(c) for c in model_classes]
    prefix = f"{where}: " if where else ""
    model_norm = [normalise(c) for c in model_classes]
    if data_classes and all(c.isdigit() for c in data_classes) and not all(c.isdigit() for c in model_classes):
        if len(data_classes) > len(model_classes):
            raise DataError(f"{prefix}the data set has {len(data_classes)} classes, the model {len(model_classes)}")
        return np.arange(len(data_classes)), "by position (numbered labels)"
    missing = [c for c in data_classes if normalise(c) not in model_norm]
    if missing:
        raise DataError(f"{prefix}classes {missing} of the data set are not among the model's classes "
                        f"{model_classes}; rename the class folders or give the class list (classes.txt)")
    return np.asarray([model_norm.index(normalise(c)) for c in data_classes], dtype=np.int64), "by name"
