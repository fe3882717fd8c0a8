"""One count per physical cell on a live feed: stage motion, slide coordinates, tracks.

* `StageMotion`: the stage's move between consecutive frames by phase correlation
  (`cv2.phaseCorrelate` on a 160-px-wide grey copy, Hanning-windowed: the move is a pure
  translation, so a small copy measures it to about half a pixel of the frame on a slow pan
  and costs a fraction of a larger one); the running sum places every
  frame on the slide, so a detection's slide position is its frame position minus the
  accumulated move.
* `Tracker`: associates detections to tracks by slide position (greedy, nearest first, within
  half a cell of the track, a whole cell for a track not seen for a while: the summed stage
  moves drift; same kind as the segmenter found it), keeps each track's summed class
  probabilities and number of views, and reopens a track when the stage comes back to a cell
  it has seen. A track is one physical cell: its class is decided once from the mean
  probability of all its classified views (`counting`; a view cut by the frame edge may be left
  unclassified, `pipeline.CellClassifier.classify_cut_cells`); a detection whose size leaves its kind open is
  tracked as a nucleated cell in every view and the track is a platelet clump only when every
  one of its classified views was called one.

Small and dependency-free on purpose: a smear moves rigidly (the cells do not move on the
slide), so the motion model is the stage's translation, not per-object dynamics as in general
multi-object trackers (norfair, ByteTrack).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from hemaedge.edge.focus import grey_small

# Phase correlation on a copy this wide: half of `focus.grey_small`'s (an exact 2:1 area
# reduction, OpenCV's fast path). On generated BCCD pans (benchmarks/tools/live_feed.py) the
# per-frame move error is 0.5 px median / 1.0 px 95th percentile on slow pans (0.4 / 0.9 at
# 256 px from the full frame) and lower than at 256 px on blurred fast moves.
WORK_WIDTH = 160


class StageMotion:
    """Accumulated stage translation of a stream, in full-resolution pixels."""

    def __init__(self, min_response: float = 0.03):
        self.min_response = min_response
        self.offset = np.zeros(2, np.float64)  # content shift of the current frame vs the first
        self._prev = None
        self._window = None
        self._scale = 1.0
        self.last_move = 0.0
        self.lost = 0  # frames where the move could not be measured (registration restarted)

    def _small(self, image: np.ndarray, grey: np.ndarray | None = None) -> np.ndarray:
        grey = grey_small(image) if grey is None else grey
        gh, gw = grey.shape[:2]
        if gw > WORK_WIDTH:
            grey = cv2.resize(grey, (WORK_WIDTH, max(1, round(gh * WORK_WIDTH / gw))), interpolation=cv2.INTER_AREA)
        self._scale = grey.shape[1] / image.shape[1]  # copy / full frame
        return grey.astype(np.float32)

    def update(self, image: np.ndarray, grey: np.ndarray | None = None) -> bool:
        """Feed the next frame; False when its move could not be measured (a new field starts).
        `grey`: the frame's `focus.grey_small` copy when the caller has it (made once per frame)."""
        cur = self._small(image, grey)
        if self._prev is None or self._prev.shape != cur.shape:
            first = self._prev is None
            self._prev = cur
            self._window = cv2.createHanningWindow(cur.shape[::-1], cv2.CV_32F)
            self.last_move = 0.0
            return first  # a new frame size is a new field
        (dx, dy), response = cv2.phaseCorrelate(self._prev, cur, self._window)
        self._prev = cur
        if response < self.min_response:
            self.lost += 1
            self.last_move = 0.0
            return False
        move = np.array([dx, dy]) / self._scale
        self.offset += move
        self.last_move = float(np.hypot(*move))
        return True

    def to_slide(self, xy) -> tuple[float, float]:
        return float(xy[0] - self.offset[0]), float(xy[1] - self.offset[1])


@dataclass
class Track:
    id: int
    kind: str
    slide_xy: np.ndarray
    size: float
    first_frame: int
    last_frame: int
    prob_sum: np.ndarray | None = None
    views: int = 0
    classified_views: int = 0  # views the classifier saw (a view cut by the frame edge may not be)
    full_views: int = 0  # views in which the cell is not cut by the frame edge
    ambiguous_views: int = 0  # views whose size left the kind open (nucleated cell or platelet clump)
    clump_views: int = 0  # ... and that the view's classifier called a platelet clump
    on_red_cell_views: int = 0  # platelet views lying on a red cell (`segment.Detection.on_red_cell`)
    frames: list = field(default_factory=list)

    @property
    def mean_prob(self) -> np.ndarray | None:
        return None if self.prob_sum is None else self.prob_sum / self.classified_views


def segment_kind(det) -> str:
    """The kind the segmenter found: a size-ambiguous detection is a nucleated-cell candidate
    in every view, whatever one view's classifier made of it (the track decides)."""
    return "wbc" if getattr(det, "size_ambiguous", False) else det.kind


class Tracker:
    """Tracks in slide coordinates; `gate` is the largest distance (as a fraction of the cell's
    size) at which a detection is the same cell, `reacquire_gate` that for a track last seen
    more than `recent_frames` frames ago (the slide position comes from summed frame-to-frame
    moves, whose error grows with every frame, most through blurred ones); tracks not seen for
    `keep_frames` frames are closed (no longer matched) but stay counted."""

    def __init__(self, gate: float = 0.5, keep_frames: int = 300, min_gate_px: float = 6.0,
                 reacquire_gate: float = 1.0, recent_frames: int = 10):
        self.gate, self.keep_frames, self.min_gate_px = gate, keep_frames, min_gate_px
        self.reacquire_gate, self.recent_frames = reacquire_gate, recent_frames
        self.tracks: list[Track] = []
        self.closed: list[Track] = []
        self._next_id = 1

    def update(self, frame_index: int, detections, slide_xy: list, probs: np.ndarray | None) -> list[int]:
        """Associate this frame's detections (with their slide positions); returns a track id
        per detection (new tracks for unmatched ones)."""
        self._close_old(frame_index)
        pairs = []
        if self.tracks and len(detections):
            # every open track at once (a live feed keeps hundreds open): the distances and gates
            # of the one-track-at-a-time loop, element by element the same float64 operations
            tracks = self.tracks
            where = np.array([t.slide_xy for t in tracks], np.float64)
            kinds = np.array([t.kind for t in tracks])
            last = np.array([t.last_frame for t in tracks])
            size = np.array([t.size for t in tracks], np.float64)
            gate = np.where(frame_index - last <= self.recent_frames, self.gate, self.reacquire_gate)
            open_now = last != frame_index
            for i, (det, xy) in enumerate(zip(detections, slide_xy)):
                d = np.asarray(xy) - where
                dist = np.hypot(d[:, 0], d[:, 1])
                near = dist <= np.maximum(self.min_gate_px, gate * np.maximum(det.size, size))
                for j in np.flatnonzero(near & open_now & (kinds == segment_kind(det))).tolist():
                    pairs.append((float(dist[j]), i, j))
        pairs.sort()
        owner: dict[int, int] = {}
        used = set()
        for _, i, j in pairs:
            if i not in owner and j not in used:
                owner[i] = j
                used.add(j)
        ids = []
        for i, (det, xy) in enumerate(zip(detections, slide_xy)):
            if i in owner:
                t = self.tracks[owner[i]]
                # follow the cell: slide position as a running mean of its views
                t.slide_xy = (t.slide_xy * t.views + np.asarray(xy)) / (t.views + 1)
                t.size = max(t.size, det.size)
            else:
                t = Track(self._next_id, segment_kind(det), np.asarray(xy, np.float64), float(det.size), frame_index,
                          frame_index)
                self._next_id += 1
                self.tracks.append(t)
            t.last_frame = frame_index
            t.views += 1
            t.full_views += not det.at_edge
            ambiguous = bool(getattr(det, "size_ambiguous", False))
            t.ambiguous_views += ambiguous
            t.clump_views += ambiguous and det.kind == "platelet"
            t.on_red_cell_views += bool(getattr(det, "on_red_cell", False))
            if probs is not None and len(probs) and not np.isnan(probs[i, 0]):  # NaN: a view not classified
                t.prob_sum = probs[i].astype(np.float64) if t.prob_sum is None else t.prob_sum + probs[i]
                t.classified_views += 1
            ids.append(t.id)
        return ids

    def _close_old(self, frame_index: int) -> None:
        keep = []
        for t in self.tracks:
            (keep if frame_index - t.last_frame <= self.keep_frames else self.closed).append(t)
        self.tracks = keep

    def close_all(self) -> None:
        """Registration lost (a new field with no known relation to the last): stop matching."""
        self.closed.extend(self.tracks)
        self.tracks = []

    def all_tracks(self) -> list[Track]:
        return sorted(self.closed + self.tracks, key=lambda t: t.id)
