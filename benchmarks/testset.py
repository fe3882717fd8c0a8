"""The labelled test images a benchmark scores accuracy on, read without TensorFlow or PIL.

Two layouts: an ImageFolder tree (`ROOT/test/<class>/*.jpg` or `ROOT/<class>/*.jpg`, e.g.
bloodmnist128) and a MedMNIST `.npz` (`test_images`, `test_labels`). Images stream in chunks so a
device with little memory can score the whole split. `--limit N` picks N images spread evenly
over the split (sorted file order), so every class is represented in quick runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from hemaedge.edge.errors import HemaedgeError
from hemaedge.edge.preprocess import read_image_rgb, to_rgb_uint8

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


class TestSetError(HemaedgeError, ValueError):
    """Test data that cannot be used: names the path and the problem."""

    __test__ = False  # not a pytest test class


@dataclass
class TestSet:
    """Labels and a way to read the images of one split, in a fixed order."""

    __test__ = False  # not a pytest test class

    source: str
    class_names: list[str]
    labels: np.ndarray
    _files: list[Path] | None = None
    _array: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.size)

    def images(self, start: int, stop: int) -> list[np.ndarray]:
        if self._array is not None:
            return [to_rgb_uint8(im) for im in self._array[start:stop]]
        return [read_image_rgb(p) for p in self._files[start:stop]]

    def chunks(self, size: int) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        for i in range(0, len(self), size):
            yield self.images(i, i + size), self.labels[i:i + size]


def _spread(n: int, limit: int | None) -> np.ndarray:
    if not limit or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(limit)).round().astype(int))


def open_test_set(path, split: str = "test", limit: int | None = None) -> TestSet:
    path = Path(path)
    if not path.exists():
        raise TestSetError(f"{path}: test data not found (give an ImageFolder tree or a MedMNIST .npz)")
    if path.is_file():
        if path.suffix != ".npz":
            raise TestSetError(f"{path}: expected a MedMNIST .npz file or an ImageFolder directory")
        with np.load(path, allow_pickle=False) as data:
            key_x, key_y = f"{split}_images", f"{split}_labels"
            if key_x not in data or key_y not in data:
                raise TestSetError(f"{path}: no {key_x}/{key_y} arrays (keys: {sorted(data.files)})")
            labels = np.asarray(data[key_y]).reshape(-1).astype(np.int64)
            idx = _spread(labels.size, limit)
            images = np.asarray(data[key_x])[idx]
        n_classes = int(labels.max()) + 1
        return TestSet(str(path), [str(i) for i in range(n_classes)], labels[idx], _array=images)
    root = path / split if (path / split).is_dir() else path
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise TestSetError(f"{root}: no class folders (expected {root}/<class>/*.jpg)")
    files, labels = [], []
    for label, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(label)
    if not files:
        raise TestSetError(f"{root}: the class folders hold no images")
    # Interleave by file name so an evenly spread --limit sample covers every class.
    order = sorted(range(len(files)), key=lambda i: (files[i].name, labels[i]))
    files = [files[i] for i in order]
    labels = np.asarray([labels[i] for i in order], dtype=np.int64)
    idx = _spread(len(files), limit)
    return TestSet(str(root), [d.name for d in class_dirs], labels[idx], _files=[files[i] for i in idx])


def label_map(test_classes: list[str], model_classes: list[str]) -> tuple[np.ndarray, str]:
    """(index array mapping test-set label -> model class index, how it was matched).

    By name (case, spaces and dashes ignored); by position for numbered .npz labels, or when
    the names differ but the counts agree (said in the returned note). Raises TestSetError
    when neither works."""
    def norm(s):
        return str(s).strip().lower().replace(" ", "_").replace("-", "_")

    model_norm = [norm(c) for c in model_classes]
    if all(c.isdigit() for c in test_classes):
        if len(test_classes) > len(model_classes):
            raise TestSetError(f"test set has {len(test_classes)} classes, the model {len(model_classes)}")
        return np.arange(len(test_classes)), "by position (numbered labels)"
    missing = [c for c in test_classes if norm(c) not in model_norm]
    if not missing:
        return np.asarray([model_norm.index(norm(c)) for c in test_classes], dtype=np.int64), "by name"
    if len(test_classes) == len(model_classes):
        return np.arange(len(test_classes)), f"by position (names differ: {missing})"
    raise TestSetError(f"test classes {missing} are not among the model's classes {model_classes}")
