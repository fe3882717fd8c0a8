"""Frame -> cells -> one batch through the classifier, timed stage by stage, with the counting
rules of `edge.identify` applied to each cell.

The run loop that feeds frames from a source and records them is `edge/runloop.py`
(`run` is re-exported here for older callers).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from hemaedge.edge.domain import DomainMonitor
from hemaedge.edge.focus import blank_reason, grey_small
from hemaedge.edge.identify import (PLATELET_CONFIRM_ABOVE, PLATELET_KIND_ABOVE, REVIEW_BELOW, UNIDENTIFIED_BELOW,
                                    Decision, OodRule, decide, is_platelet_clump, not_classified,
                                    parse_review_classes)
from hemaedge.edge.preprocess import prepare_batch
from hemaedge.edge.ruler import Reading, Ruler
from hemaedge.edge.runloop import run  # noqa: F401 - the run loop's old home
from hemaedge.edge.tta import bundle_views, predict_views
from hemaedge.edge.segment import (DEFAULT_CELL_FRACTION, DEFAULT_RBC_FACTOR, Detection, SegmentParams,
                                   extract_crop, order_statistic, picture_box, segment, shift_detection,
                                   upper_quartile_cut, work_copy, work_image)

logger = logging.getLogger(__name__)


@dataclass
class FrameResult:
    detections: list[Detection]
    labels: list[str]  # what each detection is counted as (after the kind/class rules)
    confidences: np.ndarray
    probabilities: np.ndarray  # the classifier's raw output (N, classes)
    timings_ms: dict = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    status: str = ""  # "" = classified; else why the frame has no cells or was not classified
    ruler: Reading | None = None

    @classmethod
    def empty(cls, n_classes: int, status: str, timings_ms: dict | None = None, ruler=None) -> "FrameResult":
        return cls([], [], np.zeros(0, np.float32), np.zeros((0, n_classes), np.float32),
                   dict(timings_ms or {}), [], status, ruler)
    red: object = None  # rbc_morphology.RedCellResult when red cells are analysed
    # each cell's review flag as cells.csv records it (the run loop sets it after counting:
    # decision flags plus "cut by the frame edge"); empty = not known yet
    cell_flags: list = field(default_factory=list)


class CellClassifier:
    """Segment a frame, cut scale-normalised crops, classify them all in one batch, and apply
    the kind/class rules of `edge.identify` (a platelet candidate can only become a platelet; an
    unsure nucleated cell becomes "unidentified").

    Crop size (`crop_mode`):
      "rbc"   (default) side = `rbc_factor` x the red-cell diameter (`edge.ruler`: per field for
              independent stills, a running median for one slide): cells keep their relative
              sizes as in training; falls back to "cell" when red cells cannot be measured;
      "cell"  side = the cell's own box / `cell_fraction`;
      "fixed" side = `crop_side` pixels.
    A platelet candidate's crop is sized for a platelet (`SegmentParams.platelet_crop_scale` of
    that side: 1.5 red-cell diameters by default), and the nucleated cells in it are painted
    over with the background, so a speck next to a white cell is judged on its own and not by
    its neighbour. (Detections whose size leaves their kind open keep the nucleated crop.)
    The crops go through `prepare_batch` with the model's input contract: the very code that
    prepared the training images. `views` ("auto" = the bundle's `inference.views` for
    independent stills and one view when `same_slide` (tracked cells are averaged over their
    frames instead), else "off", "flips" or "dihedral"; `edge.tta`) averages each cell's
    probabilities over flipped/rotated views of its prepared crop.
    `classify_cut_cells=False` (what `edge run` does unless it counts edge cells) leaves the cells
    cut by the frame edge unclassified (`identify.not_classified`: probabilities NaN): they are
    not counted, so their model call is saved (on a live feed a track is decided from its
    classified views, `counting`).
    """

    def __init__(self, model, backend, params: SegmentParams | None = None,
                 cell_fraction: float = DEFAULT_CELL_FRACTION, crop_side: int | None = None,
                 crop_mode: str | None = None, rbc_factor: float = DEFAULT_RBC_FACTOR,
                 same_slide: bool = False, review_threshold: float = REVIEW_BELOW,
                 unidentified_below: float = UNIDENTIFIED_BELOW, mask_neighbours: bool = True, red_cells=None,
                 ood_threshold=None, views=None, review_level: float | None = None, review_classes=None,
                 platelet_confirm_above: float = PLATELET_CONFIRM_ABOVE, platelet_kind_above: float = PLATELET_KIND_ABOVE,
                 classify_cut_cells: bool = True):
        self.model = model
        self.backend = backend
        self.classes = list(model.classes)
        self.contract = model.contract
        self.params = params or SegmentParams()
        self.cell_fraction = cell_fraction
        self.crop_side = crop_side
        self.crop_mode = crop_mode or ("fixed" if crop_side else "rbc")
        if self.crop_mode == "fixed" and not crop_side:
            raise ValueError("crop mode 'fixed' needs a crop side in pixels")
        self.rbc_factor = rbc_factor
        # per-run domain check against the bundle's `domain` section (edge/domain.py)
        manifest = getattr(model, "manifest", None) or {}
        self.domain = DomainMonitor(manifest.get("domain") if isinstance(manifest, dict) else None)
        # the OOD part of the unidentified rule: the bundle's calibrated threshold unless
        # `ood_threshold` (a number, "off", or None/"auto") says otherwise
        # `review_level` (a top probability) moves the review level, `review_classes` sends every
        # call of those classes to review (both opt-in; `identify.OodRule`, `identify.decide`)
        self.ood_rule = OodRule.from_bundle(manifest if isinstance(manifest, dict) else None, ood_threshold,
                                            review_level=review_level, unidentified_below=unidentified_below)
        self.review_classes = parse_review_classes(review_classes, self.classes)
        # said once per run: an old bundle's rule is not the two-tier one users read about
        (logger.info if self.ood_rule.flag_threshold is not None or self.ood_rule.source == "off"
         else logger.warning)("unidentified rule: %s", self.ood_rule.note)
        # a tracked stream averages each cell over its frames: 'auto' views are for independent stills
        self.views_name, self.views = bundle_views(manifest if isinstance(manifest, dict) else None, views,
                                                   tracked=same_slide)
        self.review_threshold = review_threshold
        self.unidentified_below = unidentified_below
        # the platelet levels of `identify` (a platelet candidate counted, a size-ambiguous detection a clump)
        self.platelet_confirm_above = platelet_confirm_above
        self.platelet_kind_above = platelet_kind_above
        self.mask_neighbours = mask_neighbours
        self.classify_cut_cells = classify_cut_cells
        self.ruler = Ruler(same_slide)
        self.red_cells = red_cells  # rbc_morphology.RedCellClassifier: count/classify red cells too

    def crop_side_for(self, reading: Reading) -> int | None:
        """The crop side for this frame (None: each cell's own size decides)."""
        if self.crop_mode == "fixed":
            return self.crop_side
        if self.crop_mode == "rbc" and reading.diameter:
            return int(round(self.rbc_factor * reading.diameter))
        return None

    def classify_crops(self, crops: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
        t0 = time.perf_counter()
        batch = prepare_batch(crops, self.contract)
        t1 = time.perf_counter()
        probs = (predict_views(self.backend.predict, batch, self.views) if len(crops)
                 else np.zeros((0, len(self.classes)), np.float32))
        t2 = time.perf_counter()
        return probs, (t1 - t0) * 1e3, (t2 - t1) * 1e3

    def classified(self, det: Detection) -> bool:
        """Whether the classifier sees this detection (see `classify_cut_cells`)."""
        return self.classify_cut_cells or not det.at_edge

    def crops_for(self, image: np.ndarray, dets: list[Detection]) -> list[np.ndarray]:
        """One crop per detection; platelet crops with the nucleated cells painted over."""
        nucleated = [d.box for d in dets if d.kind == "wbc"]
        # a platelet's crop, and that of a detection whose kind its size leaves open, is judged
        # without its nucleated neighbours
        fill = None
        out = []
        for d in dets:
            crop = extract_crop(image, d.crop)
            if (d.kind == "platelet" or d.size_ambiguous) and nucleated and self.mask_neighbours:
                # never paint over the platelet itself (one lying on a white cell's box)
                others = [b for b in nucleated
                          if b != d.box and not (b[0] <= d.centre[0] <= b[2] and b[1] <= d.centre[1] <= b[3])]
                parts = _parts_in_crop(d.crop, others)
                if parts:  # the background colour only for a frame whose crops need it
                    if fill is None:
                        fill = background_colour(image)
                    crop = crop.copy()
                    for x0, y0, x1, y1 in parts:
                        crop[y0:y1, x0:x1] = fill
            out.append(crop)
        return out

    def decide(self, kind: str, prob_row, on_red_cell: bool = False) -> Decision:
        return decide(kind, prob_row, self.classes, self.unidentified_below, review_below=self.review_threshold,
                      ood_threshold=self.ood_rule.threshold, ood_flag_threshold=self.ood_rule.flag_threshold,
                      on_red_cell=on_red_cell, review_classes=self.review_classes,
                      platelet_confirm=self.platelet_confirm_above)

    def identify_rule(self) -> dict:
        """The unidentified/review rule this run applies (summary.json -> `identify`)."""
        return {"unidentified_below": self.unidentified_below, "review_below": self.review_threshold,
                "ood": self.ood_rule.to_dict(), "views": self.views_name,
                "review_classes": sorted(self.review_classes),
                "platelet_confirm_above": self.platelet_confirm_above, "platelet_kind_above": self.platelet_kind_above}

    def work_image(self, image: np.ndarray) -> np.ndarray:
        """The frame's small colour copy (`segment.work_image`): the segmenter's work copy, and the
        source of the grey copy that the blank check, the focus gate and the stage motion use."""
        return work_image(image, self.params)

    def find_cells(self, image: np.ndarray, grey: np.ndarray | None = None, small: np.ndarray | None = None):
        """The segmentation stage of `process` (its "segment" time): (why the frame shows no cells,
        or None; the ruler reading; the detections; their crops). `grey`, `small`: the frame's
        grey copy and `work_image` when the caller already made them. The crops are those of the
        detections the classifier sees (`classified`), in their order."""
        small = work_image(image, self.params) if small is None else small
        # grey from the small copy: a fifth of the cost of converting the whole frame
        blank = blank_reason(image, grey_small(small) if grey is None else grey)
        if blank:
            return f"no cells: {blank}", None, [], []
        work = work_copy(image, self.params, small)  # one small copy and stain mask for the ruler and the segmenter
        reading = self.ruler.read(image, self.params, work)
        dets = segment(image, self.params, self.cell_fraction, self.crop_side_for(reading),
                       rbc_diameter=reading.diameter, work=work)
        return None, reading, dets, self.crops_for(image, [d for d in dets if self.classified(d)])

    def process(self, image: np.ndarray, grey: np.ndarray | None = None, small: np.ndarray | None = None) -> FrameResult:
        """`grey`, `small`: the frame's grey copy (`focus.grey_small` of `small`) and `work_image`
        when the caller already made them. A frame with black bars (`segment.picture_box`) is
        processed as the picture inside them; its detections are given in frame pixels."""
        box = picture_box(image)
        if box is None:
            return self._process(image, grey, small)
        x0, y0, x1, y1 = box
        res = self._process(np.ascontiguousarray(image[y0:y1, x0:x1]), red_image=image)
        for d in res.detections:
            shift_detection(d, x0, y0)
        return res

    def _process(self, image: np.ndarray, grey: np.ndarray | None = None, small: np.ndarray | None = None,
                 red_image: np.ndarray | None = None) -> FrameResult:
        t0 = time.perf_counter()
        blank, reading, dets, crops = self.find_cells(image, grey, small)
        if blank:
            return FrameResult.empty(len(self.classes), blank, {"segment": (time.perf_counter() - t0) * 1e3})
        t1 = time.perf_counter()
        seen, pre_ms, inf_ms = self.classify_crops(crops)
        self.domain.add_frame(image)
        self.domain.add_cells(seen)
        classified = [self.classified(d) for d in dets]  # the detections `crops` holds, in order
        if all(classified):
            probs = seen
        else:  # the cells left unclassified (cut by the frame edge) get NaN rows
            probs = np.full((len(dets), len(self.classes)), np.nan, np.float32)
            probs[np.flatnonzero(classified)] = seen
        for i, d in enumerate(dets):  # a platelet clump or a small nucleus: the classifier says which
            side_rbc = d.size / reading.diameter if reading.diameter else None
            if d.size_ambiguous and is_platelet_clump(probs[i], self.classes, side_rbc, self.platelet_kind_above):
                d.kind = "platelet"
        decisions = [self.decide(d.kind, probs[i], d.kind == "platelet" and d.on_red_cell) if classified[i]
                     else not_classified() for i, d in enumerate(dets)]
        timings = {"segment": (t1 - t0) * 1e3, "preprocess": pre_ms, "inference": inf_ms}
        red = None
        if self.red_cells is not None:  # red cells measured with this field's ruler
            red = self.red_cells.process(image if red_image is None else red_image, reading.diameter)
            timings.update(red.timings_ms)
        return FrameResult(dets, [x.label for x in decisions], np.array([x.confidence for x in decisions], np.float32),
                           probs, timings, decisions, "" if dets else "no cells found", reading, red)


def background_colour(image: np.ndarray) -> np.ndarray:
    """The smear's background colour: per channel, the median of the brightest quarter of a
    1-in-16 subsample (pixels at or above the 75th percentile of R+G+B, numpy's linear rule).

    Computed from histograms (integer pixels: the order statistics are exact), so it equals
    `np.median(sub[brightness >= np.percentile(brightness, 75)], axis=0).astype(np.uint8)`
    at a third of its cost (tested against that formula).
    """
    sub = image[::4, ::4]
    brightness = sub[..., 0].astype(np.int16)
    brightness += sub[..., 1]
    brightness += sub[..., 2]
    threshold = upper_quartile_cut(brightness)
    bright = sub[brightness >= threshold]
    m = len(bright)
    out = np.empty(3, np.uint8)
    for c in range(3):  # median = mean of the two middle values, truncated as astype(uint8) does
        cum = np.bincount(bright[:, c], minlength=256).cumsum()
        out[c] = (order_statistic(cum, (m - 1) // 2) + order_statistic(cum, m // 2)) // 2
    return out


def _parts_in_crop(square: tuple[int, int, int], boxes) -> list[tuple[int, int, int, int]]:
    """The parts of the boxes (frame coordinates) that lie in the crop cut around `square`, in
    crop coordinates (x0, y0, x1, y1); boxes outside it are left out."""
    cx, cy, side = square
    x0, y0 = cx - side // 2, cy - side // 2
    out = []
    for bx0, by0, bx1, by1 in boxes:
        a, b = max(0, bx0 - x0), max(0, by0 - y0)
        c, d = min(side, bx1 - x0), min(side, by1 - y0)
        if c > a and d > b:
            out.append((a, b, c, d))
    return out


def model_info(model, backend) -> dict:
    return {"name": getattr(model, "manifest", {}).get("name") if hasattr(model, "manifest") else getattr(model, "name", None),
            "path": str(getattr(model, "root", "")), "backend": model.backend,
            "runtime": getattr(backend, "runtime", backend.name),
            "size_bytes": int(model.size_bytes), "size_mb": round(model.size_bytes / 1e6, 3),
            "classes": list(model.classes),
            "input": model.contract.to_dict()}
