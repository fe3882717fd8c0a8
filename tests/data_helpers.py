"""Small real data sets for the data tests: a few BloodMNIST-128 JPEGs copied into tmp trees,
and tiny MedMNIST-format .npz files (good ones and broken ones)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def real_jpegs(bloodmnist128: Path, split: str = "train", per_class: int = 3) -> dict[str, list[Path]]:
    """The first `per_class` JPEGs of each class folder of one split (sorted names)."""
    out = {}
    for folder in sorted(p for p in (bloodmnist128 / split).iterdir() if p.is_dir()):
        out[folder.name] = sorted(folder.glob("*.jpg"))[:per_class]
    return out


def make_split_tree(root: Path, bloodmnist128: Path, classes=("basophil", "lymphocyte", "platelet"),
                    per_class: int = 3) -> Path:
    """root/{train,val,test}/{class}/*.jpg from real files."""
    for split in ("train", "val", "test"):
        src = real_jpegs(bloodmnist128, split, per_class)
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for f in src[c]:
                shutil.copyfile(f, root / split / c / f.name)
    return root


def make_flat_tree(root: Path, bloodmnist128: Path, counts: dict[str, int]) -> Path:
    """root/{class}/*.jpg with counts[class] real files each (renamed to the class name)."""
    for c, n in counts.items():
        src = real_jpegs(bloodmnist128, "train", n)
        # reuse the class's own images when it has them, otherwise basophil's
        files = src.get(c) or src["basophil"]
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files[:n]):
            shutil.copyfile(f, root / c / f"{c}_{i:03d}.jpg")
    return root


def make_npz(path: Path, n=(12, 4, 6), size=8, channels=3, num_classes=3, seed=0, **override) -> Path:
    """A MedMNIST-format npz; `override` replaces or (with value None) drops arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, size, size) + ((channels,) if channels else ())
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % num_classes).astype(np.uint8).reshape(-1, 1)
    for key, value in override.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez_compressed(path, **arrays)
    return path
