"""`hemaedge export tensorrt`: ONNX bundle -> TensorRT engine bundle, on the target device.

The classes and input contract come from the ONNX bundle's manifest (or the manifest next to a
bare .onnx file). The engine bundle is written with validation status "not-validated": parity
of an engine is measured on the device (`hemaedge bench`), not here.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from hemaedge.edge.bundle import load_bundle
from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import InputContract

from hemaedge.export.bundle_writer import write_export_bundle
from hemaedge.export.tensorrt import CalibrationStream, build_engine


def _onnx_and_manifest(path: Path) -> tuple[Path, dict]:
    if path.is_dir():
        bundle = load_bundle(path)
        if bundle.backend != "onnx":
            raise UserError(f"{path}: a {bundle.backend} bundle; TensorRT engines are built from an ONNX bundle")
        return bundle.model_path, bundle.manifest
    if path.suffix != ".onnx" or not path.is_file():
        raise UserError(f"{path}: expected an ONNX bundle folder or a .onnx file inside one")
    bundle = load_bundle(path.parent)  # verified like a bundle folder: checksums, schema
    if bundle.backend != "onnx" or bundle.model_path.resolve() != path.resolve():
        raise UserError(f"{path}: not the model of the bundle in {path.parent}; pass the bundle folder")
    return bundle.model_path, bundle.manifest


def export_tensorrt_bundle(onnx_model, out, precision: str, *, calib_images=None, calib_info=None, batch: int = 8,
                           max_batch: int = 32, cache=None, overwrite: bool = False) -> Path:
    onnx_path, manifest = _onnx_and_manifest(Path(onnx_model))
    contract = InputContract.from_dict(manifest["input"])
    stream = None
    if precision == "int8":
        if not calib_images:
            raise UserError("int8 engines need calibration images (--calib-dir)")
        cache = Path(cache) if cache else Path(out).with_name(Path(out).name + ".calib.cache")
        stream = CalibrationStream(calib_images, contract, batch_size=batch, cache_path=cache)
    with tempfile.TemporaryDirectory(prefix="hemaedge-trt-") as tmp:
        engine = Path(tmp) / "model.engine"
        settings = build_engine(onnx_path, engine, precision, size=contract.size, stream=stream, max_batch=max_batch)
        settings.update(format=f"tensorrt-{precision}", calibration=calib_info, onnx_sha256=manifest["files"][
            manifest["model"]["file"]]["sha256"])
        return write_export_bundle(out, engine, model_format=f"tensorrt-{precision}", classes=manifest["classes"],
                                   contract=contract, output=manifest.get("output") or {"kind": "probabilities"},
                                   source=manifest.get("source") or {}, settings=settings, metrics={},
                                   validation={"status": "not-validated",
                                               "reason": "engine parity is measured on the device (hemaedge bench)"},
                                   overwrite=overwrite)
