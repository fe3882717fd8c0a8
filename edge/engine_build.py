"""Build a TensorRT engine on a Jetson from an installed ONNX bundle, as a new verified bundle.

A TensorRT engine only runs on the GPU and TensorRT version it was built with, so it is built
on the device itself: `trtexec` (shipped with JetPack in /usr/src/tensorrt/bin) turns the
installed ONNX model into an engine, which is written as a `tensorrt` bundle with the same
classes and input contract and installed into the store like any other bundle. The ONNX
model is parsed by TensorRT, never executed as code.
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from hemaedge.edge.bundle import load_bundle, write_bundle
from hemaedge.edge.store import StoreError, manifest_digest

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
PRECISION_FLAGS = {"fp16": ["--fp16"], "fp32": []}


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    return JETPACK_TRTEXEC if Path(JETPACK_TRTEXEC).is_file() else None


def check_can_build(bundle_dir) -> str:
    """Fail early (before installing anything) if an engine cannot be built here; returns trtexec."""
    bundle = load_bundle(bundle_dir)
    if bundle.backend != "onnx":
        raise StoreError(f"{bundle_dir}: --build-engine needs an ONNX bundle (this one is {bundle.backend!r}); "
                         "export one with the ONNX format")
    trtexec = find_trtexec()
    if trtexec is None:
        raise StoreError("--build-engine needs TensorRT's trtexec (JetPack: /usr/src/tensorrt/bin/trtexec); "
                         "it was not found on PATH or there. Is this a Jetson with JetPack installed?")
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


def build_engine_bundle(onnx_bundle_dir, out_dir, *, precision: str = "fp16", max_batch: int = 32,
                        trtexec: str | None = None) -> Path:
    """Run trtexec on the bundle's ONNX model and write a verified `tensorrt` bundle to out_dir."""
    if precision not in PRECISION_FLAGS:
        raise StoreError(f"engine precision {precision!r} not supported; choose one of {list(PRECISION_FLAGS)}")
    trtexec = trtexec or check_can_build(onnx_bundle_dir)
    bundle = load_bundle(onnx_bundle_dir)
    name, shape = onnx_input(bundle.model_path)
    with tempfile.TemporaryDirectory(prefix="hemaedge-engine-") as tmp:
        engine = Path(tmp) / "model.engine"
        cmd = trtexec_command(trtexec, bundle.model_path, engine, precision=precision, input_name=name,
                              input_shape=shape, size=bundle.contract.size, max_batch=max_batch)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not engine.is_file() or engine.stat().st_size == 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise StoreError(f"trtexec could not build an engine from {bundle.model_path} (exit {proc.returncode}):\n{tail}")
        m = re.search(r"TensorRT version:\s*([\d.]+)", proc.stdout + proc.stderr)
        base = bundle.manifest.get("name") or Path(onnx_bundle_dir).name
        return write_bundle(
            out_dir, {"model.engine": engine}, model_file="model.engine", backend="tensorrt",
            model_format=f"tensorrt-{precision}", classes=bundle.classes, contract=bundle.contract,
            output=bundle.output,
            source={"onnx_bundle": base, "onnx_manifest_sha256": manifest_digest(onnx_bundle_dir),
                    "onnx_sha256": bundle.manifest["files"][bundle.manifest["model"]["file"]]["sha256"],
                    "onnx_metrics": bundle.manifest.get("metrics") or {}},
            export={"tool": "trtexec", "precision": precision, "max_batch": max_batch,
                    "tensorrt_version": m.group(1) if m else None, "built_on": platform.node(),
                    "input_name": name, "command": " ".join(str(c) for c in cmd)},
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
