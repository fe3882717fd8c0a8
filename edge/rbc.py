"""Red cells on whole smear frames: find every red cell, separate touching ones, measure them.

Red cells are the smear's background population: unstained (not blue-purple like nuclei and
platelets), darker than the glass, roughly round, about one red-cell diameter `d` across. The
diameter comes from the smear's own ruler (`ruler.red_cell_diameter`, or a running median
over a run), so every size here is in red-cell diameters and the same defaults work at the
BCCD, PBC and Chula magnifications.

    frame -> shrink so a red cell is `work_diameter` px across -> Otsu cell mask (the papers'
    `preprocess.otsu_binary`) with pale centres filled -> stained objects removed (white cells,
    platelets) -> split touching cells -> regions -> centre, box, equivalent diameter, area.

Splitting methods (measured against each other in benchmarks/rbc_detection.py):
  "watershed"  (default) distance transform of the mask; one marker per local maximum that is
               at least `peak_fraction` of a red-cell radius deep; watershed floods the mask from
               the markers, so a clump of touching cells becomes one region per cell;
  "components" no splitting: one region per connected blob (the baseline);
  "hough"      OpenCV's Hough circle transform on the grey frame, circles of 0.6-1.4 d kept where
               they sit on the cell mask (overlapping cells give overlapping circles).
numpy + OpenCV only: this runs on the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from hemaedge.edge.preprocess import otsu_binary
from hemaedge.edge.ruler import red_cell_diameter
from hemaedge.edge.segment import SegmentParams, _fill_holes, stain_mask

RBC_METHODS = ("watershed", "components", "hough")
# Morphology crops span this many red-cell diameters: the whole cell and a rim of its neighbours
# (shared by the training crops, train/rbc_crops.py, and the device).
DEFAULT_SIDE_FACTOR = 1.5


@dataclass(frozen=True)
class RbcParams:
    """Tunables of red-cell detection; defaults chosen on Chula train frames and BCCD train."""

    method: str = "watershed"
    # work on a copy where a red cell spans this many pixels (speed, and one scale for all microscopes)
    work_diameter: float = 32.0
    # a watershed marker must be this deep, in red-cell radii (two touching cells keep two peaks)
    peak_fraction: float = 0.30
    # peaks closer than this (in diameters) are one cell
    min_peak_distance: float = 0.50
    # only blobs larger than this many red-cell areas go through the watershed (a lone cell needs none)
    split_area: float = 1.0
    # regions smaller than this fraction of a red cell's area are debris (schistocytes are ~0.3-0.5)
    min_area: float = 0.12
    # stained objects (nuclei, platelets) grown by this fraction of d and removed from the mask
    stain_margin: float = 0.25

    def __post_init__(self):
        if self.method not in RBC_METHODS:
            raise ValueError(f"unknown red-cell method {self.method!r}; expected one of {RBC_METHODS}")


@dataclass
class RedCell:
    """One red cell: box (x0, y0, x1, y1, exclusive ends) in frame pixels, centre, size."""

    box: tuple[int, int, int, int]
    centre: tuple[float, float]
    diameter: float      # equivalent-circle diameter in pixels
    area: int            # pixels of the frame
    edge: bool = False   # touches the frame border (partly visible)
    kind: str = "rbc"


def _ellipse(d: float) -> np.ndarray:
    return _ellipse_px(max(3, int(round(d)) | 1))


@lru_cache(maxsize=64)
def _ellipse_px(d: int) -> np.ndarray:
    # made once per size: the watershed asks for the same two kernels for every blob of a frame
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))
    k.flags.writeable = False
    return k


def cell_mask(small: np.ndarray, d: float, params: RbcParams) -> np.ndarray:
    """0/255 mask of red cells (filled) on the working copy, stained objects removed."""
    mask = _fill_holes(otsu_binary(small))
    stained, _ = stain_mask(small, SegmentParams())
    if stained.any():
        mask[cv2.dilate(stained, _ellipse(2 * params.stain_margin * d + 1)) > 0] = 0
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, _ellipse(0.15 * d))


def _markers(mask: np.ndarray, d: float, params: RbcParams) -> tuple[int, np.ndarray]:
    """(number of cells, marker image) of one blob: one marker per plateau / cluster of near
    distance-transform peaks at least `peak_fraction` radii deep."""
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    peaks = (dist >= cv2.dilate(dist, _ellipse(params.min_peak_distance * d))) & (dist >= params.peak_fraction * d / 2)
    n, markers = cv2.connectedComponents(cv2.dilate(peaks.view(np.uint8), _ellipse(0.2 * d)))
    return n - 1, markers


def _watershed_labels(mask: np.ndarray, markers: np.ndarray) -> np.ndarray:
    peaks8 = markers > 0
    markers = markers + 1                             # background = 1, cells 2..n
    markers[(mask > 0) & ~peaks8] = 0                 # to be flooded
    cv2.watershed(cv2.cvtColor(255 - mask, cv2.COLOR_GRAY2BGR), markers)
    labels = markers - 1
    labels[(labels < 1) | (mask == 0)] = 0
    return labels


def _regions(labels: np.ndarray, d: float, params: RbcParams, offset=(0, 0)):
    """(box, centre, area) per region, debris removed. Watershed leaves a one-pixel boundary
    (-1 -> 0 here) between neighbours, so 4-connected components of the labelled pixels are
    exactly its regions, and OpenCV measures them in one pass."""
    n, _, stats, centroids = cv2.connectedComponentsWithStats((labels > 0).astype(np.uint8), connectivity=4)
    min_area = params.min_area * np.pi * (d / 2) ** 2
    ox, oy = offset
    out = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area >= min_area:
            out.append(((x + ox, y + oy, x + w + ox, y + h + oy),
                        (float(centroids[k][0]) + ox, float(centroids[k][1]) + oy), area))
    return out


def _split_regions(mask: np.ndarray, d: float, params: RbcParams):
    """Regions of the mask; blobs bigger than `split_area` red cells are split by the watershed,
    each in its own box (most blobs are lone cells: the watershed runs on a fraction of the frame)."""
    n, lab, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    single = np.pi * (d / 2) ** 2
    out = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < params.min_area * single:
            continue
        if area <= params.split_area * single:
            out.append(((x, y, x + w, y + h), (float(centroids[k][0]), float(centroids[k][1])), area))
            continue
        blob = cv2.copyMakeBorder((lab[y:y + h, x:x + w] == k).view(np.uint8) * np.uint8(255), 1, 1, 1, 1,
                                  cv2.BORDER_CONSTANT, value=0)
        n_cells, markers = _markers(blob, d, params)
        if n_cells == 0:  # no point deep enough to be a cell's centre: a thin streak, not a cell
            continue
        if n_cells == 1:  # one peak: a large lone cell, nothing to split (the costly watershed skipped)
            out.append(((x, y, x + w, y + h), (float(centroids[k][0]), float(centroids[k][1])), area))
            continue
        out += _regions(_watershed_labels(blob, markers), d, params, offset=(x - 1, y - 1))
    return out


def _hough(small: np.ndarray, mask: np.ndarray, d: float):
    gray = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), (5, 5), 0)
    circles = cv2.HoughCircles(gray, cv2.HOUGH_GRADIENT, dp=1, minDist=0.6 * d, param1=60, param2=14,
                               minRadius=int(0.3 * d), maxRadius=int(0.7 * d) + 1)
    out = []
    h, w = mask.shape
    for cx, cy, r in (circles[0] if circles is not None else []):
        xi, yi = int(round(cx)), int(round(cy))
        if not (0 <= xi < w and 0 <= yi < h) or mask[yi, xi] == 0:
            continue
        box = (max(0, int(cx - r)), max(0, int(cy - r)), min(w, int(cx + r) + 1), min(h, int(cy + r) + 1))
        out.append((box, (float(cx), float(cy)), int(np.pi * r * r)))
    return out


def detect_red_cells(image: np.ndarray, diameter: float | None = None,
                     params: RbcParams | None = None) -> tuple[list[RedCell], float | None]:
    """All red cells of an RGB uint8 frame, and the red-cell diameter (px) used.

    `diameter` is the ruler (e.g. a run's running median); None measures it on this frame.
    A frame with too few red cells to measure gives ([], None): not an error.
    """
    p = params or RbcParams()
    d_full = diameter or red_cell_diameter(image)
    if not d_full:
        return [], None
    full_h, full_w = image.shape[:2]
    scale = min(1.0, p.work_diameter / d_full)
    small = cv2.resize(image, (max(1, round(full_w * scale)), max(1, round(full_h * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1.0 else image
    sx, sy = full_w / small.shape[1], full_h / small.shape[0]
    d = d_full * small.shape[1] / full_w
    mask = cell_mask(small, d, p)
    if p.method == "hough":
        regions = _hough(small, mask, d)
    else:
        regions = _split_regions(mask, d, p) if p.method == "watershed" else _regions(mask, d, p)
    cells = []
    h, w = small.shape[:2]
    for (x0, y0, x1, y1), (cx, cy), area in regions:
        edge = x0 <= 0 or y0 <= 0 or x1 >= w or y1 >= h
        fbox = (int(round(x0 * sx)), int(round(y0 * sy)), min(full_w, int(round(x1 * sx))),
                min(full_h, int(round(y1 * sy))))
        farea = int(round(area * sx * sy))
        cells.append(RedCell(fbox, (float((cx + 0.5) * sx - 0.5), float((cy + 0.5) * sy - 0.5)),
                             float(2 * np.sqrt(farea / np.pi)), farea, edge))
    return cells, float(d_full)


def crop_side(diameter: float, side_factor: float = DEFAULT_SIDE_FACTOR) -> int:
    """Side in frame pixels of a morphology crop: `side_factor` red-cell diameters of the RULER,
    not of the cell, so a macrocyte stays larger than a microcyte."""
    return max(8, int(round(side_factor * diameter)))


def rbc_crops(image: np.ndarray, centres, diameter: float, size: int,
              side_factor: float = DEFAULT_SIDE_FACTOR) -> np.ndarray:
    """(N, size, size, 3) uint8: the morphology classifier's input crops, one per centre (x, y),
    each `crop_side` frame pixels wide, at the classifier's input size.

    The frame is resized ONCE by size / side (area interpolation) and the crops are cut from
    that copy at exactly `size` px, instead of N crops each resized on its own; where a crop
    runs off the frame, the border is replicated. The training crops of `hemaedge data
    rbc-crops` are cut by this same function, so training and device see the same pixels.
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    out = np.empty((len(centres), size, size, 3), dtype=np.uint8)
    if not len(centres):
        return out
    h, w = image.shape[:2]
    scale = size / crop_side(diameter, side_factor)
    small = image
    if scale != 1.0:
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    sx, sy = small.shape[1] / w, small.shape[0] / h
    padded = cv2.copyMakeBorder(small, size, size, size, size, cv2.BORDER_REPLICATE)
    # pixel centres map as (c + 0.5) * s - 0.5; a crop's top-left corner is size // 2 before it
    x0 = np.clip(np.round((centres[:, 0] + 0.5) * sx - 0.5).astype(int) - size // 2 + size, 0, padded.shape[1] - size)
    y0 = np.clip(np.round((centres[:, 1] + 0.5) * sy - 0.5).astype(int) - size // 2 + size, 0, padded.shape[0] - size)
    for i, (x, y) in enumerate(zip(x0, y0)):
        out[i] = padded[y:y + size, x:x + size]
    return out
