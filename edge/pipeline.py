"""Frame -> cells -> one batch through the classifier, timed stage by stage.

The run loop that feeds frames from a source and records them is `edge/runloop.py`
(`run` is re-exported here for older callers).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hemaedge.edge.domain import DomainMonitor
from hemaedge.edge.preprocess import prepare_batch
from hemaedge.edge.runloop import run  # noqa: F401 - the run loop's old home
from hemaedge.edge.segment import (DEFAULT_CELL_FRACTION, DEFAULT_RBC_FACTOR, Detection, MagnificationTracker,
                                   SegmentParams, extract_crops, segment)


@dataclass
class FrameResult:
    detections: list[Detection]
    labels: list[str]
    confidences: np.ndarray
    probabilities: np.ndarray
    timings_ms: dict = field(default_factory=dict)


class CellClassifier:
    """Segment a frame, cut scale-normalised crops, classify them all in one batch.

    Crop size (`crop_mode`):
      "rbc"   (default) side = `rbc_factor` x the red-cell diameter (running median over the
              run): the magnification is read off the smear itself, and cells keep their
              relative sizes as in training (a lymphocyte stays smaller than a monocyte);
              falls back to "cell" until red cells have been measured;
      "cell"  side = the cell's own box / `cell_fraction`;
      "fixed" side = `crop_side` pixels.
    The crops go through `prepare_batch` with the model's input contract: the very code that
    prepared the training images.
    """

    def __init__(self, model, backend, params: SegmentParams | None = None,
                 cell_fraction: float = DEFAULT_CELL_FRACTION, crop_side: int | None = None,
                 crop_mode: str | None = None, rbc_factor: float = DEFAULT_RBC_FACTOR):
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
        self.magnification = MagnificationTracker()
        # per-run domain check against the bundle's `domain` section (edge/domain.py)
        manifest = getattr(model, "manifest", None) or {}
        self.domain = DomainMonitor(manifest.get("domain") if isinstance(manifest, dict) else None)

    def crop_side_for(self, image: np.ndarray) -> int | None:
        """The crop side for this frame (None: each cell's own size decides)."""
        if self.crop_mode == "fixed":
            return self.crop_side
        if self.crop_mode == "rbc":
            d = self.magnification.update(image, self.params)
            return int(round(self.rbc_factor * d)) if d else None
        return None

    def classify_crops(self, crops: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
        t0 = time.perf_counter()
        batch = prepare_batch(crops, self.contract)
        t1 = time.perf_counter()
        probs = self.backend.predict(batch) if len(crops) else np.zeros((0, len(self.classes)), np.float32)
        t2 = time.perf_counter()
        return probs, (t1 - t0) * 1e3, (t2 - t1) * 1e3

    def process(self, image: np.ndarray) -> FrameResult:
        t0 = time.perf_counter()
        dets = segment(image, self.params, self.cell_fraction, self.crop_side_for(image))
        crops = extract_crops(image, dets)
        t1 = time.perf_counter()
        probs, pre_ms, inf_ms = self.classify_crops(crops)
        self.domain.add_frame(image)
        self.domain.add_cells(probs)
        idx = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
        conf = probs[np.arange(len(idx)), idx] if len(idx) else np.zeros(0, np.float32)
        return FrameResult(dets, [self.classes[i] for i in idx], conf, probs,
                           {"segment": (t1 - t0) * 1e3, "preprocess": pre_ms, "inference": inf_ms})


def model_info(model, backend) -> dict:
    return {"name": getattr(model, "manifest", {}).get("name") if hasattr(model, "manifest") else getattr(model, "name", None),
            "path": str(getattr(model, "root", "")), "backend": model.backend,
            "runtime": getattr(backend, "runtime", backend.name),
            "size_bytes": int(model.size_bytes), "size_mb": round(model.size_bytes / 1e6, 3),
            "classes": list(model.classes),
            "input": model.contract.to_dict()}
