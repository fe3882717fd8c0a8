"""The hybrid paper's training-set augmentation (Shobiry & Puspitasari 2025), with albumentations.

`--augment paper` replaces the training set by three augmented copies of every image, one per
augmentation type of the paper, so the set is tripled (Type 0 / Type 1 / Type 2; the original
images are not kept as a fourth copy: the paper's "tripling" with three named types):

  Type 0: rotation ±45°, horizontal flip, brightness ±10–20 %
  Type 1: vertical flip, zoom 0.9–1.1, contrast ±10–20 %
  Type 2: rotation ±45°, elastic deformation (alpha 5, sigma 3), brightness and contrast ±10–20 %

"±10–20 %" is read literally: a change of at least 10 % and at most 20 %, darker or brighter
(two sub-ranges picked with equal probability). Flips happen with probability 0.5 (as Keras'
`horizontal_flip=True`); rotation, zoom, elastic and intensity changes always happen.
Geometric transforms reflect at the border: black corners would look like cells to Otsu.

Every image gets its own seed derived from (seed, type, index), so the result does not depend
on batch size, order or how many images are augmented at once: reproducible and cacheable.
`--augment none` leaves the training set as it is.
"""
from __future__ import annotations

import cv2
import numpy as np
import albumentations as A

AUGMENT_MODES = ("paper", "none")
PAPER_TYPES = (0, 1, 2)
_BORDER = cv2.BORDER_REFLECT_101


def _brightness(lo=0.10, hi=0.20):
    return A.OneOf([
        A.RandomBrightnessContrast(brightness_limit=(lo, hi), contrast_limit=0.0, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=(-hi, -lo), contrast_limit=0.0, p=1.0),
    ], p=1.0)


def _contrast(lo=0.10, hi=0.20):
    return A.OneOf([
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(lo, hi), p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(-hi, -lo), p=1.0),
    ], p=1.0)


def paper_transform(kind: int) -> A.Compose:
    """The albumentations pipeline of augmentation type 0, 1 or 2 of the paper."""
    if kind == 0:
        steps = [A.Rotate(limit=45, border_mode=_BORDER, p=1.0), A.HorizontalFlip(p=0.5), _brightness()]
    elif kind == 1:
        steps = [A.VerticalFlip(p=0.5), A.Affine(scale=(0.9, 1.1), border_mode=_BORDER, p=1.0), _contrast()]
    elif kind == 2:
        steps = [A.Rotate(limit=45, border_mode=_BORDER, p=1.0),
                 A.ElasticTransform(alpha=5, sigma=3, border_mode=_BORDER, p=1.0),
                 _brightness(), _contrast()]
    else:
        raise ValueError(f"unknown augmentation type {kind}; the paper has types {PAPER_TYPES}")
    return A.Compose(steps)


def _image_seed(seed: int, kind: int, index: int) -> int:
    # A fixed mix of (seed, type, index): independent streams for every image and type.
    return int(np.random.SeedSequence([int(seed), int(kind), int(index)]).generate_state(1)[0])


def augment_type(images: np.ndarray, kind: int, seed: int = 42, start_index: int = 0) -> np.ndarray:
    """Apply augmentation type `kind` once to every uint8 RGB image of a (N, H, W, 3) batch.

    `start_index` is the index of images[0] in the whole set (keeps seeds stable when chunked).
    """
    t = paper_transform(kind)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        t.set_random_seed(_image_seed(seed, kind, start_index + i))
        out[i] = t(image=img)["image"]
    return out


def expand_training_set(images: np.ndarray, labels: np.ndarray, mode: str, seed: int = 42):
    """The training set the heads see: unchanged ('none') or Type 0 + Type 1 + Type 2 copies ('paper').

    Returns (images, labels, aug_type) where aug_type is -1 for original images.
    """
    if mode not in AUGMENT_MODES:
        raise ValueError(f"unknown augmentation {mode!r}; expected one of {AUGMENT_MODES}")
    labels = np.asarray(labels)
    if mode == "none":
        return images, labels, np.full(len(labels), -1, dtype=np.int8)
    copies = [augment_type(images, k, seed) for k in PAPER_TYPES]
    kinds = np.concatenate([np.full(len(labels), k, dtype=np.int8) for k in PAPER_TYPES])
    return np.concatenate(copies), np.concatenate([labels] * len(PAPER_TYPES)), kinds


def augmented_size(n: int, mode: str) -> int:
    return n * (len(PAPER_TYPES) if mode == "paper" else 1)


__all__ = ["AUGMENT_MODES", "PAPER_TYPES", "paper_transform", "augment_type", "expand_training_set",
           "augmented_size"]
