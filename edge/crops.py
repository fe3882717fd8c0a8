"""Each cell's crop saved next to cells.csv, so a reviewer can check it and a lab can retrain on it.

    RUN_DIR/crops/<frame>_<cell>.png     the pixels the model saw: the crop cut from the frame and
                                         resized to the model's input side, BEFORE the contract's
                                         preprocessing (CLAHE etc.), which training applies again
    RUN_DIR/context/<frame>_<cell>.png   a wider view (CONTEXT_FACTOR x the crop side) with the
                                         crop square drawn, for judging the cell among its neighbours

Names come from `crop_name(frame, cell)`, the one place the review page, the report and
`train adapt` also use. Every file is written atomically (edge/atomic.py): a crash or kill
leaves whole files only. A crop that cannot be written is counted and logged, never the end
of a run. Standard library, numpy and OpenCV only (runs on a device).
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from hemaedge.edge.atomic import atomic_write_bytes
from hemaedge.edge.errors import UsageError
from hemaedge.edge.preprocess import resize
from hemaedge.edge.runloop import FrameObserver
from hemaedge.edge.segment import extract_crop

log = logging.getLogger(__name__)

SAVE_MODES = ("all", "flagged")
CROPS_DIR = "crops"
CONTEXT_DIR = "context"
# The context view spans this many crop sides around the cell and is at most this many pixels.
CONTEXT_FACTOR = 3.0
CONTEXT_SIDE = 256


def crop_name(frame: int, cell: int) -> str:
    """File name of one cell's crop and context view: frame index and cell (or track) id."""
    return f"f{int(frame):06d}_c{int(cell):04d}.png"


def encode_png(image_rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV could not encode the crop as PNG")
    return buf.tobytes()


def context_view(image: np.ndarray, crop: tuple[int, int, int], factor: float = CONTEXT_FACTOR,
                 side: int = CONTEXT_SIDE) -> np.ndarray:
    """A wider square around the cell with its crop square drawn in (RGB uint8)."""
    cx, cy, s = crop
    wide = max(int(round(s * factor)), s + 2)
    view = extract_crop(image, (cx, cy, wide)).copy()
    off = (wide - s) // 2
    thick = max(1, wide // 120)
    cv2.rectangle(view, (off, off), (off + s - 1, off + s - 1), (255, 210, 0), thick)
    return resize(view, min(side, wide))


class CropSaver(FrameObserver):
    """Writes crops (and context views) of the cells of each frame: all of them, or the flagged ones.

    `size` is the model's input side (the crop as the model saw it); a cell is flagged exactly as
    cells.csv marks it: its review flag (unidentified, low confidence, out of distribution, cut by
    the frame edge, ...) when the run gives one, else a confidence below the run's `review_threshold`. As a run-loop observer it
    adds a "crops" part to summary.json. An existing file is never replaced (it is counted).
    """

    name = "crops"

    def __init__(self, out_dir, size: int, mode: str = "all", review_threshold: float = 0.6,
                 context: bool = True, fsync: bool = False, crops_for=None):
        if mode not in SAVE_MODES:
            raise UsageError(f"crop saving mode {mode!r}: expected one of {', '.join(SAVE_MODES)}")
        self.out = Path(out_dir)
        self.size = int(size)
        self.mode = mode
        self.review_threshold = float(review_threshold)
        self.context = context
        self.fsync = fsync
        # The classifier's own crop maker (CellClassifier.crops_for: e.g. a platelet's crop has its
        # nucleated neighbours painted over), so the saved pixels are the ones it classified.
        self.crops_for = crops_for
        self.saved = 0
        self.failed = 0
        self.errors: list[str] = []
        (self.out / CROPS_DIR).mkdir(parents=True, exist_ok=True)
        if context:
            (self.out / CONTEXT_DIR).mkdir(parents=True, exist_ok=True)

    def wanted(self, confidence: float, flag: str | None = None) -> bool:
        if self.mode == "all":
            return True
        return bool(flag) if flag is not None else float(confidence) < self.review_threshold

    def save(self, frame, detections, confidences, cell_ids=None, flags=None) -> int:
        """Save the crops of one frame's cells; returns how many were written.

        `cell_ids` (default: the cell's index within the frame) name the files, as cells.csv does;
        `flags` (one per cell, "" = not flagged) decide which are flagged, else the confidence does.
        """
        ids = list(cell_ids) if cell_ids is not None else list(range(len(detections)))
        flags = list(flags) if flags is not None and len(flags) == len(detections) else [None] * len(detections)
        written = 0
        cut = self.crops_for(frame.image, detections) if self.crops_for is not None and len(detections) \
            else [extract_crop(frame.image, d.crop) for d in detections]
        for cid, det, conf, raw, flag in zip(ids, detections, confidences, cut, flags):
            if not self.wanted(conf, flag):
                continue
            name = crop_name(frame.index, cid)
            if (self.out / CROPS_DIR / name).exists():
                self._failed(name, "exists already (not replaced)")
                continue
            try:
                crop = resize(raw, self.size)
                atomic_write_bytes(self.out / CROPS_DIR / name, encode_png(crop), fsync=self.fsync)
                if self.context:
                    atomic_write_bytes(self.out / CONTEXT_DIR / name,
                                       encode_png(context_view(frame.image, det.crop)), fsync=self.fsync)
            except (OSError, ValueError, cv2.error) as exc:
                self._failed(name, exc)
                continue
            written += 1
        self.saved += written
        return written

    def _failed(self, name: str, why) -> None:
        self.failed += 1
        if len(self.errors) < 20:
            self.errors.append(f"{name}: {why}")
        log.warning("crop %s not saved: %s", name, why)

    # run-loop observer
    def on_frame(self, frame, result, row):
        self.save(frame, result.detections, result.confidences, flags=getattr(result, "cell_flags", None) or None)

    def summary_part(self) -> dict:
        return {"crops": self.summary()}

    def summary(self) -> dict:
        return {"mode": self.mode, "saved": self.saved, "failed": self.failed, "folder": CROPS_DIR,
                "context_folder": CONTEXT_DIR if self.context else None, "size": self.size,
                "errors": self.errors}
