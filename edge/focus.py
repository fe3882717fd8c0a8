"""Is a frame usable? Blank frames, out-of-focus frames and frames smeared by stage motion.

* `is_grayscale(image)`: a frame without colour (the stain channel needs it): warned about.
* `blank_reason(image)`: a frame with nothing to see (lamp off, no signal, a white or
  featureless field, a frame too small to show a measurable cell) gives a reason string; such a
  frame is recorded as "no cells" with it.
* `sharpness(image)`: variance of the Laplacian on a small grey copy (a standard focus measure;
  it falls steeply when the image is defocused or blurred by motion).
* `FocusGate`: on a live feed, a frame whose sharpness is far below the recent sharp frames'
  is not classified, with the reason ("out of focus", or "motion blur" when the stage moved
  fast). The reference is relative to the stream because absolute sharpness depends on the
  microscope, the camera and the smear.
"""
from __future__ import annotations

import math
from collections import deque
from statistics import median

import cv2
import numpy as np

from hemaedge.edge.ruler import MAX_DIAMETER_FRACTION, MIN_DIAMETER_PX

DARK_BELOW = 12.0  # mean grey level: lamp off, capture card without signal
# The smallest frame that can show a measurable red cell: the ruler reads no diameter below
# `MIN_DIAMETER_PX` nor above `MAX_DIAMETER_FRACTION` of the short side (a thumbnail, an icon).
MIN_FRAME_SIDE = math.ceil(MIN_DIAMETER_PX / MAX_DIAMETER_FRACTION)
FEATURELESS_STD = 3.0  # grey-level spread: a white, black or uniform field
WORK_WIDTH = 320


def grey_small(image: np.ndarray) -> np.ndarray:
    """The frame in grey, at most `WORK_WIDTH` wide: made once per frame and shared by the blank
    check and the focus gate (stage motion uses its own, smaller copy). The pipeline passes the
    segmenter's small colour copy (`segment.work_image`, 320x240 for a 640x480 frame), not the
    whole frame: converting it costs a fifth as much, and the statistics these checks take
    (mean, spread, Laplacian variance, phase correlation) barely change (tested)."""
    h, w = image.shape[:2]
    scale = min(1.0, WORK_WIDTH / max(1, w))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return grey


_grey_small = grey_small  # the old private name


def blank_reason(image: np.ndarray, grey: np.ndarray | None = None) -> str | None:
    """Why a frame shows nothing to count, or None when it may hold cells (`grey`: the frame's
    `grey_small` copy when the caller has it)."""
    h, w = image.shape[:2]
    if min(h, w) < MIN_FRAME_SIDE:
        return (f"frame is too small ({w}x{h} px; at least {MIN_FRAME_SIDE} px a side shows a red cell that can be "
                "measured: a thumbnail? use the full-size image)")
    grey = grey_small(image) if grey is None else grey
    m, sd = cv2.meanStdDev(grey)  # one pass in OpenCV; numpy's mean + std take two
    mean, std = float(m[0, 0]), float(sd[0, 0])
    if mean < DARK_BELOW:
        return f"frame is dark (mean grey {mean:.0f} of 255: lamp off or no signal)"
    if std < FEATURELESS_STD:
        return f"frame is featureless (grey spread {std:.1f}: no smear in view, or a white/uniform field)"
    return None


def is_grayscale(image: np.ndarray) -> bool:
    """A frame whose three channels are (nearly) equal: a monochrome camera or a grey file. The
    segmenter needs colour (the stain is blue-purple), so such frames find no cells."""
    if image.ndim != 3 or image.shape[2] < 3:
        return True
    sub = image[::8, ::8]
    # one channel at a time: numpy copies a strided (H, W, 3) block 3 values per inner loop
    r, g, b = (sub[..., c].astype(np.int16) for c in range(3))
    return int(np.abs(r - g).max()) <= 2 and int(np.abs(g - b).max()) <= 2


def sharpness(image: np.ndarray, grey: np.ndarray | None = None) -> float:
    """Variance of the Laplacian of a small grey copy (higher = sharper). The Laplacian of 8-bit
    grey is an integer within +-1020, exact in int16; OpenCV's meanStdDev takes its variance in
    one pass (numpy's float32 `.var()` of the same values agrees to ~1e-6)."""
    lap = cv2.Laplacian(grey_small(image) if grey is None else grey, cv2.CV_16S)
    return float(cv2.meanStdDev(lap)[1][0, 0]) ** 2


class FocusGate:
    """Decides per frame of a live feed whether it is sharp enough to classify.

    A frame is unusable when its sharpness is below `ratio` x the median of the last `window`
    usable frames; the first `warmup` frames only build the reference (a stream that starts
    defocused is judged once a sharp reference exists... or never, if none comes: then every
    frame is used, as without the gate). `motion_px` is the stage move since the previous frame,
    which names the reason: a fast move blurs, a still stage that is blurred is out of focus.
    """

    def __init__(self, ratio: float = 0.45, window: int = 30, warmup: int = 3, fast_move_fraction: float = 0.03):
        self.ratio, self.warmup, self.fast = ratio, warmup, fast_move_fraction
        self.recent: deque = deque(maxlen=window)
        self.rejected: dict[str, int] = {}

    def check(self, image: np.ndarray, motion_px: float = 0.0, grey: np.ndarray | None = None) -> tuple[float, str | None]:
        """(sharpness, reason the frame is unusable or None)."""
        v = sharpness(image, grey)
        if len(self.recent) >= self.warmup:
            ref = float(median(self.recent))  # statistics.median: np.median's value, without an array
            if v < self.ratio * ref:
                fast = motion_px > self.fast * image.shape[1]
                reason = "motion blur" if fast else "out of focus"
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
                return v, reason
        self.recent.append(v)
        return v, None
