"""The one TensorRT engine builder, and engines built on a Jetson from an installed ONNX bundle.

A TensorRT engine only runs on the GPU and TensorRT version it was built with, so it is built
on the device itself. `build_engine` is the only builder: `trtexec` (shipped with JetPack in
/usr/src/tensorrt/bin) for fp16/fp32, else the TensorRT Python API, which int8 always uses
(with the calibrator of `hemaedge.export.tensorrt`). Both `hemaedge edge install --build-engine`
and `hemaedge export tensorrt` call it. The engine is written as a `tensorrt` bundle with the
same classes and input contract and installed into the store like any other bundle. The ONNX
model is parsed by TensorRT, never executed as code.
"""
from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from hemaedge.edge.bundle import load_bundle, write_bundle
from hemaedge.edge.store import StoreError, manifest_digest

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
PRECISION_FLAGS = {"fp16": ["--fp16"], "fp32": []}  # trtexec; int8 (calibrated) needs the Python API
PRECISIONS = ("fp16", "fp32", "int8")


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    return JETPACK_TRTEXEC if Path(JETPACK_TRTEXEC).is_file() else None


def check_can_build(bundle_dir) -> str | None:
    """Fail early (before installing anything) if an engine cannot be built here; returns trtexec
    (None: no trtexec, the TensorRT Python API builds it)."""
    bundle = load_bundle(bundle_dir)
    if bundle.backend != "onnx":
        raise StoreError(f"{bundle_dir}: --build-engine needs an ONNX bundle (this one is {bundle.backend!r}); "
                         "export one with the ONNX format")
    trtexec = find_trtexec()
    if trtexec is None and not tensorrt_importable():
        raise StoreError("--build-engine needs TensorRT: its trtexec (JetPack: /usr/src/tensorrt/bin/trtexec) "
                         "or the tensorrt Python module; neither was found. Is this a Jetson with JetPack installed?")
    return trtexec


def onnx_input(model_path: Path) -> tuple[str, list]:
    """Name and shape of the model's first input (dynamic dimensions come back as None)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    return inp.name, [d if isinstance(d, int) and d > 0 else None for d in inp.shape]


def trtexec_command(trtexec: str, onnx_path, engine_path, *, precision: str, input_name: str,
                    input_shape: list, size: int, max_batch: int) -> list[str]:
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}", *PRECISION_FLAGS[precision]]
    if input_shape and input_shape[0] is None:  # dynamic batch: give TensorRT the range of batches
        channels_first = len(input_shape) == 4 and input_shape[1] == 3
        wanted = [3, size, size] if channels_first else [size, size, 3]
        dims = [d if d is not None else w for d, w in zip(input_shape[1:], wanted)]
        name = f"'{input_name}'" if ":" in input_name else input_name
        dims_s = "x".join(str(d) for d in dims)
        cmd += [f"--minShapes={name}:1x{dims_s}", f"--optShapes={name}:{max_batch}x{dims_s}",
                f"--maxShapes={name}:{max_batch}x{dims_s}"]
    return cmd


# ----------------------------------------------------------------------------- the one engine builder


def tensorrt_importable() -> bool:
    try:
        return importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):
        return False


def build_engine(onnx_path, engine_path, precision: str = "fp16", *, size: int, max_batch: int = 32,
                 calibrator=None, workspace_mb: int = 1024, trtexec: str | None = None) -> dict:
    """The one TensorRT engine builder: ONNX file -> serialized engine for batches 1..max_batch.

    fp16/fp32 use trtexec where it is found (JetPack ships it; this is the path the tests run
    with a stand-in), else the TensorRT Python API; int8 needs the Python API and a calibrator
    (`hemaedge.export.tensorrt.make_calibrator`). Returns the settings recorded in the manifest."""
    if precision not in PRECISIONS:
        raise StoreError(f"engine precision {precision!r} not supported; choose one of {list(PRECISIONS)}")
    # trtexec cannot run our calibrator: an int8 engine built by it would have made-up scales
    trtexec = None if precision == "int8" else (trtexec or find_trtexec())
    if trtexec:
        return _build_with_trtexec(trtexec, onnx_path, engine_path, precision, size=size, max_batch=max_batch)
    if not tensorrt_importable():
        raise StoreError("building a TensorRT engine needs TensorRT on this device: trtexec "
                         f"({JETPACK_TRTEXEC}) or the tensorrt Python module (JetPack's python3-libnvinfer)")
    return _build_with_python_api(onnx_path, engine_path, precision, size=size, max_batch=max_batch,
                                  calibrator=calibrator, workspace_mb=workspace_mb)


def _build_with_trtexec(trtexec, onnx_path, engine_path, precision, *, size, max_batch) -> dict:
    name, shape = onnx_input(Path(onnx_path))
    cmd = trtexec_command(trtexec, onnx_path, engine_path, precision=precision, input_name=name,
                          input_shape=shape, size=size, max_batch=max_batch)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    engine = Path(engine_path)
    if proc.returncode != 0 or not engine.is_file() or engine.stat().st_size == 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise StoreError(f"trtexec could not build an engine from {onnx_path} (exit {proc.returncode}):\n{tail}")
    m = re.search(r"TensorRT version:\s*([\d.]+)", proc.stdout + proc.stderr)
    return {"tool": "trtexec", "precision": precision, "max_batch": max_batch,
            "tensorrt_version": m.group(1) if m else None, "input_name": name,
            "command": " ".join(str(c) for c in cmd)}


def _build_with_python_api(onnx_path, engine_path, precision, *, size, max_batch, calibrator, workspace_mb) -> dict:
    """Not run in this repository's CI (no TensorRT, no GPU): written against TensorRT 8.6-10."""
    import tensorrt as trt

    if precision == "int8" and calibrator is None:
        raise StoreError("int8 engines need calibration images (a calibrator)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StoreError(f"{onnx_path}: TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, size, size, 3), (max(1, max_batch // 2), size, size, 3), (max_batch, size, size, 3))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels fall back to fp16, not fp32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StoreError("TensorRT engine build failed (see the TensorRT log above)")
    Path(engine_path).write_bytes(bytes(serialized))
    return {"tool": "tensorrt-python", "precision": precision, "max_batch": max_batch,
            "tensorrt_version": trt.__version__, "input_name": inp.name, "workspace_mb": workspace_mb}


def build_engine_bundle(onnx_bundle_dir, out_dir, *, precision: str = "fp16", max_batch: int = 32,
                        trtexec: str | None = None) -> Path:
    """Build an engine from the bundle's ONNX model and write a verified `tensorrt` bundle to out_dir."""
    if precision not in PRECISION_FLAGS:
        raise StoreError(f"engine precision {precision!r} not supported; choose one of {list(PRECISION_FLAGS)}")
    trtexec = trtexec or check_can_build(onnx_bundle_dir)
    bundle = load_bundle(onnx_bundle_dir)
    with tempfile.TemporaryDirectory(prefix="hemaedge-engine-") as tmp:
        engine = Path(tmp) / "model.engine"
        settings = build_engine(bundle.model_path, engine, precision, size=bundle.contract.size,
                                max_batch=max_batch, trtexec=trtexec)
        base = bundle.meta.name or Path(onnx_bundle_dir).name
        return write_bundle(
            out_dir, {"model.engine": engine}, model_file="model.engine", backend="tensorrt",
            model_format=f"tensorrt-{precision}", classes=bundle.classes, contract=bundle.contract,
            output=bundle.output,
            source={"onnx_bundle": base, "onnx_manifest_sha256": manifest_digest(onnx_bundle_dir),
                    "onnx_sha256": bundle.meta.files[bundle.meta.model.file].sha256,
                    "onnx_metrics": bundle.manifest.get("metrics") or {}},
            export=dict(settings, built_on=platform.node()),
            # the engine's own accuracy is not measured here (same convention as `hemaedge export
            # tensorrt`): the ONNX figures stay under source.onnx_metrics, `hemaedge bench` measures it
            metrics={}, extra={"validation": {"status": "not-validated",
                                              "reason": "engine parity is measured on the device (hemaedge bench)"}},
            name=f"{base}-trt-{precision}", overwrite=True)


def build_engine_bundle_and_install(store, onnx_result, *, precision: str = "fp16", max_batch: int = 32,
                                    keep: int = 3, check_backend: bool = True, on_wait=None,
                                    require_signature: bool = False):
    """Build an engine from the just-installed ONNX version and install it as the active one."""
    with tempfile.TemporaryDirectory(prefix="hemaedge-engine-bundle-") as tmp:
        out = build_engine_bundle(onnx_result.path, Path(tmp) / "engine-bundle", precision=precision,
                                  max_batch=max_batch)
        # same classes and contract as the ONNX version, so no change to accept
        # the engine is built here, so it cannot carry the build machine's signature: the signed
        # ONNX version it was built from vouches for it (checked by the store)
        return store.install(out, keep=max(keep, 2), check_backend=check_backend, on_wait=on_wait,
                             source=f"engine built from {onnx_result.version}", built_from=onnx_result.version,
                             require_signature=require_signature)
