"""The smear's own ruler: the red-cell diameter in pixels, per field or per stream.

Red cells (~7.5 µm) are in every field of a blood smear, so their size tells the magnification
without any calibration slide. Cell size limits (what is a platelet, what is a white cell) and
crop sides are expressed in red-cell diameters, so the same rules hold at 40x and at 100x and
on a wide or a square camera frame.

* `red_cell_diameters(image)`: one estimate per red cell seen (distance-transform peaks of the
  unstained foreground), in full-resolution pixels; shared with red-cell detection.
* `red_cell_diameter(image)`: the field's typical red-cell diameter, or None when it cannot be
  measured (too few red cells, a featureless frame) or the value is outside what a microscope
  can show (`plausible_diameter`).
* `Ruler`: the value to use for each frame of one stream. An image folder is a set of
  independent fields (each field is measured on its own); a video, a camera or `--same-slide`
  stills are one slide under one objective (a running median, steadier than one field). Each
  frame size has its own history: a new size starts one (a different camera or objective), a
  size seen before goes on with its own (folders that interleave two cameras).
"""
from __future__ import annotations

from collections import OrderedDict, deque
from statistics import median as list_median  # np.median's value for a few dozen floats, without an array
from dataclasses import dataclass

import cv2
import numpy as np

from hemaedge.edge.segment import SegmentParams, WorkCopy, _ellipse, _fill_holes, work_copy

# What a microscope can show: below ~12 px a red cell (and so a white cell, ~2 red cells) is
# too small to classify; above a third of the frame's short side fewer than ~3 red cells fit
# across the field, which is not a smear field but a close-up or a mis-measurement.
MIN_DIAMETER_PX = 12.0
MAX_DIAMETER_FRACTION = 1 / 3
# at least this many red cells must be measured for one field's estimate
MIN_RED_CELLS = 5


def plausible_diameter(d: float | None, shape) -> bool:
    """Whether a red-cell diameter of `d` px can be real on a frame of this shape."""
    if d is None or not np.isfinite(d):
        return False
    return MIN_DIAMETER_PX <= d <= MAX_DIAMETER_FRACTION * min(shape[:2])


def _red_cell_foreground(image: np.ndarray, params: SegmentParams | None = None, work: WorkCopy | None = None):
    """(distance-transform peak radii, red-cell foreground area), both on the work copy, and its
    scale; None when the frame has nothing to measure. `work`: the frame's `segment.work_copy`
    when the caller has it (the segmenter uses the same one)."""
    p = params or SegmentParams()
    if work is None:
        work = work_copy(image, p)
    small, scale, stained = work.image, work.scale, work.mask
    green = work.blurred_green()
    if float(cv2.meanStdDev(green)[1][0, 0]) < 4.0:  # featureless (black, white, no slide): Otsu would split noise
        return None
    near_stain = cv2.dilate(stained, _ellipse(9)) > 0
    unstained = green[~near_stain]
    if unstained.size < 100:
        return None
    thr, _ = cv2.threshold(unstained.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    cells = (green < thr).astype(np.uint8) * 255
    cells = _fill_holes(cv2.morphologyEx(cells, cv2.MORPH_OPEN, _ellipse(3)))
    cells[near_stain] = 0
    if cells.all() or not cells.any():  # no background to measure from
        return None
    dist = cv2.distanceTransform(cells, cv2.DIST_L2, 5)
    return disc_peaks(dist), float(np.count_nonzero(cells)), scale


PEAK_DISC = _ellipse(15)  # one red cell's neighbourhood on the work copy
# the largest centred square inside the disc: a maximum over the disc is one over this square too
_r = PEAK_DISC.shape[0] // 2
_INNER = next(np.ones((2 * k + 1, 2 * k + 1), np.uint8) for k in range(_r, -1, -1)
              if PEAK_DISC[_r - k:_r + k + 1, _r - k:_r + k + 1].all())


def disc_peaks(dist: np.ndarray, min_value: float = 3.0) -> np.ndarray:
    """The values of `dist` (float32) at its local maxima over `PEAK_DISC` that exceed
    `min_value`, in row-major order: `dist[(dist == cv2.dilate(dist, PEAK_DISC)) & (dist > min_value)]`.

    Dilating by a disc is OpenCV's slow path (every kernel element); a square is separable and
    fast. So the square inside the disc picks the candidates (every disc maximum is one) and only
    those few are checked over the whole disc: the same values at about half the cost.
    """
    ys, xs = np.nonzero((dist > min_value) & (dist == cv2.dilate(dist, _INNER)))
    if len(ys) == 0:
        return dist[ys, xs]
    r = PEAK_DISC.shape[0] // 2
    padded = cv2.copyMakeBorder(dist, r, r, r, r, cv2.BORDER_CONSTANT, value=0)  # 0 <= every candidate
    windows = np.lib.stride_tricks.sliding_window_view(padded, PEAK_DISC.shape)[ys, xs]
    values = dist[ys, xs]
    keep = values >= windows[:, PEAK_DISC > 0].max(axis=1)
    return values[keep]


def red_cell_diameters(image: np.ndarray, params: SegmentParams | None = None) -> np.ndarray:
    """Diameter estimates in full-resolution pixels, one per red cell found (may be empty).

    Red cells absorb green light: the green channel, thresholded by Otsu over the pixels that
    are *not* stained (so a large dark nucleus cannot take the threshold for itself), gives the
    red-cell foreground; pale centres are filled and stained cells removed. Each local maximum
    of its distance transform (one per 15 px neighbourhood of the work copy) is a red cell's
    radius; touching cells keep their own peaks. A featureless frame gives none.
    """
    m = _red_cell_foreground(image, params)
    if m is None:
        return np.zeros(0, np.float32)
    peaks, _, scale = m
    return (2.0 * peaks / scale).astype(np.float32)


def red_cell_diameter(image: np.ndarray, params: SegmentParams | None = None,
                      work: WorkCopy | None = None) -> float | None:
    """This field's red-cell diameter in pixels, or None when it cannot be measured.

    Two estimates that fail differently, combined by their geometric mean: the median of the
    larger peaks (those >= 0.6 x the 90th percentile: partly visible and overlapping cells give
    small peaks) over-reads where overlapping cells merge into blobs; the foreground area per
    such peak under-reads where cells overlap. Over every 8th PBC field and every 2nd BCCD frame
    96% / 98% of the fields are within 25% of the data set's median (the median of the peaks
    alone: 95% / 98%, with outliers up to 2.5x instead of 1.7x).
    """
    m = _red_cell_foreground(image, params, work)
    if m is None:
        return None
    peaks, area, scale = m
    if len(peaks) < MIN_RED_CELLS:
        return None
    big = peaks[peaks >= 0.6 * np.percentile(peaks, 90)]
    by_peaks = 2.0 * float(np.median(big))
    by_area = 2.0 * float(np.sqrt(area / len(big) / np.pi))
    value = float(np.sqrt(by_peaks * by_area)) / scale
    return value if plausible_diameter(value, image.shape) else None


@dataclass
class Reading:
    """The ruler for one frame: the diameter to use (None: not known) and where it came from."""

    diameter: float | None
    source: str  # "this field", "running median", "not measured"


# Independent fields of one frame size: a field whose own reading is more than this factor
# off the median of the stream's recent fields is taken as a mis-measurement (red cells with
# open pale centres, a field of cut or overlapping cells: one field's reading then halves)
# and the stream's median is used; `OUTLIERS_TO_RESET` outliers in a row that agree with each
# other are a real change of magnification and start the stream over.
OUTLIER_FACTOR = 1.4
OUTLIERS_TO_RESET = 3
MIN_FIELDS_FOR_MEDIAN = 5
# Frames whose sides differ by at most this fraction come from one camera: a folder of one
# analyser's exports differs by a few pixels (PBC fields are 360x363, 360x360 and 366x369, mixed).
# Each camera keeps its own history, so a folder that interleaves two of them does not lose it.
SAME_CAMERA_FRACTION = 0.05
MAX_CAMERAS = 8


@dataclass
class _Camera:
    """One frame size's history: recent readings, recent outliers, frames read."""

    shape: tuple
    values: deque
    outliers: list
    frames: int = 0


def _same_camera(a, b) -> bool:
    return all(abs(x - y) <= SAME_CAMERA_FRACTION * max(x, y) for x, y in zip(a, b))


class Ruler:
    """Red-cell diameter per frame of one stream.

    `same_slide=False` (image folders): every frame is its own field, measured on its own and
    checked against the recent fields of the same frame size: once there are
    `MIN_FIELDS_FOR_MEDIAN`, the field gets their median (source "stream median"), whether it
    agrees with them or is an outlier (more than `OUTLIER_FACTOR` off); `OUTLIERS_TO_RESET`
    outliers in a row that agree with each other start that history over (a new magnification).
    `same_slide=True` (video, camera, `--same-slide`): running median of the last `window`
    estimates; after `stable_after` estimates it re-measures every `every`-th frame only (the
    magnification does not change between frames). Each frame size (within
    `SAME_CAMERA_FRACTION`) has its own history: a new size starts one, a size seen before
    goes on with its own.
    """

    def __init__(self, same_slide: bool, window: int = 50, stable_after: int = 15, every: int = 10):
        self.same_slide = same_slide
        self.window, self.stable_after, self.every = window, stable_after, every
        self.cameras: "OrderedDict[tuple, _Camera]" = OrderedDict()
        self.cam: _Camera | None = None
        self.resets = 0
        self.unmeasured_frames = 0
        self.outlier_fields = 0
        self.measured = deque(maxlen=200)  # recent per-frame values, for the summary

    def _camera(self, shape) -> _Camera:
        """The history of this frame size, started when the size is new (a reset)."""
        if self.cam is not None and self.cam.shape == shape:
            return self.cam
        cam = self.cameras.get(shape) or next((c for c in self.cameras.values() if _same_camera(c.shape, shape)), None)
        if cam is None:
            if self.cameras:
                self.resets += 1  # a different camera or objective
            cam = _Camera(shape, deque(maxlen=self.window), [])
            self.cameras[shape] = cam
            while len(self.cameras) > MAX_CAMERAS:
                self.cameras.popitem(last=False)
        self.cameras.move_to_end(cam.shape)
        return cam

    def _field(self, d: float | None) -> Reading:
        """An independent field's reading, checked against the recent fields of its camera."""
        cam = self.cam
        if not d:
            return Reading(None, "not measured")
        if len(cam.values) >= MIN_FIELDS_FOR_MEDIAN:
            median = float(list_median(cam.values))
            if not median / OUTLIER_FACTOR <= d <= median * OUTLIER_FACTOR:
                cam.outliers.append(d)
                run = cam.outliers[-OUTLIERS_TO_RESET:]
                if len(run) < OUTLIERS_TO_RESET or max(run) > min(run) * OUTLIER_FACTOR:
                    self.outlier_fields += 1
                    return Reading(median, "stream median")
                self.resets += 1  # the same new value field after field: a new magnification
                cam.values.clear()
                cam.values.extend(run[:-1])
        cam.outliers = []
        cam.values.append(d)
        if len(cam.values) > MIN_FIELDS_FOR_MEDIAN:
            # the field agrees with its camera's recent fields: their median is the steadier value (one
            # field reads within 25% of it, the magnification of one camera does not change between fields)
            return Reading(float(list_median(cam.values)), "stream median")
        return Reading(d, "this field")

    def read(self, image: np.ndarray, params: SegmentParams | None = None, work: WorkCopy | None = None) -> Reading:
        self.cam = cam = self._camera(tuple(image.shape[:2]))
        if not self.same_slide:
            d = red_cell_diameter(image, params, work)
            self._note(d)
            return self._field(d)
        if len(cam.values) < self.stable_after or cam.frames % self.every == 0:
            d = red_cell_diameter(image, params, work)
            if d:
                cam.values.append(d)
            self._note(d)
        cam.frames += 1
        if not cam.values:
            return Reading(None, "not measured")
        return Reading(float(list_median(cam.values)), "running median")

    def _note(self, d):
        if d:
            self.measured.append(d)
        else:
            self.unmeasured_frames += 1

    @property
    def diameter(self) -> float | None:
        """The current stream value (same slide) or the median of recent fields' values."""
        if self.same_slide and self.cam is not None and self.cam.values:
            return float(list_median(self.cam.values))
        return float(list_median(self.measured)) if self.measured else None

    def summary(self) -> dict:
        d = self.diameter
        return {"mode": "one slide (running median)" if self.same_slide else "independent fields",
                "red_cell_diameter_px": round(d, 1) if d else None,
                "measured": d is not None,
                "frames_not_measured": self.unmeasured_frames, "resets": self.resets,
                "frame_sizes": len(self.cameras),
                "fields_off_the_stream_median": self.outlier_fields,
                "note": None if d else "red cells could not be measured: crops fell back to each cell's own box"}
