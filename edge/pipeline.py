"""Frame -> cells -> one batch through the classifier, timed stage by stage; and the run loop
that feeds frames from a source, records every frame, and always ends with a summary
(end of source, camera gone, or Ctrl-C).
"""
from __future__ import annotations

import datetime
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from hemaedge.edge.domain import DomainMonitor
from hemaedge.edge.metrics_runtime import MemoryMeter, machine_info, seconds_since_process_start
from hemaedge.edge.preprocess import prepare_batch
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


def run(source, classifier: CellClassifier, recorder, *, annotator=None, preview=None, on_frame=None,
        frames_iter=None, model_info: dict | None = None, load_s: float | None = None) -> dict:
    """Process every frame of `source` (or of `frames_iter`, e.g. a limited view of it).

    Returns the summary, which is also written by `recorder.finish`; Ctrl-C ends the run the
    same way as the end of the source does (the summary says it was interrupted).
    """
    memory = MemoryMeter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    first_result_s = None
    end_reason = None
    t_start = time.perf_counter()
    frames = frames_iter if frames_iter is not None else iter(source)
    try:
        while True:
            t_cap = time.perf_counter()
            try:
                frame = next(frames)
            except StopIteration:
                break
            capture_ms = (time.perf_counter() - t_cap) * 1e3
            res = classifier.process(frame.image)
            res.timings_ms["capture"] = capture_ms
            res.timings_ms["total"] = (time.perf_counter() - t_cap) * 1e3
            row = recorder.record(frame, res.detections, res.labels, res.confidences, res.timings_ms,
                                  memory.current_mb())
            if first_result_s is None:
                first_result_s = seconds_since_process_start()
            if annotator is not None:
                annotator.add(frame, res)
            if preview is not None and not preview.show(frame, res):
                end_reason = "preview window closed"
                break
            if on_frame is not None:
                on_frame(row)
    except KeyboardInterrupt:
        end_reason = "interrupted (Ctrl-C)"
    finally:
        wall = time.perf_counter() - t_start
        if hasattr(frames, "close"):
            frames.close()  # ends the source's generator: releases cameras and files
        if annotator is not None:
            annotator.close()
        if preview is not None:
            preview.close()
    summary = recorder.summary(
        frames_skipped=getattr(source, "skipped", 0),
        skip_reasons=getattr(source, "skip_reasons", [])[:20],
        end_reason=end_reason or getattr(source, "end_reason", "end of source"),
        source=source.describe() if hasattr(source, "describe") else str(source),
        wall_s=round(wall, 3),
        fps=round(recorder.frames / wall, 3) if wall > 0 and recorder.frames else 0.0,
        time_to_first_result_s=round(first_result_s, 3) if first_result_s is not None else None,
        model_load_s=round(load_s, 3) if load_s is not None else None,
        model=model_info or {},
        memory_mb={"peak": round(memory.peak_mb(), 1), "current": round(memory.current_mb(), 1)},
        segmentation={"crop_mode": classifier.crop_mode, "cell_fraction": classifier.cell_fraction,
                      "crop_side": classifier.crop_side, "rbc_factor": classifier.rbc_factor,
                      "red_cell_diameter_px": classifier.magnification.diameter, **classifier.params.to_dict()},
        domain=classifier.domain.report(),
        pid=os.getpid(),
        started_utc=started,
        command=" ".join(["hemaedge", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("hemaedge") else " ".join(sys.argv),
        machine=machine_info(),
    )
    recorder.finish(summary)
    return summary


def model_info(model, backend) -> dict:
    return {"name": getattr(model, "manifest", {}).get("name") if hasattr(model, "manifest") else getattr(model, "name", None),
            "path": str(getattr(model, "root", "")), "backend": model.backend,
            "runtime": getattr(backend, "runtime", backend.name),
            "size_bytes": int(model.size_bytes), "size_mb": round(model.size_bytes / 1e6, 3),
            "classes": list(model.classes),
            "input": model.contract.to_dict()}
