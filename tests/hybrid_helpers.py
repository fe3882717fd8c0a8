"""Small real slices of BloodMNIST-128 and a tiny Keras backbone for the hybrid tests."""
from __future__ import annotations

import numpy as np


def load_slice(root, split: str, per_class: int, size: int | None = None):
    """The first `per_class` images of every class of one split: (uint8 images, labels)."""
    from hemaedge.train.datasets import open_dataset

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
