"""Counting each physical cell once, over a whole run.

Two ways, chosen from the source:

* **independent fields** (an image folder or file, default): every detection of every field is
  one cell;
* **one slide** (a video, a camera, or stills taken with `--same-slide`): the stage motion is
  measured between frames (`tracking.StageMotion`), detections are placed in slide coordinates
  and tracked (`tracking.Tracker`); each track is one cell, its class decided once from the
  mean probability of all its views (`identify.decide`). Frames too blurred to classify (out of
  focus, motion blur: `focus.FocusGate`) are not classified and are counted with the reason.

In both, a cell cut by the frame edge in every view is not counted (only part of it was seen:
a lab counts only whole cells), unless `count_edge_cells`; `edge run` then does not classify
such views either (`pipeline.CellClassifier.classify_cut_cells`). The result is a
`differential.Differential`.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from hemaedge.edge.atomic import atomic_write_text
from hemaedge.edge.differential import Differential
from hemaedge.edge.focus import FocusGate, grey_small
from hemaedge.edge.input_checks import InputChecks
from hemaedge.edge.identify import ERYTHROBLAST, PLATELET, not_classified
from hemaedge.edge.tracking import StageMotion, Tracker

log = logging.getLogger(__name__)

TRACK_FIELDS = ["track_id", "kind", "class", "confidence", "views", "whole_views", "first_frame", "last_frame",
                "slide_x", "slide_y", "counted", "flag"]


class CountingSession:
    def __init__(self, classifier, *, one_slide: bool, target_wbc: int | None = None,
                 count_edge_cells: bool = False, focus_gate: bool = True):
        self.classifier = classifier
        self.classes = classifier.classes
        self.one_slide = one_slide
        self.target_wbc = target_wbc
        if count_edge_cells and not getattr(classifier, "classify_cut_cells", True):
            raise ValueError("counting cells cut by the frame edge needs a classifier that classifies them "
                             "(CellClassifier(classify_cut_cells=True))")
        self.count_edge_cells = count_edge_cells
        self.fields = Differential(self.classes, target_wbc)  # fields, and the cells of independent fields
        self.motion = StageMotion() if one_slide else None
        self.gate = FocusGate() if (one_slide and focus_gate) else None
        self.tracker = Tracker() if one_slide else None
        self._next_cell = 0
        self._stage_started = False
        self.input = InputChecks()  # what the frames say about the camera or the files

    # -------------------------------------------------------------- per frame

    def process(self, frame):
        """Classify one frame (or decide it cannot be classified); returns (FrameResult, cell rows
        extras: one dict per detection with cell_id, track_id, counted, flag)."""
        from hemaedge.edge.pipeline import FrameResult

        image = frame.image
        self.input.add_frame(image, frame.name)  # grayscale, red/blue swapped (checks only: edge/input_checks.py)
        grey = small = None
        if self.one_slide:
            # once, for motion, focus and the blank check; from the segmenter's small colour copy
            # when the classifier makes one (a classifier of a test or a plug-in may not)
            if hasattr(self.classifier, "work_image"):
                small = self.classifier.work_image(image)
            grey = grey_small(image if small is None else small)
            registered = self.motion.update(image, grey)
            if not registered and self._stage_started:
                self.tracker.close_all()  # the new frame's place on the slide is unknown
            self._stage_started = True
            if self.gate is not None:
                _, reason = self.gate.check(image, self.motion.last_move, grey)
                if reason:
                    self.fields.add_field(reason)
                    return FrameResult.empty(len(self.classes), f"not classified: {reason}"), []
        # the copies only when made (a classifier of a test or a plug-in may not take them)
        if grey is None:
            res = self.classifier.process(image)
        elif small is None:
            res = self.classifier.process(image, grey=grey)
        else:
            res = self.classifier.process(image, grey=grey, small=small)
        if res.status.startswith("no cells:"):
            self.fields.add_field(res.status.split(" (")[0])
            return res, []
        self.fields.add_field()
        extras = []
        if self.one_slide:
            slide = [self.motion.to_slide(d.centre) for d in res.detections]
            track_ids = self.tracker.update(frame.index, res.detections, slide, res.probabilities)
        else:
            track_ids = [""] * len(res.detections)
        for det, dec, tid in zip(res.detections, res.decisions, track_ids):
            whole = self.count_edge_cells or not det.at_edge
            # a cell cut by the frame edge is not counted (cells.csv: counted 0, at_edge 1): nothing to review
            flag = dec.flag if whole else ""
            if not self.one_slide:
                if whole:
                    self.fields.add(dec.label, counted=dec.counted, flagged=bool(dec.flag), reason=dec.reason)
                else:
                    self.fields.add_cut(det.kind)
            extras.append({"cell_id": self._next_cell, "track_id": tid, "flag": flag,
                           "counted": int(whole and dec.counted) if not self.one_slide else "",
                           "at_edge": int(det.at_edge)})
            self._next_cell += 1
        return res, extras

    # -------------------------------------------------------------- the count

    def _track_kind(self, t) -> str:
        """A nucleated-cell track is a platelet clump only when every one of its classified views
        was called one (`identify.is_platelet_clump`, view by view; a view cut by the frame edge
        may be left unclassified): one view that was not keeps it a white cell (unidentified if
        its mean class is platelet), as losing a white cell from the count silently is worse than
        flagging a clump for review."""
        clump = t.kind == "wbc" and t.classified_views and t.clump_views == t.classified_views
        return PLATELET if clump else t.kind

    def _track_decision(self, t):
        if t.prob_sum is None:  # no view classified: cut by the frame edge in every one
            return not_classified()
        kind = self._track_kind(t)
        # a platelet track lies on a red cell when most of its views do
        on_red_cell = kind == PLATELET and 2 * t.on_red_cell_views > t.views
        return self.classifier.decide(kind, t.mean_prob, on_red_cell)

    def _countable(self, t) -> bool:
        return self.count_edge_cells or t.full_views > 0

    def white_cells(self) -> int:
        """Distinct white cells counted so far (classified or unidentified; not nRBC)."""
        if not self.one_slide:
            return self.fields.white_cells_counted
        n = 0
        for t in self.tracker.tracks + self.tracker.closed:
            if self._track_kind(t) == "wbc" and self._countable(t) and self._track_decision(t).label != ERYTHROBLAST:
                n += 1
        return n

    @property
    def target_reached(self) -> bool:
        return self.target_wbc is not None and self.white_cells() >= self.target_wbc

    def differential(self) -> Differential:
        if not self.one_slide:
            return self.fields
        diff = Differential(self.classes, self.target_wbc)
        diff.fields, diff.fields_not_classified = self.fields.fields, dict(self.fields.fields_not_classified)
        for t in self.tracker.all_tracks():
            if not self._countable(t):
                diff.add_cut(self._track_kind(t))
                continue
            dec = self._track_decision(t)
            diff.add(dec.label, counted=dec.counted, flagged=bool(dec.flag), reason=dec.reason)
        return diff

    def summary(self) -> dict:
        d = self.differential()
        out = d.summary()
        out["grayscale_frames"] = self.input.grayscale_frames
        out["counting"] = ("one slide: stage motion + tracking, one count per track" if self.one_slide
                           else "independent fields: one count per detection")
        if self.one_slide:
            tracks = self.tracker.all_tracks()
            out["tracks"] = len(tracks)
            out["views_per_track_median"] = float(np.median([t.views for t in tracks])) if tracks else None
            out["stage_registration_lost_frames"] = self.motion.lost
        return out

    def frame_columns(self, res) -> dict:
        """The counting columns of frames.csv: why a frame has no cells or was not classified,
        and the red-cell diameter used for it."""
        d = res.ruler.diameter if res.ruler else None
        return {"status": res.status, "rbc_px": round(d, 1) if d else ""}

    def summary_part(self) -> dict:
        """summary.json's `differential` and the rows of counts.csv (`differential_count`)."""
        return {"differential": self.summary(), "differential_count": self.differential().rows()}

    def write_tracks(self, out_dir: Path) -> None:
        """tracks.csv: one row per physical cell of a one-slide run, its class from all views."""
        if not self.one_slide:
            return
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, TRACK_FIELDS)
        w.writeheader()
        for t in self.tracker.all_tracks():
            dec = self._track_decision(t)
            countable = self._countable(t)
            w.writerow({"track_id": t.id, "kind": self._track_kind(t), "class": dec.label,
                        "confidence": "" if np.isnan(dec.confidence) else round(dec.confidence, 4),
                        "views": t.views, "whole_views": t.full_views, "first_frame": t.first_frame,
                        "last_frame": t.last_frame, "slide_x": round(float(t.slide_xy[0]), 1),
                        "slide_y": round(float(t.slide_xy[1]), 1), "counted": int(countable and dec.counted),
                        "flag": dec.flag if countable else "cut by the frame edge in every view: not counted"})
        atomic_write_text(Path(out_dir) / "tracks.csv", buf.getvalue(), newline="")

