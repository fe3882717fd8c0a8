"""Helpers for the store and deploy tests: tiny real bundles and a hemaedge CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hemaedge.edge.bundle import write_bundle
from hemaedge.edge.preprocess import InputContract

BLOOD_CLASSES = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte",
                 "lymphocyte", "monocyte", "neutrophil", "platelet"]
HEMAEDGE = str(Path(sys.executable).with_name("hemaedge"))


def tiny_onnx(path: Path, n_classes: int, size: int, seed: str, pad_bytes: int = 0) -> Path:
    """A real, runnable ONNX classifier: mean colour -> linear -> softmax over n_classes.

    `seed` makes the weights (and so the bytes) differ between bundles; `pad_bytes` grows the
    file (a doc string) for tests that need a model of some size."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    w = rng.normal(0, 0.01, (3, n_classes)).astype(np.float32)
    b = rng.normal(0, 0.1, (n_classes,)).astype(np.float32)
    inp = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", size, size, 3])
    out = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_classes])
    nodes = [helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "W"], ["mw"]), helper.make_node("Add", ["mw", "B"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
             numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [inp], [out], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if pad_bytes:
        model.doc_string = (seed * (pad_bytes // max(1, len(seed)) + 1))[:pad_bytes]
    onnx.save(model, str(path))
    return path


def make_bundle(where: Path, name: str, *, payload: bytes | None = None, classes=None, size: int = 128,
                backend: str = "onnx", accuracy: float | None = 0.9, model_bytes: int = 4096) -> Path:
    """A real bundle. ONNX bundles hold a real, runnable tiny model (install loads and runs it);
    tflite/tensorrt bundles (and any given `payload`) hold dummy bytes, for tests that must be
    refused before anything is loaded."""
    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    model = where / f"{name}.model.bin"
    classes = classes or BLOOD_CLASSES
    if payload is None and backend == "onnx":
        tiny_onnx(model, len(classes), size, name, pad_bytes=model_bytes)
    else:
        body = payload if payload is not None else (name.encode() * (model_bytes // max(1, len(name)) + 1))[:model_bytes]
        model.write_bytes(body)
    labels = where / f"{name}.labels.txt"
    labels.write_text("\n".join(classes) + "\n")
    ext = {"onnx": "onnx", "tflite": "tflite", "tensorrt": "engine"}[backend]
    metrics = {"test": {"accuracy": accuracy, "n": 3421}} if accuracy is not None else {}
    return write_bundle(where / name, {f"model.{ext}": model, "extra/labels.txt": labels},
                        model_file=f"model.{ext}", backend=backend, model_format=ext,
                        classes=classes, contract=InputContract(size=size),
                        metrics=metrics, name=name)


def run_cli(*args, env_extra=None, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([HEMAEDGE, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=kwargs.pop("timeout", 120), **kwargs)
