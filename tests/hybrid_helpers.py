"""Small real slices of BloodMNIST-128 and a tiny Keras backbone for the hybrid tests."""
from __future__ import annotations

import numpy as np


def load_slice(root, split: str, per_class: int, size: int | None = None):
    """The first `per_class` images of every class of one split: (uint8 images, labels)."""
    from hemaedge.train.data import open_dataset

    ds = open_dataset(root)
    labels = ds.split(split).labels
    idx = np.sort(np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(ds.num_classes)]))
    x, y = ds.load_images(split, size=size, indices=idx, progress=False)
    return x, y, list(ds.classes)


def tiny_backbone(size: int = 32, seed: int = 0):
    """A seeded random conv net, RGB 0..255 in (scaling inside), 24-d pooled features out."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = layers.Conv2D(12, 3, strides=2, activation="relu")(x)
    x = layers.Conv2D(24, 3, strides=2, activation="relu")(x)
    out = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, out, name="tiny_backbone")


def head_features(root, size: int = 32, per_class: tuple[int, int] = (30, 10)) -> dict:
    """Train/test slices and their features from the seeded tiny backbone: the real small data the
    head tests fit on. Keys: bb, contract, xte, Xtr, ytr, Xte, yte, classes."""
    from hemaedge.edge.preprocess import InputContract
    from hemaedge.train.features import extract_features

    xtr, ytr, classes = load_slice(root, "train", per_class[0], size=size)
    xte, yte, _ = load_slice(root, "test", per_class[1], size=size)
    bb = tiny_backbone(size)
    c = InputContract(size=size, preprocess="rgb")
    return dict(bb=bb, contract=c, xte=xte, Xtr=extract_features(bb, xtr, c, progress=False), ytr=ytr,
                Xte=extract_features(bb, xte, c, progress=False), yte=yte, classes=classes)
