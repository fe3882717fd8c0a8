"""The labelled test images a benchmark scores accuracy on, read without TensorFlow or PIL.

Read by the data package (`hemaedge.train.data.open_dataset`: ImageFolder trees with a test/
folder, MedMNIST `.npz`, classes.txt, the same class order and file types as training) and
streamed in chunks so a device with little memory can score the whole split. `--spread N` picks
N images spread evenly over the split, with the files interleaved by name first, so every class
is represented in quick runs. Class names are matched to the model's by name; names that differ
are an error, never a silent match by position.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from hemaedge.edge.errors import DataError
from hemaedge.edge.preprocess import read_image_rgb, to_rgb_uint8
from hemaedge.train.data import label_map, open_dataset, spread  # noqa: F401  (label_map: re-exported)


class TestSetError(DataError, ValueError):
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


def open_test_set(path, split: str = "test", limit: int | None = None) -> TestSet:
    path = Path(path)
    if not path.exists():
        raise TestSetError(f"{path}: test data not found (give an ImageFolder tree or a MedMNIST .npz)")
    try:
        ds = open_dataset(path, splits=(split,))
        s = ds.split(split)
    except ImportError as exc:  # a flat class-folder tree is split with scikit-learn
        raise TestSetError(f"{path}: a tree without split folders is split 72/8/20 first, which needs "
                           f"scikit-learn ({exc}); give a tree with a {split}/ folder or a MedMNIST .npz") from None
    except DataError as exc:
        raise TestSetError(str(exc)) from None
    if not len(s):
        raise TestSetError(f"{ds.root}: split {split!r} holds no images")
    classes = list(ds.classes)
    if s.npz is not None:
        idx = spread(len(s), limit)
        return TestSet(str(s.npz), classes, s.labels[idx], _array=s.array()[idx])
    files = list(s.paths)
    # Interleave by file name so an evenly spread --spread sample covers every class.
    order = sorted(range(len(files)), key=lambda i: (files[i].name, int(s.labels[i])))
    files = [files[i] for i in order]
    labels = s.labels[order].astype(np.int64)
    idx = spread(len(files), limit)
    root = path / split if (path / split).is_dir() else ds.root
    return TestSet(str(root), classes, labels[idx], _files=[files[i] for i in idx])
