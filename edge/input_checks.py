"""What a run's frames say about the camera or the files, as warnings that say what to do.

Inputs from microscopes and cameras we have not seen (issues #12, #13;
benchmarks/results/input_robustness.md) fail in a few ways the pixels show:

* grayscale frames (a monochrome camera, a grey file): cells are found by their stain colour,
  so grey frames show none (`focus.is_grayscale`);
* red and blue swapped (a camera or a program that sends BGR as RGB): the blue-purple nuclei
  turn orange and the segmenter loses them (`red_blue_swap_score`);
* 16-bit frames holding fewer bits (a 10-14-bit camera): read at the depth they use, noted by
  the source (`preprocess.to_rgb_uint8`'s `notes`).

`InputChecks` collects them during a run (the swap score on each of the first `every` frames,
then on every `every`-th: ~0.4 ms each on a 640x480 frame) and `report()` is summary.json's
`input` block; `edge run` prints each warning at the end. Checks only: no frame's pixels are
changed.
"""
from __future__ import annotations

import logging

import numpy as np

from hemaedge.edge.focus import is_grayscale

logger = logging.getLogger(__name__)

# A run whose median swap score is below this looks red/blue swapped. In a stained smear the most
# absorbing pixels (nuclei, platelets) absorb red light more than blue, relative to the
# background: log ratio of red minus blue absorbance, per-frame median over the 1 % most absorbing
# pixels, is 0.5 (BCCD) and 0.9 (PBC) at the run median; swapped -0.5 / -0.9; white balance
# (x0.7/x1.3 on red/blue) and gamma 0.6-1.6 keep the sign; Chula frames (few nuclei) -0.1 as-is.
# Over runs of 10 consecutive frames (every 4th BCCD frame, every 10th PBC field, every 10th Chula
# frame): as-is at least 0.41 / 0.75 / -0.14, swapped at most -0.41 / -0.75.
SWAP_SCORE_BELOW = -0.3
MIN_SWAP_FRAMES = 3  # frames scored before the swap warning can be raised


def red_blue_swap_score(image: np.ndarray) -> float | None:
    """How much the most absorbing pixels absorb red more than blue light, relative to the
    frame's background (a 1-in-64 subsample): positive for a stained smear in RGB order, negative
    when red and blue are swapped; None for a frame without a background to compare with."""
    sub = image[::8, ::8].reshape(-1, 3).astype(np.float32) + 1.0
    green = sub[:, 1]
    bright = green >= np.percentile(green, 80)
    if not bright.any():
        return None
    absorb = -np.log(sub / np.median(sub[bright], axis=0))
    total = absorb.sum(axis=1)
    top = total >= np.percentile(total, 99)
    if float(np.median(total[top])) < 0.3:  # nothing absorbs: a blank or featureless frame
        return None
    return float(np.median(absorb[top, 0] - absorb[top, 2]))


class InputChecks:
    """A run's input checks: grayscale frames, a red/blue swap, and the source's conversion notes."""

    def __init__(self, every: int = 10):
        self.every = max(1, int(every))
        self.frames = 0
        self.grayscale_frames = 0
        self.swap_scores: list[float] = []

    def add_frame(self, image: np.ndarray, name: str = "") -> bool:
        """Check one frame; returns whether it is grayscale."""
        grey = is_grayscale(image)
        if grey:
            if not self.grayscale_frames:
                logger.warning("%s is grayscale: cells are found by their stain colour, so grey frames show none "
                               "(use a colour camera or colour images)", name or "a frame")
            self.grayscale_frames += 1
        elif self.frames < self.every or self.frames % self.every == 0:
            score = red_blue_swap_score(image)
            if score is not None:
                self.swap_scores.append(score)
        self.frames += 1
        return grey

    def swap_suspected(self) -> bool:
        return len(self.swap_scores) >= MIN_SWAP_FRAMES and float(np.median(self.swap_scores)) < SWAP_SCORE_BELOW

    def report(self, source_notes: dict | None = None) -> dict:
        """summary.json's `input` block: {"warnings": [...], "grayscale_frames", "red_blue_swap_score", "notes"}."""
        warnings = []
        if self.grayscale_frames:
            warnings.append(f"{self.grayscale_frames} of {self.frames} frames are grayscale: cells are found by their "
                            "stain colour, so grey frames show none; use a colour camera (or the camera's colour "
                            "mode) or colour images")
        if self.swap_suspected():
            warnings.append("red and blue look swapped (BGR suspected: the nuclei absorb blue more than red light, a "
                            "stained smear the other way round), so white cells are lost; set the camera or the "
                            "program that saved the frames to RGB, or rerun with --swap-red-blue")
        notes = dict(source_notes or {})
        warnings += [f"{msg} ({n} frame{'s' if n != 1 else ''})" for msg, n in notes.items()]
        return {"warnings": warnings, "frames_checked": self.frames, "grayscale_frames": self.grayscale_frames,
                "red_blue_swap_score": round(float(np.median(self.swap_scores)), 3) if self.swap_scores else None,
                "swap_frames_scored": len(self.swap_scores), "notes": notes}


__all__ = ["InputChecks", "red_blue_swap_score", "SWAP_SCORE_BELOW"]
