"""The fine-tuning recipe's online augmentation (Hameed 2025), with albumentations.

Applied on the fly to every training batch, after CLAHE (which is part of the input
contract and was applied once when the images were loaded), so the network sees the same
preprocessing as the device plus random variation:

  rotation ±25° and scale ±15 %, horizontal and vertical flips, shift-scale-rotate,
  brightness/contrast, hue/saturation/value, Gaussian noise, motion blur, cutout.

Presets: "full" (the recipe), "light" (flips + rotation/scale only: cheaper on a CPU) and
"none". Each batch gets its own seed derived from (seed, epoch, batch index), so a run that
resumes after an interruption sees the same augmentations it would have seen.
"""
from __future__ import annotations

import cv2
import numpy as np
import albumentations as A

AUGMENT_PRESETS = ("full", "light", "none")
_BORDER = cv2.BORDER_REFLECT_101  # black corners would look like stain-free background


def recipe_transforms(preset: str = "full") -> list:
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {AUGMENT_PRESETS}")
    if preset == "none":
        return []
    geometric = [
        A.Affine(rotate=(-25, 25), scale=(0.85, 1.15), border_mode=_BORDER, p=0.7),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
    ]
    if preset == "light":
        return geometric
    return geometric + [
        # shift-scale-rotate (albumentations 2 folds ShiftScaleRotate into Affine)
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15),
                 border_mode=_BORDER, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=15, val_shift_limit=10, p=0.3),
        A.GaussNoise(std_range=(0.02, 0.06), p=0.2),
        A.MotionBlur(blur_limit=(3, 5), p=0.2),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.08, 0.2),
                        hole_width_range=(0.08, 0.2), fill=0, p=0.3),  # cutout
    ]


class BatchAugmenter:
    """Augments a uint8 RGB batch (N, H, W, 3); reproducible per (seed, epoch, batch)."""

    def __init__(self, preset: str = "full", seed: int = 42):
        self.preset, self.seed = preset, int(seed)
        self.compose = A.Compose(recipe_transforms(preset)) if preset != "none" else None

    def __call__(self, images: np.ndarray, epoch: int, batch: int) -> np.ndarray:
        if self.compose is None:
            return images
        seed = int(np.random.SeedSequence([self.seed, int(epoch), int(batch)]).generate_state(1)[0])
        self.compose.set_random_seed(seed)
        return np.stack([self.compose(image=img)["image"] for img in images])
