"""One export, end to end: convert -> run the artifact on val/test through `prepare_batch` ->
parity against the source model -> verified bundle. `export_all` does every format and returns
one table row per format, whatever happened (passed / failed-validation / failed-to-export).
"""
from __future__ import annotations

import json

import logging
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import prepare_batch

from hemaedge.export import parity as par
from hemaedge.export.bundle_writer import confidence_sections, write_export_bundle
from hemaedge.export.evaldata import load_split

@dataclass(frozen=True)
class ExportFormat:
    """One row of the export format table: everything the CLI and the pipeline know about a format."""

    name: str
    backend: str  # a back end of the device's registry (edge/backends.py)
    variant: str  # what the converter is asked for (fp32, fp16, dynamic, int8, int16x8)
    needs_calibration: bool = False
    bounded_logits: bool = False  # int8 classifier end rewritten to bounded logits (export/bounded_logits.py)
    default: bool = True  # in `export all`'s default list
    note: str = ""

    @property
    def suffix(self) -> str:
        from hemaedge.edge.backends import REGISTRY

        return REGISTRY[self.backend].suffixes[0]


FORMAT_TABLE = (
    ExportFormat("tflite-fp32", "tflite", "fp32"),
    ExportFormat("tflite-fp16", "tflite", "fp16"),
    ExportFormat("tflite-dynamic", "tflite", "dynamic"),
    ExportFormat("tflite-int8", "tflite", "int8", needs_calibration=True, bounded_logits=True),
    ExportFormat("tflite-int8-floatio", "tflite", "int8", needs_calibration=True, bounded_logits=True,
                 note="int8 inside, float input/output"),
    ExportFormat("tflite-int8-mixed", "tflite", "int8", needs_calibration=True,
                 note="selective float fallback: labelled, not integer-only"),
    ExportFormat("tflite-int16x8", "tflite", "int16x8", needs_calibration=True, default=False,
                 note="int16 activations; slow reference kernels, opt-in"),
    ExportFormat("onnx-fp32", "onnx", "fp32"),
    ExportFormat("onnx-int8", "onnx", "int8", needs_calibration=True, bounded_logits=True),
    ExportFormat("tensorrt-fp16", "tensorrt", "fp16", note="built on the device: hemaedge export tensorrt"),
    ExportFormat("tensorrt-int8", "tensorrt", "int8", needs_calibration=True,
                 note="built on the device: hemaedge export tensorrt"),
)
FORMAT_BY_NAME = {f.name: f for f in FORMAT_TABLE}
DEFAULT_FORMATS = [f.name for f in FORMAT_TABLE if f.default]
# Views kept for callers that want plain collections.
FORMATS = {f.name: (f.backend, f.variant) for f in FORMAT_TABLE}
NEEDS_CALIBRATION = {f.name for f in FORMAT_TABLE if f.needs_calibration}

logger = logging.getLogger(__name__)
# The classifier end of the network kept in float by "tflite-int8-mixed" unless told otherwise:
# global pooling, the dense layer and softmax, where int8 rounding costs EfficientNets most.
DEFAULT_FALLBACK_OPS = ["MEAN", "FULLY_CONNECTED", "SOFTMAX"]
# Integer-only formats whose classifier end is rewritten to centred, bounded logits (see
# export/bounded_logits.py) unless --no-bound-logits: int8 logits of widely varying size lose points.
BOUNDED_LOGITS_FORMATS = {f.name for f in FORMAT_TABLE if f.bounded_logits}


class ParityData:
    """Val/test images and the source model's probabilities on them, loaded once per session."""

    def __init__(self, root, classes, splits=("val", "test"), limit: int | None = None, seed: int = 0):
        self.root, self.classes, self.splits, self.limit, self.seed = Path(root), list(classes), tuple(splits), limit, seed
        self._data, self._source = {}, {}

    def data(self, split):
        if split not in self._data:
            self._data[split] = load_split(self.root, split, self.classes, self.limit, self.seed)
        return self._data[split]

    def source_probs(self, source, split, batch_size: int = 64) -> np.ndarray:
        if split not in self._source:
            images, _ = self.data(split)
            chunks = [source.predict(prepare_batch(images[s:s + batch_size], source.contract))
                      for s in range(0, len(images), batch_size)]
            self._source[split] = np.concatenate(chunks)
        return self._source[split]

    def describe(self) -> dict:
        return {"data": str(self.root), "splits": list(self.splits), "limit": self.limit, "seed": self.seed}


def measure_parity(source, artifact, contract, output, data: ParityData | None, max_drop: float,
                   progress: bool = True) -> tuple[dict, dict]:
    """(per-split parity metrics, verdict) of a model file, run through the device's code path
    (staged bundle, load_backend, prepare_batch: `parity.staged_backend`)."""
    if data is None:
        return {}, par.judge({}, max_drop)
    splits = {}
    with par.staged_backend(artifact, classes=source.classes, contract=contract, output=output) as backend:
        for split in data.splits:
            images, labels = data.data(split)
            s_probs = data.source_probs(source, split)
            a_probs = par.device_probabilities(backend, images, contract,
                                               progress=f"parity {split}" if progress else None)
            splits[split] = par.split_parity(labels, s_probs, a_probs, source.classes)
        measured = backend.model_sha256
    verdict = par.judge(splits, max_drop)
    verdict["model_sha256"] = measured  # the bytes the figures describe (the bundle's model file)
    return splits, verdict


def convert(fmt: str, source, *, workdir: Path, calib_images=None, opset: int = 17, int8_io: str = "uint8",
            int8_output: str | None = None, float_fallback_ops=None, per_tensor: bool = False,
            onnx_calib_method: str = "minmax", bound_logits: bool = True) -> tuple[Path, object, dict, dict]:
    """Convert the source model to `fmt`; returns (artifact path, contract, output, settings)."""
    backend, variant = FORMATS[fmt]
    if fmt in NEEDS_CALIBRATION and not calib_images:
        raise UserError("no calibration images (pass --calib-dir; make them with `hemaedge data calibration`)")
    if backend == "tflite":
        from hemaedge.export.tflite import convert_tflite

        io = "float32" if fmt in ("tflite-int8-floatio", "tflite-int8-mixed") else int8_io
        ops = (float_fallback_ops or DEFAULT_FALLBACK_OPS) if fmt == "tflite-int8-mixed" else None
        model, output_kind, bounded = _model_to_convert(fmt, source, calib_images, bound_logits)
        res = convert_tflite(model, source.contract, variant, calib_images=calib_images, int8_io=io,
                             int8_output=int8_output, output_kind=output_kind, denylisted_ops=ops,
                             per_tensor=per_tensor)
        output, settings = dict(res.output), dict(res.settings)
        _record_bound(bounded, output, settings)
        path = workdir / f"{fmt}.tflite"
        path.write_bytes(res.data)
        return path, res.contract, output, settings
    if backend == "onnx":
        from hemaedge.export.onnx_export import keras_to_onnx, onnx_opset, quantize_onnx_int8

        model, output_kind, bounded = _model_to_convert(fmt, source, calib_images, bound_logits)
        data = keras_to_onnx(model, source.contract, opset)
        settings = {"quant": "fp32", "opset": onnx_opset(data), "converter": _tf2onnx_version()}
        if variant == "int8":
            data, qset = quantize_onnx_int8(data, source.contract, calib_images, method=onnx_calib_method)
            settings.update(qset)
        path = workdir / f"{fmt}.onnx"
        path.write_bytes(data)
        output = {"kind": output_kind, "dtype": "float32", "quant_scale": None, "quant_zero_point": None}
        _record_bound(bounded, output, settings)
        return path, source.contract, output, settings
    if backend == "tensorrt":
        from hemaedge.export.tensorrt import require_tensorrt

        require_tensorrt()  # raises with a clear message where TensorRT is missing
        raise UserError("TensorRT engines are built from an ONNX file on the target device: "
                        "run `hemaedge export tensorrt MODEL.onnx` there")
    raise UserError(f"unknown format {fmt!r}")


def _model_to_convert(fmt, source, calib_images, bound_logits: bool) -> tuple[object, str, dict | None]:
    """(Keras model, output kind, bounded-logits record or None) for one format."""
    if fmt in BOUNDED_LOGITS_FORMATS and bound_logits and source.output_kind == "probabilities":
        model, bounded = _bounded_logits(source, calib_images)
        return model, "logits" if bounded.get("applied") else source.output_kind, bounded
    return source.model, source.output_kind, None


def _record_bound(bounded: dict | None, output: dict, settings: dict) -> None:
    if bounded is not None:
        settings["bounded_logits"] = bounded
        if bounded.get("applied"):
            output["logit_scale"] = bounded["logit_scale"]


def _bounded_logits(source, calib_images) -> tuple[object, dict]:
    """(model to convert, settings record) with the softmax end made int8-friendly where possible."""
    from hemaedge.export.bounded_logits import bound_for_int8
    from hemaedge.export.calibration import calibration_batches

    model, info = bound_for_int8(source.model, calibration_batches(calib_images, source.contract, batch_size=64))
    if model is None:
        return source.model, {"applied": False, "reason": info}
    return model, dict(info, applied=True)


def _tf2onnx_version() -> str:
    import tf2onnx

    return f"tf2onnx {tf2onnx.__version__}"


def export_one(fmt: str, source, out_dir, *, parity_data: ParityData | None = None,
               max_drop: float = par.DEFAULT_MAX_DROP, calib_images=None, calib_info: dict | None = None,
               overwrite: bool = False, log: Callable[[str], None] | None = None,
               manifest_extra: dict | None = None, **convert_kw) -> dict:
    """Convert + parity + bundle. Returns a table row; raises on conversion errors."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hemaedge-export-") as tmp:
        path, contract, output, settings = convert(fmt, source, calib_images=calib_images, workdir=Path(tmp), **convert_kw)
        export_s = time.perf_counter() - t0
        if calib_info and fmt in NEEDS_CALIBRATION:
            settings["calibration"] = calib_info
        settings["format"] = fmt
        splits, verdict = measure_parity(source, path, contract, output, parity_data, max_drop)
        if parity_data is not None:
            verdict["data"] = parity_data.describe()
        # parity compares raw outputs; the temperature (argmax-neutral) goes into the manifest after it
        output, sections = confidence_sections(getattr(source, "sidecar", {}) or {}, output)
        if parity_data is not None and (parity_data.root / "rbc_crops.json").is_file():
            # red-cell crops (`hemaedge data rbc-crops`): the device must cut its crops the same way
            sections["red_cells"] = json.loads((parity_data.root / "rbc_crops.json").read_text())
        bundle = write_export_bundle(out_dir, path, model_format=fmt, classes=source.classes, contract=contract,
                                     output=output, source=source.source_info(), settings=settings,
                                     metrics=par.manifest_metrics(splits, verdict) if splits else {},
                                     validation=verdict, name=f"{source.name}-{fmt}", overwrite=overwrite,
                                     manifest_extra={**sections, **(manifest_extra or {})})
        size = path.stat().st_size
    if splits:
        log(f"[{fmt}] " + par.format_summary(splits, verdict).replace("\n", f"\n[{fmt}] "))
    return make_row(fmt, verdict["status"], size=size, splits=splits, bundle=bundle, export_s=export_s,
                    contract=contract, output=output)


def make_row(fmt, status, *, size=None, splits=None, bundle=None, export_s=None, error=None,
             contract=None, output=None) -> dict:
    splits = splits or {}
    main = splits.get("test") or next(iter(splits.values()), None)
    row = {"format": fmt, "status": status,
           "size_mb": round(size / 1e6, 3) if size else None,
           "accuracy": main["accuracy"] if main else None,
           "source_accuracy": main["source_accuracy"] if main else None,
           "delta_points": main["accuracy_delta_points"] if main else None,
           "macro_f1": main["macro_f1"] if main else None,
           "macro_f1_delta_points": main["macro_f1_delta_points"] if main else None,
           "agreement": main["agreement"] if main else None,
           "val_accuracy": splits["val"]["accuracy"] if "val" in splits else None,
           "val_delta_points": splits["val"]["accuracy_delta_points"] if "val" in splits else None,
           "val_agreement": splits["val"]["agreement"] if "val" in splits else None,
           "n": {k: v["n"] for k, v in splits.items()},
           "input": (f"{contract.dtype}" + (f" s={contract.quant_scale:g} zp={contract.quant_zero_point}"
                                            if contract.quant_scale is not None else "")) if contract else None,
           "output": output.get("dtype") if output else None,
           "export_s": round(export_s, 1) if export_s is not None else None,
           "bundle": str(bundle) if bundle else None,
           "error": error}
    return row


def export_all(source, out_root, formats, *, on_row: Callable[[dict], None] | None = None,
               log: Callable[[str], None] | None = None, **kw) -> list[dict]:
    """Every format in `formats`; a row for each, never a missing one."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    rows = []
    for fmt in formats:
        log(f"--- {fmt}")
        try:
            row = export_one(fmt, source, Path(out_root) / fmt, log=log, **kw)
        except Exception as exc:  # a failed export is a table row, not a crash
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, (UserError, RuntimeError)):
                log(traceback.format_exc(limit=3))
            log(f"[{fmt}] failed to export: {msg}")
            row = make_row(fmt, par.FAILED_TO_EXPORT, error=msg)
        rows.append(row)
        if on_row:
            on_row(rows)
    return rows
