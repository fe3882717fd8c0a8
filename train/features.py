"""Frozen-backbone feature extraction with an on-disk cache (npz, never pickle).

A cached feature file is reused only when everything that changes the features is identical:
the data (path and a fingerprint of the file list), the split, the backbone and the exact
weights that ran, the input size, the preprocessing mode, the augmentation and its seed, the
subset (--per-class) and the source code of the preprocessing and augmentation modules
(plus the OpenCV / albumentations versions that run them). All of it goes into one sha256 key.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from hemaedge.edge.atomic import atomic_path
from hemaedge.edge.preprocess import InputContract, prepare_batch

CACHE_FORMAT = 1


# ----------------------------------------------------------------------------- cache key


def data_fingerprint(path, split: str | None = None) -> str:
    """sha256 over the resolved data path and its file list (relative names and sizes).

    For an ImageFolder tree only the split's folder is listed (so the train features do not
    change when a test file is added); for a single file (.npz) its name, size and mtime.
    """
    root = Path(path).resolve()
    h = hashlib.sha256(str(root).encode())
    if root.is_file():
        st = root.stat()
        h.update(f"{root.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()
    base = root / split if split and (root / split).is_dir() else root
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            h.update(f"{p.relative_to(root).as_posix()}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


def code_fingerprint() -> str:
    """sha256 of the pixel code (preprocessing + augmentation) and the library versions it uses."""
    import cv2
    import albumentations

    from hemaedge import __version__
    from hemaedge.edge import preprocess
    from hemaedge.train import augment

    h = hashlib.sha256(f"hemaedge {__version__} cv2 {cv2.__version__} albumentations "
                       f"{albumentations.__version__}\n".encode())
    for mod in (preprocess, augment):
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()


def feature_key(*, data: str, split: str, backbone: str, weights: str, size: int, preprocess: str,
                augment: str, seed: int, limit_per_class: int | None = None,
                code: str | None = None) -> tuple[str, dict]:
    """(sha256 hex key, the dict it was computed from). `weights` is the backbone's weights
    description (which for local or converted weights includes their hash)."""
    parts = {"format": CACHE_FORMAT, "data": data, "split": split, "backbone": backbone,
             "weights": weights, "size": int(size), "preprocess": preprocess,
             "augment": augment if split == "train" else "none",
             "seed": int(seed), "limit_per_class": limit_per_class,
             "code": code if code is not None else code_fingerprint()}
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), parts


# ----------------------------------------------------------------------------- cache files


def load_cached(cache_dir, key: str):
    """(features, labels, meta) from the cache or None. Loads with allow_pickle=False."""
    path = Path(cache_dir) / f"features-{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key:
                return None
            return z["features"], z["labels"], meta
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # truncated or foreign: recompute
        return None


def save_cached(cache_dir, key: str, features: np.ndarray, labels: np.ndarray, meta: dict) -> Path:
    """Write the cache file atomically (a crash never leaves a half file under the real name)."""
    path = Path(cache_dir) / f"features-{key}.npz"
    with atomic_path(path) as tmp:
        np.savez(tmp, features=features.astype(np.float32), labels=labels.astype(np.int64),
                 meta=np.array(json.dumps(dict(meta, key=key))))
    return path


# ----------------------------------------------------------------------------- extraction


def extract_features(model, images: np.ndarray, contract: InputContract, *, batch_size: int = 64,
                     transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
                     desc: str = "features", progress: bool = True) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3) -> float32 features (N, D) of a frozen Keras model.

    Each batch is optionally transformed (`transform(batch, start_index)`, e.g. augmentation),
    then turned into the model input by `prepare_batch` (the same code the device runs).
    """
    from tqdm.auto import tqdm

    out = None
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if transform is not None:
                batch = transform(batch, start)
            x = prepare_batch(batch, contract)
            f = np.asarray(model.predict_on_batch(x), dtype=np.float32)
            if out is None:
                out = np.empty((len(images), f.shape[-1]), dtype=np.float32)
            out[start:start + len(f)] = f
            bar.update(len(batch))
    if out is None:
        raise ValueError("no images to extract features from")
    return out


def split_features(model, images: np.ndarray, labels: np.ndarray, contract: InputContract, *,
                   augment: str = "none", seed: int = 42, batch_size: int = 64,
                   desc: str = "features", progress: bool = True):
    """Features of one split, with the paper's augmentation expanding a training split.

    Returns (features, labels, seconds). With augment='paper' the rows are Type 0 copies of
    all images, then Type 1, then Type 2 (as `augment.expand_training_set`).
    """
    from hemaedge.train.augment import PAPER_TYPES, augment_type

    t0 = time.perf_counter()
    if augment == "paper":
        feats, labs = [], []
        for kind in PAPER_TYPES:
            def tf(batch, start, kind=kind):
                return augment_type(batch, kind, seed, start_index=start)
            feats.append(extract_features(model, images, contract, batch_size=batch_size,
                                          transform=tf, desc=f"{desc} type {kind}", progress=progress))
            labs.append(labels)
        features, labels = np.concatenate(feats), np.concatenate(labs)
    elif augment == "none":
        features = extract_features(model, images, contract, batch_size=batch_size, desc=desc,
                                    progress=progress)
    else:
        raise ValueError(f"unknown augmentation {augment!r}")
    return features, np.asarray(labels), time.perf_counter() - t0


def cached_split_features(cache_dir, key: str, parts: dict, compute):
    """Load features for `key` or compute them with `compute() -> (features, labels, seconds)`.

    Returns (features, labels, info) where info says whether the cache was hit, and the
    extraction time and images/s of the run that made the features.
    """
    hit = load_cached(cache_dir, key)
    if hit is not None:
        features, labels, meta = hit
        return features, labels, {"cached": True, "seconds": meta.get("seconds"),
                                  "images_per_s": meta.get("images_per_s"), "key": key}
    features, labels, seconds = compute()
    ips = len(features) / seconds if seconds > 0 else None
    meta = {"parts": parts, "seconds": seconds, "images_per_s": ips, "n": int(len(features))}
    save_cached(cache_dir, key, features, labels, meta)
    return features, labels, {"cached": False, "seconds": seconds, "images_per_s": ips, "key": key}


__all__ = ["data_fingerprint", "code_fingerprint", "feature_key", "load_cached", "save_cached",
           "extract_features", "split_features", "cached_split_features"]
