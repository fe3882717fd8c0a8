"""The fine-tuning recipe's online augmentation (Hameed 2025) and the robustness pieces, with
albumentations 2.0.

Every training batch goes through two stages around the input contract's preprocessing
(`edge.preprocess.apply_preprocess`: colour normalisation, CLAHE), so the network learns on
exactly what the device will feed it:

  raw crop -> CAMERA stage (another microscope: stain, white balance, tint, blur, JPEG, noise)
           -> apply_preprocess (normalisation + CLAHE, the device's code)
           -> RECIPE stage (geometry, brightness/contrast, cutout; the published list)

Presets (`--augment`):
  full   the recipe: rotation ±25° + scale ±15 %, h/v flips, shift-scale-rotate,
         brightness/contrast, hue/saturation/value, Gaussian noise, motion blur, cutout
  light  flips + rotation/scale only (cheaper on a CPU)
  isotropic  light with any rotation (±180°): for cells without an orientation (red-cell morphology)
  robust full + the camera stage (pieces below, all on unless `--robust-pieces` names fewer)
         and a wider scale jitter (`--scale-jitter`, default ±25 %: the red-cell ruler's error)
  none   nothing

Camera pieces (ROBUST_PIECES): stain (per-channel optical-density scale: stain concentration
under Beer-Lambert), hsv (hue/saturation), gamma, white-balance (black-body illuminant),
tint (background colour cast), blur (Gaussian blur or defocus), jpeg (quality 40-95), noise
(Gaussian / sensor ISO noise). The H&E presets of histology tools are deliberately not used:
blood smears carry Romanowsky stains.

Each batch gets its own seed derived from (seed, epoch, batch index), so a run that resumes
after an interruption sees the same augmentations it would have seen.
"""
from __future__ import annotations

import cv2
import numpy as np
import albumentations as A

AUGMENT_PRESETS = ("full", "light", "isotropic", "robust", "none")
ROBUST_PIECES = ("stain", "hsv", "gamma", "white-balance", "tint", "blur", "jpeg", "noise")
DEFAULT_SCALE_JITTER = 0.25
_BORDER = cv2.BORDER_REFLECT_101  # black corners would look like stain-free background


class StainStrength(A.ImageOnlyTransform):
    """Scale each channel's optical density -log(I/255) by its own factor (stain concentration).

    Under Beer-Lambert a stronger or weaker stain multiplies the absorbance; per channel this
    is I' = 255 (I/255)^k. Background (I ~ 255) stays put, stained parts darken or fade.
    """

    def __init__(self, scale_range=(0.75, 1.33), p: float = 0.5):
        super().__init__(p=p)
        self.scale_range = tuple(scale_range)

    def get_params(self):
        lo, hi = np.log(self.scale_range[0]), np.log(self.scale_range[1])
        return {"k": np.exp(self.random_generator.uniform(lo, hi, size=3))}

    def apply(self, img, k=(1.0, 1.0, 1.0), **params):
        levels = np.arange(256, dtype=np.float32)[:, None] / 255.0
        lut = np.clip(np.round(255.0 * levels ** np.asarray(k, np.float32)[None, :]), 0, 255).astype(np.uint8)
        return cv2.LUT(np.ascontiguousarray(img), lut.reshape(256, 1, 3))

    def get_transform_init_args_names(self):
        return ("scale_range",)


def camera_transforms(pieces=ROBUST_PIECES) -> list:
    """The camera stage: what a different microscope, stain batch or camera does to a crop."""
    unknown = set(pieces) - set(ROBUST_PIECES)
    if unknown:
        raise ValueError(f"unknown robustness pieces {sorted(unknown)}; expected some of {ROBUST_PIECES}")
    steps = {
        "stain": StainStrength(p=0.6),
        "hsv": A.HueSaturationValue(hue_shift_limit=12, sat_shift_limit=30, val_shift_limit=0, p=0.5),
        "gamma": A.RandomGamma(gamma_limit=(70, 140), p=0.4),
        "white-balance": A.PlanckianJitter(mode="blackbody", temperature_limit=(3500, 9000), p=0.5),
        "tint": A.RGBShift(r_shift_limit=18, g_shift_limit=18, b_shift_limit=18, p=0.4),
        "blur": A.OneOf([A.GaussianBlur(blur_limit=(3, 5), p=1.0),
                         A.Defocus(radius=(1, 3), alias_blur=(0.1, 0.3), p=1.0)], p=0.35),
        "jpeg": A.ImageCompression(quality_range=(40, 95), p=0.4),
        "noise": A.OneOf([A.GaussNoise(std_range=(0.01, 0.05), p=1.0),
                          A.ISONoise(color_shift=(0.01, 0.04), intensity=(0.1, 0.4), p=1.0)], p=0.3),
    }
    return [steps[name] for name in ROBUST_PIECES if name in pieces]


def recipe_transforms(preset: str = "full", scale_jitter: float | None = None) -> list:
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {AUGMENT_PRESETS}")
    if preset == "none":
        return []
    s = scale_jitter if scale_jitter is not None else (DEFAULT_SCALE_JITTER if preset == "robust" else 0.15)
    turn = 180 if preset == "isotropic" else 25  # a red cell looks the same at any angle
    geometric = [
        A.Affine(rotate=(-turn, turn), scale=(1.0 - s, 1.0 + s), border_mode=_BORDER, p=0.7),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
    ]
    if preset in ("light", "isotropic"):
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
    """Augments a uint8 RGB batch (N, H, W, 3); reproducible per (seed, epoch, batch).

    `preprocess` (uint8 image -> uint8 image, normally `apply_preprocess` with the model's
    contract) runs between the camera stage and the recipe stage; None = already applied.
    """

    def __init__(self, preset: str = "full", seed: int = 42, preprocess=None,
                 pieces=ROBUST_PIECES, scale_jitter: float | None = None):
        self.preset, self.seed = preset, int(seed)
        self.preprocess = preprocess
        camera = camera_transforms(pieces) if preset == "robust" else []
        recipe = recipe_transforms(preset, scale_jitter)
        self.camera = A.Compose(camera) if camera else None
        self.recipe = A.Compose(recipe) if recipe else None

    def _seed(self, epoch, batch, stage):
        return int(np.random.SeedSequence([self.seed, int(epoch), int(batch), stage]).generate_state(1)[0])

    def __call__(self, images: np.ndarray, epoch: int, batch: int) -> np.ndarray:
        out = images
        if self.camera is not None:
            self.camera.set_random_seed(self._seed(epoch, batch, 1))
            out = np.stack([self.camera(image=img)["image"] for img in out])
        if self.preprocess is not None:
            out = np.stack([self.preprocess(img) for img in out])
        if self.recipe is not None:
            # stage tag 0 keeps the recipe presets' streams as they were before the camera stage
            self.recipe.set_random_seed(int(np.random.SeedSequence([self.seed, int(epoch), int(batch)]).generate_state(1)[0]))
            out = np.stack([self.recipe(image=img)["image"] for img in out])
        return out
