"""Red-cell morphology on the device: classify every detected red cell in one batch, and tally
the run as labs report it (red cells per field, % of each morphology with a 95% interval, flags).

The morphology model is an ordinary verified bundle (`hemaedge edge run --rbc BUNDLE`), run by the
same back ends and `prepare_batch` as the white-cell model. Its crops are cut like the training
crops of `hemaedge data rbc-crops`: centred on the cell, `side_factor` red-cell diameters of the
ruler wide, from one resized copy of the frame (edge/rbc.py `rbc_crops`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemaedge.edge.differential import clopper_pearson
from hemaedge.edge.preprocess import normalize_colour, prepare_batch
from hemaedge.edge.rbc import DEFAULT_SIDE_FACTOR, RbcParams, RedCell, crop_side, detect_red_cells, rbc_crops
from hemaedge.edge.ruler import red_cell_diameter

# Flags a lab raises on a smear review, as % of red cells above which the finding is reported.
# Schistocytes: ICSH 2012 recommendation (Zini et al., Int J Lab Hematol 34:107-116, 2012):
# a schistocyte count above 1% of red cells is reported as clinically meaningful (suggests a
# thrombotic microangiopathy in the right clinical setting). Other morphologies have no
# comparably agreed cut-off, so none is flagged here.
FLAG_THRESHOLDS = {"schistocyte": (1.0, "ICSH 2012 schistocyte recommendation (Zini et al. 2012): > 1% of red cells")}

# Which red-cell diameter sets the crops (and so the size a cell has in its crop):
#   "field"  the field's own ruler: sizes relative to the field's red cells, any magnification;
#   "bundle" the training frames' red-cell diameter (manifest `red_cells.ruler_diameter_px`): the
#            absolute size the model was trained on, right only at the training magnification;
#   "auto"   "bundle" for a field whose ruler reads within SAME_MAGNIFICATION of it, else "field".
# Why: micro- and macrocytes are absolute sizes (a macrocytic slide's cells are large together),
# and the training crops all had one side in pixels; a crop that follows each field's ruler
# shrinks a field of macrocytes to normal size (Chula val end to end: docs/redcells.md).
RBC_SCALES = ("auto", "field", "bundle")
# Chula's per-field ruler reads 0.79-1.16x its median (5-95% of fields); BCCD (~2.8x) and PBC
# (~1.5x) are other magnifications and keep the field's ruler.
SAME_MAGNIFICATION = 1.3


def rbc_bundle_path(value) -> Path:
    """`--rbc` value -> bundle folder: 'packaged' is the red-cell bundle shipped with hemaedge."""
    if str(value) == "packaged":
        import hemaedge

        return Path(hemaedge.__file__).parent / "models" / "rbc"
    return Path(value)


def percent_interval(count: int, total: int) -> tuple[float, float]:
    """95% exact binomial (Clopper-Pearson) interval in percent: the same interval as the white-cell
    differential (edge/differential.py), so every percentage of a report is read the same way."""
    if total <= 0:
        return 0.0, 0.0
    lo, hi = clopper_pearson(count, total)
    return round(100 * lo, 2), round(100 * hi, 2)


@dataclass
class RedCellResult:
    cells: list[RedCell]
    labels: list[str]
    confidences: np.ndarray
    diameter: float | None
    timings_ms: dict = field(default_factory=dict)
    probabilities: np.ndarray | None = None  # (cells, classes) when a model classified them
    crop_side: int | None = None  # frame pixels of each red cell's classifier crop (None: not measured)
    scale: str | None = None  # "bundle" or "field": which diameter set the crops (RBC_SCALES)


def frame_reference(model) -> dict | None:
    """The training slides' background and red-cell colour (the bundle's `domain.colour`) as a
    `normalize_colour` spec, or None when the bundle has no domain section."""
    manifest = getattr(model, "manifest", None) or {}
    col = ((manifest.get("domain") or {}).get("colour") or {}) if isinstance(manifest, dict) else {}
    if not col.get("background") or not col.get("cells"):
        return None
    return {"method": "lab-anchors", "background": col["background"], "cells": col["cells"]}


def _red_cells_number(model, key: str, low: float, high: float, what: str) -> float | None:
    """One number of the bundle's `red_cells` section, checked to lie in [low, high]; None when absent."""
    manifest = getattr(model, "manifest", None) or {}
    value = ((manifest.get("red_cells") or {}).get(key)) if isinstance(manifest, dict) else None
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        from hemaedge.edge.errors import BundleError

        raise BundleError(f"{getattr(model, 'root', 'the red-cell bundle')}: red_cells.{key} {value!r} "
                          f"must be {what} within {low:g}..{high:g}; export the bundle again")
    return value


def manifest_side_factor(model) -> float | None:
    """The crop side (in ruler diameters) the bundle's training crops had (`red_cells` section,
    written at export from the crops tree), or None for an older bundle."""
    return _red_cells_number(model, "crop_side_factor", 0.5, 5.0, "a number of red-cell diameters")


def manifest_reference_diameter(model) -> float | None:
    """The red-cell diameter (px) the ruler read on the bundle's training frames (`red_cells`
    section), or None for a bundle without one."""
    return _red_cells_number(model, "ruler_diameter_px", 4.0, 2000.0, "a red-cell diameter in pixels")


class RedCellClassifier:
    """Detect red cells and classify their morphology (the model is optional: count only).

    Domain check: the bundle's `domain` section (training colours, OOD limit) is compared with
    the run's frames and red cells (edge/domain.py), so a summary from a microscope unlike the
    training one says its morphology is not validated. `normalize_frames`: map each frame's
    background and red-cell colour to the training slides' (edge.preprocess.normalize_colour,
    anchors of the whole frame, not of each crop: a pale cell must stay pale) before cutting.
    `scale`: which red-cell diameter sets detection and crops (RBC_SCALES; "auto" by default).
    `layer`: apply the bundle's size layer (`red_cells.layer`, edge/rbc_layer.py) when it has one, on
    fields sized at the training magnification only (scale "bundle"), where it was fitted.
    """

    def __init__(self, model=None, backend=None, params: RbcParams | None = None,
                 side_factor: float | None = None, max_batch: int = 256, normalize_frames: bool = False,
                 scale: str = "auto", layer: bool = True):
        from hemaedge.edge.domain import DomainMonitor
        from hemaedge.edge.rbc_layer import SizeLayer

        self.model, self.backend = model, backend
        self.classes = list(model.classes) if model is not None else []
        self.params = params or RbcParams()
        # crops as wide as the bundle's training crops (its manifest says; older bundles: the default)
        self.side_factor = side_factor or (manifest_side_factor(model) if model is not None else None) \
            or DEFAULT_SIDE_FACTOR
        self.max_batch = max_batch
        manifest = getattr(model, "manifest", None) if model is not None else None
        self.domain = DomainMonitor(manifest.get("domain") if isinstance(manifest, dict) else None) \
            if model is not None else None
        self.reference = frame_reference(model) if normalize_frames and model is not None else None
        if normalize_frames and model is not None and self.reference is None:
            from hemaedge.edge.errors import BundleError

            raise BundleError("frame normalisation needs the red-cell bundle's training colours (its manifest "
                              "has no domain section); export the model again with this version of hemaedge")
        if scale not in RBC_SCALES:
            from hemaedge.edge.errors import UsageError

            raise UsageError(f"red-cell scale {scale!r} is not one of {', '.join(RBC_SCALES)}")
        self.reference_diameter = manifest_reference_diameter(model) if model is not None else None
        if scale == "bundle" and self.reference_diameter is None:
            from hemaedge.edge.errors import UsageError

            raise UsageError("--rbc-scale bundle needs a red-cell bundle whose manifest records its training "
                             "frames' red-cell diameter (red_cells.ruler_diameter_px); use --rbc-scale field")
        # count only, or a bundle without a reference: the field's ruler is all there is
        self.scale = scale if self.reference_diameter is not None else "field"
        # the manifest's size layer (edge/rbc_layer.py); layer=False runs the model alone (fitting it)
        self.layer = SizeLayer.from_manifest(model) if layer and model is not None else None

    def diameter_for(self, image: np.ndarray, diameter: float | None) -> tuple[float | None, str]:
        """(red-cell diameter in px that sets detection and crops, "bundle" | "field") for a frame
        whose ruler read `diameter` (None: measured here)."""
        if self.scale == "bundle":
            return self.reference_diameter, "bundle"
        if self.scale == "auto":
            diameter = diameter or red_cell_diameter(image)
            ref = self.reference_diameter
            if diameter and ref / SAME_MAGNIFICATION <= diameter <= ref * SAME_MAGNIFICATION:
                return ref, "bundle"
        return diameter, "field"

    def process(self, image: np.ndarray, diameter: float | None = None) -> RedCellResult:
        """`diameter`: the run's ruler (running median); None measures it on this frame."""
        t0 = time.perf_counter()
        diameter, scale = self.diameter_for(image, diameter)
        cells, d = detect_red_cells(image, diameter, self.params)
        t1 = time.perf_counter()
        labels, conf = ["rbc"] * len(cells), np.ones(len(cells), np.float32)
        pre_ms = inf_ms = layer_ms = 0.0
        probs = None
        if self.backend is not None and cells:
            self.domain.add_frame(image)
            if self.reference is not None:
                image = normalize_colour(image, self.reference)
            crops = rbc_crops(image, [c.centre for c in cells], d, self.model.contract.size, self.side_factor)
            pre_ms = (time.perf_counter() - t1) * 1e3  # cutting the crops counts as preprocessing
            probs = []
            for i in range(0, len(crops), self.max_batch):
                ta = time.perf_counter()
                batch = prepare_batch(crops[i:i + self.max_batch], self.model.contract)
                tb = time.perf_counter()
                probs.append(self.backend.predict(batch))
                pre_ms += (tb - ta) * 1e3
                inf_ms += (time.perf_counter() - tb) * 1e3
            probs = np.concatenate(probs)
            # cells cut by the frame border are unlike any training crop (whole labelled cells): the
            # domain check's confidence signal uses whole cells only
            whole = np.array([not c.edge for c in cells], bool)
            self.domain.add_cells(probs[whole])  # the OOD limit was fitted on the model's own answers
            # the layer was fitted at the training magnification: fields sized at their own ruler
            # (another microscope) keep the model alone (with it BCCD read 39 -> 53% schistocytes)
            if self.layer is not None and scale == "bundle":
                tl = time.perf_counter()
                probs = self.layer.apply(probs, cells, self.reference_diameter, image)
                layer_ms = (time.perf_counter() - tl) * 1e3
            idx = probs.argmax(axis=1)
            labels = [self.classes[i] for i in idx]
            conf = probs[np.arange(len(idx)), idx]
        return RedCellResult(cells, labels, conf, d, {"rbc_detect": (t1 - t0) * 1e3, "rbc_preprocess": pre_ms,
                                                      "rbc_inference": inf_ms, "rbc_layer": layer_ms,
                                                      "rbc_total": (time.perf_counter() - t0) * 1e3}, probs,
                             crop_side(d, self.side_factor) if d else None, scale if d else None)


NOT_VALIDATED = "morphology not validated for this microscope"


def qualify(summary: dict, domain_report: dict | None) -> dict:
    """Say in the red-cell summary whether its morphology can be trusted on this microscope:
    `domain` (the red-cell model's own check), `morphology_validated`, and on every flag
    `validated` (a flag from a microscope unlike the training one is not a finding)."""
    if not summary.get("classified"):
        return summary
    report = domain_report or {"checked": False, "reasons": []}
    summary["domain"] = report
    if not report.get("checked"):
        why = report.get("note") or "the red-cell model carries no domain section"
        summary["morphology_validated"] = None
        summary["validation_note"] = f"{NOT_VALIDATED} (not checked: {why})"
    elif report.get("unlike_training"):
        summary["morphology_validated"] = False
        summary["validation_note"] = f"{NOT_VALIDATED}: " + "; ".join(report.get("reasons") or [])
    else:
        summary["morphology_validated"] = True
    for f in summary.get("flags", []):
        f["validated"] = summary["morphology_validated"] is True
    return summary


class RedCellTally:
    """Running red-cell counts of a run: per field, per morphology, and the flags they raise."""

    def __init__(self, classes: list[str]):
        self.classes = list(classes)
        self.counts = {c: 0 for c in self.classes}
        self.per_field: list[int] = []
        self.scales = {"bundle": 0, "field": 0}  # fields whose crops followed each scale
        self.timings: dict[str, list[float]] = {}

    def add(self, result: RedCellResult) -> None:
        self.per_field.append(len(result.cells))
        if result.scale in self.scales:
            self.scales[result.scale] += 1
        for label in result.labels:
            if label in self.counts:
                self.counts[label] += 1
        for k, v in result.timings_ms.items():
            self.timings.setdefault(k, []).append(v)

    def summary(self) -> dict:
        from hemaedge.edge.metrics_runtime import percentiles

        total = sum(self.per_field)
        classified = sum(self.counts.values())
        morphology = []
        for c in self.classes:
            lo, hi = percent_interval(self.counts[c], classified)
            morphology.append({"class": c, "count": self.counts[c],
                               "percent": round(100 * self.counts[c] / classified, 2) if classified else 0.0,
                               "ci95_low": lo, "ci95_high": hi})
        flags = []
        for row in morphology:
            rule = FLAG_THRESHOLDS.get(row["class"])
            if rule and classified and row["percent"] > rule[0]:
                flags.append({"class": row["class"], "percent": row["percent"], "threshold_percent": rule[0],
                              "ci95_low": row["ci95_low"], "source": rule[1],
                              "confident": row["ci95_low"] > rule[0]})
        pf = np.asarray(self.per_field, float)
        return {"fields": len(self.per_field), "red_cells": total,
                "per_field": {"mean": round(float(pf.mean()), 2) if len(pf) else None,
                              "median": float(np.median(pf)) if len(pf) else None,
                              "min": int(pf.min()) if len(pf) else None, "max": int(pf.max()) if len(pf) else None},
                "classified": classified, "morphology": morphology, "flags": flags,
                "size_scale_fields": dict(self.scales),
                "latency_ms": {k: percentiles(v) for k, v in self.timings.items()}}


def format_red_cells(s: dict) -> str:
    """The red-cell part of the run summary as plain text."""
    pf = s["per_field"]
    lines = [f"red cells: {s['red_cells']} in {s['fields']} fields (per field median {pf['median']}, "
             f"mean {pf['mean']}, range {pf['min']}-{pf['max']})"]
    sc = s.get("size_scale_fields") or {}
    if s["classified"] and sc.get("field"):
        lines.append(f"  sizes: {sc['field']} fields at their own ruler (another magnification than the model's "
                     f"training frames, or --rbc-scale field): micro-/macrocytes there are relative to the field")
    if s["classified"]:
        lines.append(f"  {'morphology':<16}{'count':>7}{'%':>8}   95% interval")
        for r in s["morphology"]:
            lines.append(f"  {r['class']:<16}{r['count']:>7}{r['percent']:>8.2f}   {r['ci95_low']:.2f}-{r['ci95_high']:.2f}")
    if s.get("validation_note"):
        lines.append(f"NOTE: {s['validation_note']}")
    for f in s["flags"]:
        lines.append(f"FLAG {f['class']}: {f['percent']:.2f}% > {f['threshold_percent']}% "
                     f"({'interval above the threshold' if f['confident'] else 'interval reaches below the threshold'}; "
                     f"{f['source']})" + ("" if f.get("validated", True) else f" - {NOT_VALIDATED}, not a finding"))
    return "\n".join(lines)
