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


def make_bundle(where: Path, name: str, *, payload: bytes | None = None, classes=None, size: int = 128,
                backend: str = "onnx", accuracy: float | None = 0.9, model_bytes: int = 4096) -> Path:
    """A real bundle over a dummy model file (the store copies bytes; it never runs the model)."""
    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    model = where / f"{name}.model.bin"
    body = payload if payload is not None else (name.encode() * (model_bytes // max(1, len(name)) + 1))[:model_bytes]
    model.write_bytes(body)
    labels = where / f"{name}.labels.txt"
    labels.write_text("\n".join(classes or BLOOD_CLASSES) + "\n")
    ext = {"onnx": "onnx", "tflite": "tflite", "tensorrt": "engine"}[backend]
    metrics = {"test": {"accuracy": accuracy, "n": 3421}} if accuracy is not None else {}
    return write_bundle(where / name, {f"model.{ext}": model, "extra/labels.txt": labels},
                        model_file=f"model.{ext}", backend=backend, model_format=ext,
                        classes=classes or BLOOD_CLASSES, contract=InputContract(size=size),
                        metrics=metrics, name=name)


def run_cli(*args, env_extra=None, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([HEMAEDGE, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=kwargs.pop("timeout", 120), **kwargs)
