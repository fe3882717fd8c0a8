"""Cell segmentation on whole smear frames: find white cells / erythroblasts and platelets,
ignore red cells, and cut scale-normalised square crops for the classifier.

Two methods share one output (a list of `Detection`):

* ``stain`` (default): nuclei of white cells, erythroblasts and platelets take up the
  blue-purple stain, red cells and background do not, so the blue-minus-green channel
  separates them far better than brightness does. Threshold it (Otsu, floored at a fixed
  contrast so a frame without any white cell does not invent one), close the gaps between the
  lobes of one nucleus, keep components by their area in red-cell diameters, split touching
  cells with a distance-transform watershed, and grow each nucleus box to the whole cell.
  Platelets, far paler than nuclei, have their own mask (`find_platelets`): a threshold from
  the frame's own stain spread, and a colour test (blue-violet, not the pink-magenta specks on
  red cells).
* ``otsu``: the papers' pipeline (grayscale -> blur -> Otsu -> closing x2 -> opening x1, the
  one implementation in `preprocess.otsu_binary`) followed by the same component filtering;
  it finds every dark object, red cells included, and is kept for comparison.

Sizes are in red-cell diameters when the field's red cells were measured (`edge.ruler`), else
relative to the frame; never absolute pixels, so the same defaults work at the BCCD (640x480, a
white cell ~200 px) and PBC (360x363, ~130 px) magnifications and on wide camera frames.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from statistics import median as list_median

import cv2
import numpy as np

from hemaedge.edge.preprocess import median_int16, otsu_binary

METHODS = ("stain", "otsu")

# In a PBC/BloodMNIST crop a white cell spans about 130 px of the 200 px crop. Our cell box is
# drawn generously (like the BCCD annotators draw theirs, ~1.25x the cell), so the box spans
# ~0.8 of the crop: on PBC fields this gives a median crop side of ~200 px, as in training.
DEFAULT_CELL_FRACTION = 0.8


@dataclass(frozen=True)
class SegmentParams:
    """Every tunable of the segmenter; defaults tuned on the BCCD train split (see docs/edge.md)."""

    method: str = "stain"
    # stain channel (B - G) above the frame median by at least this much counts as stained
    min_contrast: float = 40.0
    blur: int = 5
    # closing kernel as a fraction of the frame's short side: joins the lobes of one nucleus
    close_fraction: float = 0.03
    # component areas as fractions of the frame area (used when the field has no ruler)
    min_wbc_area: float = 0.006
    # Platelets (`find_platelets`), from the frame's own statistics: a pale platelet is far less
    # stained than a nucleus, so it has its own mask, the stain channel above `platelet_pixel_z`
    # robust standard deviations (1.4826 x MAD) of the frame (never below `platelet_pixel_floor`
    # grey levels: a featureless frame has a tiny spread); a candidate's mean stain must reach
    # `platelet_min_z` of them and `platelet_min_score` grey levels.
    platelet_pixel_z: float = 2.0
    platelet_pixel_floor: float = 5.0
    platelet_min_z: float = 3.0
    platelet_min_score: float = 10.0
    # ... and its stain summed over the body (area in d^2 x mean stain in robust SDs: how much
    # stain it holds, whatever the magnification and stain strength) must reach `platelet_min_stain`.
    # The bodies just above both floors (0.03-0.04 d^2 at 3-3.7 SDs) were mostly not VOC platelets:
    # refractile dots, thin rods, faint specks. Chosen on BCCD train + val (2026-12-02 sweep of
    # 0.11-0.14, whole pipeline, IoU >= 0.5): 0.13 drops 10 false alarms and 4 labelled platelets
    # (recall 81.5 -> 80.1 %, precision 77.8 -> 80.1 %): a trade of recall for precision (F1 79.6 ->
    # 80.1), not a better detector; the lowest level with train + val precision >= 80 %.
    platelet_min_stain: float = 0.13
    # A platelet is blue-violet (it absorbs red light), the specks of stain on red cells and
    # their rims are pink-magenta: the candidate's blue-minus-red, above the background's, must
    # be at least this fraction of its stain contrast (a ratio: independent of exposure and stain
    # strength). BCCD train: labelled platelets 0.60-1.30 (5th-95th pct), other specks -0.81-0.47.
    platelet_min_blue: float = 0.6
    # platelet box: the stained body grown on each side by the pale rim (in d) that annotators
    # include, each side at least `min_platelet_box_rbc` d
    platelet_margin: float = 0.07
    min_platelet_box_rbc: float = 0.4
    # a stained body wider than this (in d) is not one platelet (a smear of pale stain)
    max_platelet_side_rbc: float = 0.8
    # A candidate is `on_red_cell` when more than this fraction of a ring `platelet_ring_rbc` d
    # wide around its box is red cell (darker than the background in green, Otsu over the
    # frame's unstained pixels): a platelet lying on a red cell, or an inclusion or the stain of
    # a red cell's pallor. It is not counted but kept, flagged for review
    # (`identify.decide`). Chosen on BCCD train + val (2026-12-02): of the platelets the whole
    # pipeline counted with more than half the ring red, 4 matched a VOC platelet and 17 did not
    # (0.3: 23 / 36, 0.7: 1 / 10).
    platelet_on_red_cell: float = 0.5
    platelet_ring_rbc: float = 0.06
    # a body wider than `pale_platelet_side_rbc` d whose mean stain is below `pale_platelet_z`
    # robust SDs is a pale smear of stain, not a platelet (a platelet that large has a dark
    # granular centre). Chosen on BCCD train + val (2026-12-02 sweep): platelet precision
    # 70.0 -> 72.9 / 64.3 -> 67.3 %, recall 78.0 -> 77.0 / 86.8 -> 86.8 %. (A limit of 0.2 d^2
    # on the pale body did better on BCCD but lost PBC platelets, larger in d^2: central cell
    # 97.0 -> 95.5 %.) 4.0 -> 3.5 with `platelet_min_stain` (2026-12-02, train + val): 2 more labelled
    # platelets (pale ones just over 0.5 d), no more false alarms (80.1 / 80.1 -> 80.8 / 80.3 %).
    pale_platelet_side_rbc: float = 0.5
    pale_platelet_z: float = 3.5
    # Where pale stain joins bodies (two platelets, a platelet and a red cell's rim, several
    # touching platelets), the pale-mask body is not one platelet: its strongly stained cores
    # (`stain_mask`) are the candidates instead, as for a body too large in area. That holds for a
    # body of a platelet's area that is too wide (`max_platelet_side_rbc`) or more than 3 times
    # longer than wide (`split_misshapen`), and for one that is ragged (`split_ragged`): whose
    # mask covers less than `platelet_min_solidity` of its convex hull (a platelet is a compact
    # disc). A ragged body without such cores (a streak of stain, a crystal) is dropped; the
    # cores themselves must be compact too. Chosen on BCCD train + val (2026-12-02; the
    # ablation: `benchmarks/results/platelet_rules.md`): before, 9 of the 57 VOC platelets the
    # whole pipeline missed were lost in too-wide bodies. Of the counted platelets matching a VOC
    # platelet 95 % have solidity >= 0.90, the 5 % most ragged false alarms <= 0.74: 0.8 is a
    # margin below the platelets, not a fitted optimum (0.85 / 0.9 lost 4 / 11 more labelled platelets).
    split_misshapen: bool = True
    platelet_min_solidity: float = 0.8
    split_ragged: bool = True
    # Pale bodies (seventh pass, chosen on BCCD train + val 2026-12-03, docs/edge.md). A stain
    # level of `pale_z` robust SDs marks a platelet's granular centre. A candidate whose mean
    # stain is below it is pale and must be more clearly blue-violet, `pale_min_blue` instead of
    # `platelet_min_blue` (the faint pink-grey specks on red cells pass 0.6: of the counted
    # candidates with mean below 4 SDs and blue below 0.8, 5 matched no VOC box, 1 did).
    pale_z: float = 4.0
    pale_min_blue: float = 0.8
    # Faint rescue: a body that fails the candidate tests above only for faintness (mean below
    # `platelet_min_z`, too little stain in all, or an area down to `faint_min_area_rbc` d^2,
    # below `min_platelet_rbc_area`) is still a candidate when at least `faint_centre_share`
    # of its pixels reach `pale_z` (a stained centre in a pale body: a small or faint
    # platelet, not a trace of stain), it is blue-violet at the pale level, compact
    # (solidity >= `faint_min_solidity`, a disc) and clear of red cells (at most
    # `faint_max_ring` of the ring around its box is red cell, not the 0.5 of other
    # candidates: a faint speck on a red cell's edge is stain, not a platelet). The classifier
    # confirms it as any other candidate.
    faint_rescue: bool = True
    faint_min_area_rbc: float = 0.015
    faint_centre_share: float = 0.2
    faint_min_solidity: float = 0.95
    faint_max_ring: float = 0.1
    # nucleus box -> whole-cell box: each side grows by this fraction of the box size
    cell_margin: float = 0.12
    # split a component by watershed when it is this many times a single cell's area
    split_factor: float = 2.2
    # white-cell pieces whose boxes overlap by this fraction of the smaller box are one cell
    merge_overlap: float = 0.15
    # ... unless they are two touching cells the watershed split: two pieces of one clump whose
    # nuclei are each at least `two_cells_core_rbc` d thick at their widest (distance-transform
    # radius; the lobes of a segmented neutrophil or an eosinophil are thinner) and whose widest
    # points lie at least `two_cells_apart_rbc` d apart (more than one nucleus's width) stay two
    # cells. Chosen on BCCD train + val and PBC val fields (2026-12-02): among the piece pairs
    # the overlap merge joined, only a touching monocyte + lymphocyte (BCCD train 00176: cores
    # 0.69 / 0.74 d, 1.98 d apart) passes; the thickest lobes of one PBC cell are 0.55-0.59 d
    # (cells of one clump: 0.6 d and 1.5 d apart at most).
    two_cells_core_rbc: float = 0.6
    two_cells_apart_rbc: float = 1.6
    detect_platelets: bool = True
    # segment on a copy whose short side is at most this many pixels (0: full resolution);
    # boxes are mapped back and crops cut from the full-resolution frame
    work_side: int = 240
    # Sizes in red-cell diameters (d, `edge.ruler.red_cell_diameter`), used whenever the field's
    # red cells were measured: the same limits then hold at any magnification and frame shape.
    # Component (stained) areas in d^2. Platelets: 0.03-0.4 d^2 of their own mask (smaller specks
    # are stain debris far more often than platelets; 0.03-0.04 d^2 are mostly small or pale
    # platelets whose mask holds only their core, and the classifier, judging them in a
    # platelet-sized crop, drops most debris: 0.04 -> 0.03 took the whole pipeline's BCCD
    # train + val platelet recall 77.4 -> 81.8 %, precision 75.1 -> 70.9 %, 2026-12-02, where
    # most of the new false alarms are small platelets VOC did not box). Measured with the per-field ruler: labelled PBC nuclei are
    # 1.34-5.6 d^2 (5th-95th percentile of 286 fields), labelled PBC platelet clumps 0.46-0.92;
    # BCCD white-cell nuclei (lower resolution) go down to ~0.5, BCCD platelets up to 0.16 (99th
    # percentile of 122 frames). Size alone cannot tell a platelet clump from a small nucleus
    # between 0.4 and 1.6 d^2 (large clumps reach 1.5): such a detection is `size_ambiguous` and the classifier decides
    # its kind (pipeline.CellClassifier); below 0.4 it can only be a platelet, above 1.6 only a
    # nucleated cell.
    min_wbc_rbc_area: float = 0.4
    min_platelet_rbc_area: float = 0.03
    max_platelet_rbc_area: float = 0.4
    sure_nucleated_rbc_area: float = 1.6
    # A size-ambiguous stained body whose mean stain is below this multiple of the frame's own
    # mask threshold (`WorkCopy.threshold`) is a red cell the mask caught at its darkest, not a
    # nucleus or a platelet clump: dropped. Chosen on BCCD train + val and PBC val fields
    # (2026-12-02): every labelled cell of that size is >= 1.46 (BCCD white cells >= 1.65, PBC
    # central cells >= 1.46), the faint red-cell detections of PBC fields 1.03-1.19 (6 of them
    # were counted as extra nucleated cells, more were taken for platelet clumps).
    faint_body_ratio: float = 1.3
    single_nucleus_rbc_area: float = 1.0
    # two white-cell pieces (boxes within this gap, in d) are one cell when their joint box is
    # no larger than one big white cell: the lobes of one nucleus, not two neighbours
    lobe_gap_rbc: float = 0.15
    max_cell_rbc: float = 1.8
    # a nucleus box within this many pixels (of the work copy) of the frame edge is cut by it
    edge_px: int = 2
    # A platelet candidate's crop is this fraction of a nucleated cell's crop side (1.5 instead
    # of 3 red-cell diameters): a crop sized for a platelet. In the 3-diameter crop a single BCCD
    # platelet is a dot the default model calls erythroblast for a third of the labelled
    # platelets; at half the side it confirms 156 / 161 labelled BCCD train platelets the
    # segmenter found (101 before) and 44 / 66 of its false alarms (39 before). Chosen on BCCD
    # train + val (2026-12-02 sweep of 0.33-1.0, `benchmarks/results/segmentation_bccd.md`).
    platelet_crop_scale: float = 0.5

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown segmentation method {self.method!r}; expected one of {METHODS}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Detection:
    """One cell: its box (x0, y0, x1, y1, exclusive ends), kind and crop square."""

    box: tuple[int, int, int, int]
    kind: str  # "wbc" (nucleated cell) or "platelet"
    area: int
    score: float = 0.0  # mean stain contrast inside the component
    crop: tuple[int, int, int] = field(default=(0, 0, 0))  # centre x, centre y, side
    at_edge: bool = False  # the cell is cut by the frame edge (only part of it is visible)
    size_ambiguous: bool = False  # nucleated cell or platelet clump: the classifier decides the kind
    on_red_cell: bool = False  # a platelet candidate lying on a red cell: flagged, not counted
    faint: bool = False  # a platelet candidate kept by the faint rescue (`SegmentParams.faint_rescue`)

    @property
    def size(self) -> int:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, y1 - y0)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


CROP_MODES = ("rbc", "cell", "fixed")
# BloodMNIST's 200 px crops of PBC fields span ~3.1 red-cell diameters (median `ruler.red_cell_diameter`
# 64 px over every 8th pbc_raw_val field); rounded to 3.
DEFAULT_RBC_FACTOR = 3.0


# ----------------------------------------------------------------------------- masks


def stain_channel(image: np.ndarray, blur: int = 5) -> np.ndarray:
    """Blue minus green of an RGB uint8 frame, relative to the frame median (float32)."""
    _, g, b = cv2.split(image)  # contiguous planes; OpenCV subtracts straight into float32 (exact)
    s = cv2.subtract(b, g, dtype=cv2.CV_32F)
    if blur > 1:
        s = cv2.GaussianBlur(s, (blur | 1, blur | 1), 0)
    # the median of a 1-in-16 subsample: the same background level at a fraction of the cost
    s -= float(median_f32(s[::4, ::4].ravel()))
    return s


def stain_mask(image: np.ndarray, params: SegmentParams) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask (0/255) of stained objects, and the stain channel it came from."""
    mask, s, _ = stain_mask_and_threshold(image, params)
    return mask, s


def stain_mask_and_threshold(image: np.ndarray, params: SegmentParams) -> tuple[np.ndarray, np.ndarray, float]:
    """`stain_mask`, and the frame's threshold (stain-channel grey levels) that made it."""
    s = stain_channel(image, params.blur)
    s8 = s * 2  # 0.5 units per grey level, median at 64; in place, no temporaries
    s8 += 64
    s8 = np.clip(s8, 0, 255, out=s8).astype(np.uint8)
    otsu, _ = cv2.threshold(s8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max((otsu - 64) / 2.0, params.min_contrast)
    mask = (s > thr).view(np.uint8) * np.uint8(255)
    return mask, s, float(thr)


@dataclass
class WorkCopy:
    """One frame's small copy and its stain mask, made once and shared by the ruler and the
    segmenter (both work on the same copy with the same parameters)."""

    image: np.ndarray  # the frame resized so its short side is at most `work_side`
    scale: float  # work copy / full frame
    mask: np.ndarray  # stain_mask(image)
    stain: np.ndarray  # its stain channel
    threshold: float = 0.0  # the stain level above which `mask` is set (Otsu's, floored at min_contrast)
    _green: np.ndarray | None = field(default=None, repr=False)

    def blurred_green(self) -> np.ndarray:
        """The work copy's green channel blurred 5x5, made on first use: the ruler and the
        platelets' red-cell level both start from it (one blur per frame, not one each)."""
        if self._green is None:
            self._green = cv2.GaussianBlur(self.image[..., 1], (5, 5), 0)
        return self._green


def work_scale(shape, params: SegmentParams | None = None) -> float:
    """Work copy / full frame for a frame of this shape."""
    p = params or SegmentParams()
    h, w = shape[:2]
    return min(1.0, p.work_side / min(h, w)) if p.work_side else 1.0


def work_image(image: np.ndarray, params: SegmentParams | None = None) -> np.ndarray:
    """The frame resized (area averaging) so its short side is at most `params.work_side`: the
    image of its work copy, also the source of the frame's small grey copy (`focus.grey_small`)."""
    h, w = image.shape[:2]
    scale = work_scale(image.shape, params)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA) if scale < 1.0 else image


# Black bars (letterbox / pillarbox) around the picture: a 16:9 camera showing a 4:3 field, a
# frame padded to a fixed size. Border rows / columns no brighter than `BAR_LEVEL` (JPEG noise
# on black stays below it; a smear's background is far brighter), at least `MIN_BAR_PX` deep.
BAR_LEVEL = 24
MIN_BAR_PX = 4


def picture_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """The picture inside black bars at the frame's borders, (x0, y0, x1, y1), or None when the
    frame has none (the usual case, decided from its four border lines alone). Bars would count
    as dark "cells" for the ruler, hide where the picture (and the cells it cuts) ends, and
    darken the run's colour check; `edge.pipeline` processes the picture only."""
    if min(image[0].max(), image[-1].max(), image[:, 0].max(), image[:, -1].max()) > BAR_LEVEL:
        return None
    h, w = image.shape[:2]
    rows = image[:, ::4].max(axis=(1, 2)) > BAR_LEVEL if image.ndim == 3 else image[:, ::4].max(axis=1) > BAR_LEVEL
    cols = image[::4].max(axis=(0, 2)) > BAR_LEVEL if image.ndim == 3 else image[::4].max(axis=0) > BAR_LEVEL
    if not rows.any() or not cols.any():
        return None  # all dark: the blank check says so
    y0, y1 = int(np.argmax(rows)), h - int(np.argmax(rows[::-1]))
    x0, x1 = int(np.argmax(cols)), w - int(np.argmax(cols[::-1]))
    deep = [v >= MIN_BAR_PX for v in (y0, h - y1, x0, w - x1)]
    if not any(deep) or (y1 - y0) < h // 4 or (x1 - x0) < w // 4:
        return None  # a dark line or corner, not bars; or hardly any picture
    # only the sides with real bars are cut (a dark cell touching the other edges stays)
    y0, y1 = (y0 if deep[0] else 0), (y1 if deep[1] else h)
    x0, x1 = (x0 if deep[2] else 0), (x1 if deep[3] else w)
    return x0, y0, x1, y1


def shift_detection(d: "Detection", dx: int, dy: int) -> "Detection":
    """The detection moved by (dx, dy) pixels (from the picture inside bars to the frame), in place."""
    x0, y0, x1, y1 = d.box
    d.box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
    cx, cy, side = d.crop
    d.crop = (cx + dx, cy + dy, side)
    return d


def work_copy(image: np.ndarray, params: SegmentParams | None = None, small: np.ndarray | None = None) -> WorkCopy:
    """The frame's work copy (short side <= `params.work_side`) with its stain mask. `small`: the
    frame's `work_image` when the caller already made it."""
    p = params or SegmentParams()
    small = work_image(image, p) if small is None else small
    mask, s, thr = stain_mask_and_threshold(small, p)
    return WorkCopy(small, work_scale(image.shape, p), mask, s, thr)


def components(mask: np.ndarray):
    """`cv2.connectedComponentsWithStats` (8-connected) of a uint8 mask, with 16-bit labels
    whenever they cannot overflow: half the cost, the same components. Every 2x2 block of
    pixels is 8-connected, so a mask has at most one component per block."""
    h, w = mask.shape[:2]
    ltype = cv2.CV_16U if ((h + 1) // 2) * ((w + 1) // 2) < 65535 else cv2.CV_32S
    return cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=ltype)


def order_statistic(cumulative_counts: np.ndarray, k: int) -> int:
    """The k-th smallest value (0-based) of integers whose histogram's running sum is given."""
    return int(np.searchsorted(cumulative_counts, k, side="right"))


def _middle_values(a: np.ndarray, guess: float, width: float):
    """np.median of the float32 values `a` (1-D, no NaN) when its two middle values lie within
    `guess` +- `width`, else None: the values in that window are counted and only they are
    partially sorted (a few percent of them instead of all)."""
    n = a.size
    lo, hi = np.float32(guess - width), np.float32(guess + width)
    k1, k2 = (n - 1) // 2, n // 2
    below = int(np.count_nonzero(a < lo))
    if below > k1:
        return None
    window = a[(a >= lo) & (a <= hi)]
    if below + window.size <= k2:
        return None
    window.partition(sorted({k1 - below, k2 - below}))
    # as np.median: the mean of the two middle values, in float32
    return (window[k1 - below] + window[k2 - below]) / np.float32(2)


def median_f32(a: np.ndarray, guess: float | None = None, width: float = 0.0) -> np.float32:
    """np.median of the float32 values `a` (1-D, no NaN), exactly: `_middle_values` around a
    guess when there is one, else (or when the guess was off) one partial sort of all values.
    (Under half np.median's cost on the few thousand values of a subsample.)"""
    m = None if guess is None else _middle_values(a, guess, width)
    if m is not None:
        return m
    k = a.size // 2
    part = np.partition(a, k)  # one k: half the cost of partitioning at both middle ranks
    if a.size % 2:
        return part[k]
    # as np.median: the mean of the two middle values in float32; the lower one is the largest
    # value left of rank k
    return (part[:k].max() + part[k]) / np.float32(2)


def mean_f32(a: np.ndarray) -> float:
    """np.mean of the float32 values `a` (1-D), exactly: numpy's float32 pairwise sum divided by
    the count in float64 and rounded to float32, as np.mean does, without its Python wrapper
    (which costs more than the sum for the few dozen pixels of a platelet)."""
    return float(np.float32(float(np.add.reduce(a)) / a.size))


def robust_spread(s: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of a float32 stain channel's 1-in-4 subsample:
    exactly `1.4826 * np.median(np.abs(sub - np.median(sub)))` with `sub = s[::2, ::2]`, at
    under half its cost. The guesses: the channel is centred on the median of its 1-in-16
    subsample (`stain_channel`), which is part of this one, so its median is near 0; that
    subsample's median |value| is near the MAD."""
    a = s[::2, ::2].ravel()  # a copy (the subsample is strided)
    q = np.abs(s[::4, ::4]).ravel()
    mad_guess = float(np.partition(q, q.size // 2)[q.size // 2]) if q.size else 0.0
    width = 0.1 * mad_guess + 1e-3
    d = np.abs(a - median_f32(a, 0.0, width))
    return 1.4826 * float(median_f32(d, mad_guess, width))


def upper_quartile_cut(values: np.ndarray) -> int:
    """For non-negative integers: the t with `values >= t` exactly where `values >=
    np.percentile(values, 75)` (numpy's linear rule), from a histogram instead of a sort.

    The percentile lies at position 0.75 (n - 1) of the sorted values; between two sorted
    values no value exists, so an integer reaches it exactly when it reaches the value at the
    next whole position."""
    v = values.ravel()
    pos = 0.75 * (v.size - 1)
    at = int(pos) if pos == int(pos) else int(pos) + 1
    return order_statistic(np.bincount(v).cumsum(), at)


def _ellipse(d: int) -> np.ndarray:
    d = max(3, int(d) | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))


# ----------------------------------------------------------------------------- components


def _split_touching(comp: np.ndarray, single_area: float) -> list[np.ndarray]:
    """Watershed on the distance transform: one mask per cell of a clump of touching cells."""
    dist = cv2.distanceTransform(cv2.copyMakeBorder(comp, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0),
                                 cv2.DIST_L2, 5)[1:-1, 1:-1]
    radius = np.sqrt(single_area / np.pi)
    peaks = (dist >= 0.6 * radius).astype(np.uint8)
    n, markers = cv2.connectedComponents(peaks)
    if n <= 2:  # background + one peak region: nothing to split
        return [comp]
    markers = markers.astype(np.int32) + 1
    markers[(comp > 0) & (peaks == 0)] = 0  # unknown: to be flooded
    rgb = cv2.cvtColor(255 - comp, cv2.COLOR_GRAY2BGR)
    cv2.watershed(rgb, markers)
    parts = [((markers == k) & (comp > 0)).astype(np.uint8) * 255 for k in range(2, n + 1)]
    return [p for p in parts if p.any()] or [comp]


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    x, y, w, h = cv2.boundingRect(mask)
    return x, y, x + w, y + h


def _grow(box, margin: float, shape) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    h, w = shape[:2]
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return (max(0, int(round(x0 - dx))), max(0, int(round(y0 - dy))),
            min(w, int(round(x1 + dx))), min(h, int(round(y1 + dy))))


def segment(image: np.ndarray, params: SegmentParams | None = None,
            cell_fraction: float = DEFAULT_CELL_FRACTION, crop_side: int | None = None,
            rbc_diameter: float | None = None, work: WorkCopy | None = None) -> list[Detection]:
    """All nucleated cells and platelets of an RGB uint8 frame, largest first.

    With `rbc_diameter` (the field's red-cell diameter in pixels, see `edge.ruler`) size limits
    are in red-cell diameters; without it they are fractions of the frame (a fallback that
    only holds for frames framed like BCCD's and PBC's).
    Crops are scale-normalised (side = cell size / `cell_fraction`) unless `crop_side` fixes
    the side in pixels (the runtime passes a side of 3 red-cell diameters).
    A frame without cells gives an empty list (not an error). `work`: this frame's
    `work_copy` when the caller already made it (the ruler's), so it is not made twice.
    """
    p = params or SegmentParams()
    full_h, full_w = image.shape[:2]
    if work is None:  # find cells on a smaller copy (cells are large); crops come from the full frame
        work = work_copy(image, p)
    image, scale = work.image, work.scale
    h, w = image.shape[:2]
    frame_area = float(h * w)
    short = min(h, w)
    if rbc_diameter:
        d2 = (rbc_diameter * scale) ** 2  # red-cell diameter on the work copy, squared
        min_wbc = p.min_wbc_rbc_area * d2
        sure_wbc = p.sure_nucleated_rbc_area * d2
    else:
        min_wbc = p.min_wbc_area * frame_area
        sure_wbc = min_wbc
    if p.method == "otsu":
        mask = otsu_binary(image)
        s = stain_channel(image, p.blur)
    else:
        mask, s = work.mask, work.stain
    # join the lobes of one nucleus (neutrophils) without joining neighbouring cells
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _ellipse(p.close_fraction * short))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _ellipse(3))
    n, labels, stats, _ = components(mask)
    # the area of one nucleus for the watershed (a clump of touching cells is split when it is
    # split_factor times this)
    single = (p.single_nucleus_rbc_area * d2 if rbc_diameter else min_wbc * 2.5)
    dets: list[Detection] = []
    cores = []  # (piece, clump label, x, y, radius) of the pieces a watershed split gave
    for k in range(1, n):
        area = int(stats[k, cv2.CC_STAT_AREA])
        if area < min_wbc:  # platelets have their own, more sensitive mask (find_platelets)
            continue
        # work inside the component's bounding box: cheap however many components there are
        x, y, bw, bh = stats[k, :4].tolist()
        roi = (slice(y, y + bh), slice(x, x + bw))
        comp = (labels[roi] == k).astype(np.uint8) * 255
        s_roi = s[roi]
        parts = _split_touching(comp, single) if area > p.split_factor * single else [comp]
        for part in parts:
            parea = int(np.count_nonzero(part))
            if parea < min_wbc:
                continue
            score = mean_f32(s_roi[part > 0])
            if parea < sure_wbc and p.method == "stain" and score < p.faint_body_ratio * work.threshold:
                continue  # as faint as a red cell: not a nucleus nor a platelet clump
            px0, py0, px1, py1 = _box_of(part)
            nucleus = (px0 + x, py0 + y, px1 + x, py1 + y)
            box = _grow(nucleus, p.cell_margin, image.shape)
            dets.append(Detection(box, "wbc", parea, score, at_edge=_touches_edge(nucleus, image.shape, p.edge_px),
                                  size_ambiguous=parea < sure_wbc))
            if len(parts) > 1 and rbc_diameter:
                cores.append((dets[-1], k, *_widest_point(part, x, y)))
    dets = _merge_lobes(dets, image.shape, p.merge_overlap,
                        _two_cells(cores, rbc_diameter * scale, p) if cores else None)
    if rbc_diameter:
        dets = _merge_close_lobes(dets, rbc_diameter * scale, p.lobe_gap_rbc, p.max_cell_rbc)
    if p.detect_platelets:
        # without a ruler: the diameter implied by the frame-fraction white-cell limit
        d_work = rbc_diameter * scale if rbc_diameter else float(np.sqrt(min_wbc / p.min_wbc_rbc_area))
        # their nuclei, not their whole boxes: a platelet lying at a white cell's rim keeps its shape
        dets += find_platelets(image, s, [_shrink(d.box, p.cell_margin) for d in dets], d_work, p, core=work.mask,
                               work=work)
    if scale < 1.0:
        sx, sy = full_w / w, full_h / h
        for d in dets:
            x0, y0, x1, y1 = d.box
            d.box = (int(round(x0 * sx)), int(round(y0 * sy)), min(full_w, int(round(x1 * sx))),
                     min(full_h, int(round(y1 * sy))))
            d.area = int(round(d.area * sx * sy))
        short = min(full_h, full_w)
    dets.sort(key=lambda d: d.area, reverse=True)
    ref = _reference_size(dets, short)
    for d in dets:
        d.crop = crop_square(d, cell_fraction, ref)
        if crop_side:
            d.crop = (d.crop[0], d.crop[1], int(crop_side))
        if d.kind == "platelet":  # a crop sized for a platelet (its classifier verdict: `identify.decide`)
            d.crop = (d.crop[0], d.crop[1], max(8, int(round(d.crop[2] * p.platelet_crop_scale))))
    return dets


def find_platelets(image: np.ndarray, s: np.ndarray, nucleated_boxes, rbc_px: float,
                   params: SegmentParams | None = None, core: np.ndarray | None = None,
                   work: WorkCopy | None = None) -> list[Detection]:
    """Platelets of a (work-copy) RGB frame: small blue-violet bodies outside the nucleated cells.

    `s`: the frame's stain channel (`stain_channel`), `nucleated_boxes`: the nucleated cells'
    boxes (their insides are not searched: lobes and granules are not platelets), `rbc_px`: the
    red-cell diameter on this image. Every threshold comes from the frame itself (the stain
    channel's robust spread, the background's colour) or is in red-cell diameters, so the same
    rule holds under another microscope, stain or camera. `core`: the strongly stained mask
    (`stain_mask`); where the pale mask joins neighbouring platelets (a clump, a platelet on a
    pale smear) into a body too large for one, the strongly stained cores inside it are the
    candidates instead. `work`: the frame's work copy (this `image`), whose blurred green it shares.
    """
    p = params or SegmentParams()
    spread = robust_spread(s)  # robust SD of the stain channel
    mask = (s > max(p.platelet_pixel_z * spread, p.platelet_pixel_floor)).view(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _ellipse(3))
    for x0, y0, x1, y1 in nucleated_boxes:
        mask[y0:y1, x0:x1] = 0
    d2 = rbc_px * rbc_px
    lo, hi = p.min_platelet_rbc_area * d2, p.max_platelet_rbc_area * d2
    # pale-mask bodies down to the faint rescue's area are looked at (smaller ones: only rescued)
    body_lo = min(lo, p.faint_min_area_rbc * d2) if p.faint_rescue else lo
    n, labels, stats, _ = components(mask)
    split = np.zeros(n, bool)  # bodies whose strongly stained cores are the candidates instead
    if core is not None and n > 1:
        area = stats[1:, cv2.CC_STAT_AREA]
        split[1:] = area > hi
        if p.split_misshapen:  # sized like a platelet but too wide or too long for one: joined bodies
            split[1:] |= (area >= lo) & _misshapen(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT],
                                                   rbc_px, p)
    # (label image, its stats, label, the label image's origin in the frame) of each candidate body
    bodies = [(labels, stats, k, 0, 0) for k in _candidates(stats, body_lo, hi, rbc_px, p) if not split[k]]
    pale_labels = labels

    def cores_of(k: int) -> list:
        """The cores of pale body `k`, labelled inside its own box: cheap however many."""
        x, y, bw, bh = stats[k, :4].tolist()
        roi = (slice(y, y + bh), slice(x, x + bw))
        cn, clabels, cstats, _ = components(((core[roi] > 0) & (pale_labels[roi] == k)).view(np.uint8))
        return [(clabels, cstats, c, x, y) for c in _candidates(cstats, lo, hi, rbc_px, p)]

    for k in np.flatnonzero(split):
        bodies += cores_of(k)
    if not bodies:
        return []
    # blue minus red of the background: the brightest quarter of the unstained pixels (on the
    # 1-in-4 subsample; a candidate's own blue minus red is taken inside its box below)
    sub = image[::2, ::2]
    bright = sub[..., 0].astype(np.int16)  # R + G + B, summed in place (no int32 temporaries)
    bright += sub[..., 1]
    bright += sub[..., 2]
    unstained = mask[::2, ::2] == 0
    if unstained.any():
        bg = _blue_minus_red_int16(sub)[unstained & (bright >= upper_quartile_cut(bright[unstained]))]
    else:
        bg = _blue_minus_red_int16(image)
    background_blue = median_int16(bg)  # np.median of the same integers, from a histogram
    h, w = image.shape[:2]
    red = None  # the red-cell mask, made when a candidate needs it
    out = []
    for labels, stats, k, ox, oy in bodies:
        lx, ly, bw, bh = stats[k, :4].tolist()
        x, y = lx + ox, ly + oy
        roi = (slice(y, y + bh), slice(x, x + bw))
        inside = labels[ly:ly + bh, lx:lx + bw] == k
        values = s[roi][inside]
        area = values.size
        rescuable = p.faint_rescue and labels is pale_labels
        centred = None  # a stained centre: at least `faint_centre_share` of its pixels at `pale_z`
        if area < lo:  # too small for a platelet unless rescued (most such specks: tested before the mean)
            centred = rescuable and np.count_nonzero(values >= p.pale_z * spread) >= p.faint_centre_share * area
            if not centred:
                continue
        score = mean_f32(values)
        # too faint, too little stain in all (a speck, a faint trace) or too small for a platelet
        faint = (area < lo or score < max(p.platelet_min_z * spread, p.platelet_min_score)
                 or area * score < p.platelet_min_stain * d2 * spread)
        if faint and centred is None:
            centred = rescuable and np.count_nonzero(values >= p.pale_z * spread) >= p.faint_centre_share * area
        if faint and not centred:
            continue  # no stained centre either
        if max(bw, bh) > p.pale_platelet_side_rbc * rbc_px and score < p.pale_platelet_z * spread:
            continue  # large and pale: a smear of stain
        blue = p.pale_min_blue if faint or score < p.pale_z * spread else p.platelet_min_blue
        if (mean_f32(_blue_minus_red(image[roi])[inside]) - background_blue) < blue * score:
            continue  # pink-magenta: a speck of stain on a red cell, not a platelet
        if faint and _solidity(inside) < p.faint_min_solidity:
            continue  # a faint body must be a disc
        if p.platelet_min_solidity and _solidity(inside) < p.platelet_min_solidity:
            if p.split_ragged and core is not None and labels is pale_labels:
                bodies += cores_of(k)  # not one disc: touching platelets? its cores are the candidates
            continue  # ragged: a smear of stain or a crystal, not a disc
        # the stained body grown by the pale rim, each side at least the smallest platelet box
        cx, cy = x + bw / 2.0, y + bh / 2.0
        rim = p.platelet_margin * rbc_px
        hx = max(bw / 2.0 + rim, p.min_platelet_box_rbc * rbc_px / 2)
        hy = max(bh / 2.0 + rim, p.min_platelet_box_rbc * rbc_px / 2)
        box = (max(0, int(round(cx - hx))), max(0, int(round(cy - hy))),
               min(w, int(round(cx + hx))), min(h, int(round(cy + hy))))
        if red is None:  # unstained: outside the pale mask and the nuclei (`core`; their boxes are cleared in `mask`)
            red = red_cell_level(image, mask if core is None else (mask | core),
                                 None if work is None else work.blurred_green())
        ring = _ring_share(*red, box, max(2, round(p.platelet_ring_rbc * rbc_px)))
        if faint and ring > p.faint_max_ring:
            continue  # a faint body at a red cell's edge: stain, not a platelet
        out.append(Detection(box, "platelet", area, score,
                             at_edge=_touches_edge((x, y, x + bw, y + bh), image.shape, p.edge_px),
                             on_red_cell=ring > p.platelet_on_red_cell, faint=faint))
    return out


def red_cell_level(image: np.ndarray, stained: np.ndarray, green: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """A (work-copy) RGB frame's blurred green channel and the level below which it is red cell:
    Otsu's threshold over the pixels `stained` (a 0/non-0 mask) leaves out (on a 1-in-4
    subsample: the same level at a fraction of the cost). Red cells absorb green, the background
    does not. `green`: that blurred channel when the caller has it (`WorkCopy.blurred_green`)."""
    if green is None:
        green = cv2.GaussianBlur(image[..., 1], (5, 5), 0)
    unstained = green[::2, ::2][stained[::2, ::2] == 0]
    if unstained.size < 2:
        return green, -1.0  # nothing unstained: no red cell can be told from the background
    thr, _ = cv2.threshold(unstained.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return green, float(thr)


def _ring_share(green: np.ndarray, level: float, box, width: int) -> float:
    """The fraction of the ring `width` pixels wide around `box` (inside the frame) that is red
    cell (`green` below `level`, `red_cell_level`)."""
    x0, y0, x1, y1 = box
    h, w = green.shape[:2]
    X0, Y0, X1, Y1 = max(0, x0 - width), max(0, y0 - width), min(w, x1 + width), min(h, y1 + width)
    red = green[Y0:Y1, X0:X1] < level
    ring = red.size - (x1 - x0) * (y1 - y0)
    if ring <= 0:
        return 0.0
    return (int(np.count_nonzero(red)) - int(np.count_nonzero(red[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0]))) / ring


def _misshapen(bw, bh, rbc_px: float, p: SegmentParams):
    """A body box (width, height; numbers or arrays) too wide for one platelet or more than 3 times
    longer than wide: not one platelet."""
    side = np.maximum(bw, bh)
    return (side > p.max_platelet_side_rbc * rbc_px) | (side > 3 * np.maximum(1, np.minimum(bw, bh)))


def _solidity(inside: np.ndarray) -> float:
    """Area over convex-hull area of a body's mask (1 = convex: a disc)."""
    cnts, _ = cv2.findContours(inside.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    c = max(cnts, key=cv2.contourArea)
    hull = cv2.contourArea(cv2.convexHull(c))
    return cv2.contourArea(c) / hull if hull > 0 else 1.0


def _candidates(stats: np.ndarray, lo: float, hi: float, rbc_px: float, p: SegmentParams) -> list[int]:
    """The labels (1..n-1) of the components whose area is within lo..hi and whose box is not
    `_misshapen`, in label order: platelet candidates (tested for all components at once)."""
    area = stats[1:, cv2.CC_STAT_AREA]
    ok = (area >= lo) & (area <= hi) & ~_misshapen(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT],
                                                   rbc_px, p)
    return (np.flatnonzero(ok) + 1).tolist()


def _blue_minus_red(image: np.ndarray) -> np.ndarray:
    """Blue minus red of an RGB uint8 image (or a part of one), float32: computed only where it
    is needed (a subsample, a candidate's box), each value as on the whole frame."""
    return _blue_minus_red_int16(image).astype(np.float32)  # integers: exact in float32


def _blue_minus_red_int16(image: np.ndarray) -> np.ndarray:
    """`_blue_minus_red` as exact int16 (-255..255): for a median from a histogram."""
    d = image[..., 2].astype(np.int16)
    d -= image[..., 0]
    return d


def _shrink(box, margin: float) -> tuple[int, int, int, int]:
    """The box `_grow(box, margin)` was grown from (the nucleus of a cell box)."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin / (1 + 2 * margin), (y1 - y0) * margin / (1 + 2 * margin)
    return int(round(x0 + dx)), int(round(y0 + dy)), int(round(x1 - dx)), int(round(y1 - dy))


def _touches_edge(box, shape, margin: int) -> bool:
    h, w = shape[:2]
    return box[0] <= margin or box[1] <= margin or box[2] >= w - margin or box[3] >= h - margin


def _joined(a: Detection, b: Detection) -> Detection:
    box = (min(a.box[0], b.box[0]), min(a.box[1], b.box[1]), max(a.box[2], b.box[2]), max(a.box[3], b.box[3]))
    area = a.area + b.area
    # cut by the edge when the main piece is: a small stained piece at the edge merged into a
    # whole cell does not make the cell partial
    main_piece = a if a.area >= b.area else b
    return Detection(box, "wbc", area, (a.score * a.area + b.score * b.area) / area, at_edge=main_piece.at_edge,
                     size_ambiguous=a.size_ambiguous and b.size_ambiguous)


def _merge_lobes(dets: list[Detection], shape, min_overlap: float, two_cells=None) -> list[Detection]:
    """Join white-cell pieces whose boxes overlap: the lobes of one nucleus that the closing or
    the watershed left apart, unless `two_cells(a, b)` says they are two touching cells. (Two
    other touching white cells whose boxes overlap this much are reported as one: rare in a
    smear, and the price of not splitting every lobed nucleus.)"""
    def overlapping(a, b):
        ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
        return smaller and ix * iy / smaller >= min_overlap
    return _merge_pairs(dets, lambda a, b: overlapping(a.box, b.box) and not (two_cells and two_cells(a, b)))


def _widest_point(part: np.ndarray, x: int, y: int) -> tuple[float, float, float]:
    """A piece's widest point (x, y on the work copy) and its distance-transform radius there."""
    dist = cv2.distanceTransform(cv2.copyMakeBorder(part, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0),
                                 cv2.DIST_L2, 5)[1:-1, 1:-1]
    _, radius, _, (px, py) = cv2.minMaxLoc(dist)
    return float(px + x), float(py + y), float(radius)


def _two_cells(cores: list, rbc_px: float, p: SegmentParams):
    """`two_cells(a, b)` for `_merge_lobes`: two pieces of one watershed-split clump, each with a
    nucleus at least `two_cells_core_rbc` d thick, whose widest points are at least
    `two_cells_apart_rbc` d apart, are two touching cells (not the lobes of one nucleus)."""
    def core(d):
        return next((c[1:] for c in cores if c[0] is d), None)  # identity: merged pieces have none

    def two_cells(a, b):
        ca, cb = core(a), core(b)
        if ca is None or cb is None or ca[0] != cb[0]:
            return False
        thick = min(ca[3], cb[3]) >= p.two_cells_core_rbc * rbc_px
        return thick and float(np.hypot(ca[1] - cb[1], ca[2] - cb[2])) >= p.two_cells_apart_rbc * rbc_px
    return two_cells


def _merge_close_lobes(dets: list[Detection], rbc_px: float, gap_rbc: float, max_cell_rbc: float) -> list[Detection]:
    """Join white-cell pieces that lie within `gap_rbc` red-cell diameters of each other when
    the joined box still has the size of one white cell (a bilobed eosinophil or a neutrophil
    whose lobes the closing did not join): two neighbouring cells give a larger box."""
    def close(a, b):
        gx = max(0, max(a.box[0], b.box[0]) - min(a.box[2], b.box[2]))
        gy = max(0, max(a.box[1], b.box[1]) - min(a.box[3], b.box[3]))
        j = _joined(a, b)
        return max(gx, gy) <= gap_rbc * rbc_px and j.size <= max_cell_rbc * rbc_px
    return _merge_pairs(dets, close)


def _merge_pairs(dets: list[Detection], same_cell) -> list[Detection]:
    wbc = [d for d in dets if d.kind == "wbc"]
    rest = [d for d in dets if d.kind != "wbc"]
    changed = True
    while changed:
        changed = False
        for i in range(len(wbc)):
            for j in range(i + 1, len(wbc)):
                if same_cell(wbc[i], wbc[j]):
                    wbc[i] = _joined(wbc[i], wbc[j])
                    del wbc[j]
                    changed = True
                    break
            if changed:
                break
    return wbc + rest


# ----------------------------------------------------------------------------- helpers


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the pale centres of red cells: background (0) not 8-connected to the frame border.
    One flood fill from a one-pixel frame of background around the mask (the frame joins every
    border pixel): a third of the cost of labelling every background component."""
    reached = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(reached, None, (0, 0), 255, flags=8)
    out = mask.copy()
    out[reached[1:-1, 1:-1] == 0] = 255
    return out


def _reference_size(dets: list[Detection], short: int) -> float:
    """Size of a white cell in this frame: platelet crops are scaled to it, not to themselves,
    so a platelet appears as small in its crop as it did in training."""
    wbc = [d.size for d in dets if d.kind == "wbc"]
    # statistics.median: np.median's value for a few ints, without its array overhead
    return float(list_median(wbc)) if wbc else 0.36 * short  # PBC: ~130 px of a 360 px field


def crop_square(det: Detection, cell_fraction: float, reference_size: float) -> tuple[int, int, int]:
    """Centre and side of the crop: the cell spans `cell_fraction` of the side."""
    if not 0.05 <= cell_fraction <= 1.0:
        raise ValueError(f"cell fraction {cell_fraction} is out of range 0.05..1")
    cx, cy = det.centre
    size = det.size if det.kind == "wbc" else reference_size
    side = max(8, int(round(size / cell_fraction)))
    return int(round(cx)), int(round(cy)), side


def extract_crop(image: np.ndarray, crop: tuple[int, int, int]) -> np.ndarray:
    """The square crop, with the frame's border replicated where it runs off the edge."""
    cx, cy, side = crop
    h, w = image.shape[:2]
    x0, y0 = cx - side // 2, cy - side // 2
    x1, y1 = x0 + side, y0 + side
    top, left, bottom, right = max(0, -y0), max(0, -x0), max(0, y1 - h), max(0, x1 - w)
    if top or left or bottom or right:  # replicate the border of the window only, not of the frame
        inside = image[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
        return cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return image[y0:y1, x0:x1]


def extract_crops(image: np.ndarray, dets: list[Detection]) -> list[np.ndarray]:
    return [extract_crop(image, d.crop) for d in dets]


# ----------------------------------------------------------------------------- evaluation helpers


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def centre_in(box, point) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def nearest_to(dets: list[Detection], point) -> Detection | None:
    """The detection whose centre is nearest a point (the labelled central cell of a PBC field)."""
    if not dets:
        return None
    return min(dets, key=lambda d: (d.centre[0] - point[0]) ** 2 + (d.centre[1] - point[1]) ** 2)
