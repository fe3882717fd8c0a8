"""Tiny real models for the benchmark tests: an ONNX classifier built with onnx.helper and a
TFLite one converted from a two-layer Keras model, each wrapped in a verified bundle."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hemaedge.edge.bundle import write_bundle
from hemaedge.edge.preprocess import InputContract

CLASSES = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte",
           "monocyte", "neutrophil", "platelet"]
SIZE = 16


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.01, (3, len(CLASSES))).astype(np.float32), rng.normal(0, 0.1, len(CLASSES)).astype(np.float32)


def onnx_model(path: Path, seed=0, n_out: int | None = None) -> Path:
    """Global average pool over pixels (0..255 floats) -> dense -> softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = _weights(seed)
    if n_out is not None:
        w, b = w[:, :n_out], b[:n_out]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def keras_model(path: Path, seed=0) -> Path:
    import keras

    w, b = _weights(seed)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inp, out)
    model.layers[-1].set_weights([w, b])
    model.save(path)
    return path


def tflite_model(keras_path: Path, path: Path) -> Path:
    import keras
    import tensorflow as tf

    model = keras.models.load_model(keras_path, compile=False)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    path.write_bytes(conv.convert())
    return path


def bundle(out: Path, model_file: Path, fmt: str, *, name="tiny", n_classes=None, source=None,
           metrics=None, extra=None) -> Path:
    backend = {".onnx": "onnx", ".tflite": "tflite", ".engine": "tensorrt"}[model_file.suffix]
    return write_bundle(out, {f"model{model_file.suffix}": model_file}, model_file=f"model{model_file.suffix}",
                        backend=backend, model_format=fmt, classes=CLASSES[: n_classes or len(CLASSES)],
                        contract=InputContract(size=SIZE), name=f"{name}-{fmt}", source=source or {},
                        metrics=metrics, extra=extra)


FAST = {"warmup": 1, "min_runs": 5, "min_seconds": 0.02, "max_seconds": 0.2}
_CACHE: dict = {}


def tiny_models(tmp_path_factory) -> dict:
    """ONNX, Keras and TFLite files of the tiny classifier, built once per test session."""
    if not _CACHE:
        d = tmp_path_factory.mktemp("bench_models")
        _CACHE["onnx"] = onnx_model(d / "tiny.onnx")
        _CACHE["onnx4"] = onnx_model(d / "tiny4.onnx", n_out=4)
        try:
            _CACHE["keras"] = keras_model(d / "tiny.keras")
            _CACHE["tflite"] = tflite_model(_CACHE["keras"], d / "tiny.tflite")
        except ImportError:  # an edge-only install: ONNX rows only
            _CACHE["keras"] = _CACHE["tflite"] = None
    return dict(_CACHE)


def finetune_metrics(folder: Path, acc=0.91, backbone="efficientnet_b0") -> Path:
    """A metrics.json laid out as `hemaedge train finetune` writes it (train/finetune.py)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    doc = {"backbone": backbone, "weights": "imagenet", "input_size": 128, "epochs_trained": 3, "best_epoch": 2,
           "machine": "test", "model_bytes": 2_500_000, "train_seconds": 321.5,
           "val": {"n": 10, "accuracy": acc + 0.01, "macro_f1": acc - 0.02},
           "test": {"n": 10, "accuracy": acc, "macro_f1": acc - 0.03}}
    (folder / "metrics.json").write_text(json.dumps(doc))
    # the sidecar repeats the metrics: it must not become a second row
    (folder / "best.json").write_text(json.dumps({"classes": CLASSES, "metrics": {"test": doc["test"]}}))
    return folder / "metrics.json"


def tiny_result(tmp_path_factory, bloodmnist128, bccd) -> dict:
    """One complete small benchmark run (ONNX + TFLite bundles, accuracy on 16 test images,
    2 BCCD frames, a training table), shared by the report, schema and compare tests."""
    if "result" not in _CACHE:
        from hemaedge.benchmarks.runner import BenchConfig, run_benchmark

        m = tiny_models(tmp_path_factory)
        d = tmp_path_factory.mktemp("bench_run")
        bundle(d / "export" / "onnx-fp32", m["onnx"], "onnx-fp32")
        if m["tflite"]:
            bundle(d / "export" / "tflite-int8", m["tflite"], "tflite-int8")  # fp32 inside; the name drives the goal row
        finetune_metrics(d / "runs" / "ft_b0")
        cfg = BenchConfig(targets=[d / "export"], threads=(1,), timing=FAST, throughput_batch=4, data=bloodmnist128,
                          limit=16, frames=bccd, frames_limit=2, progress=False)
        doc, written = run_benchmark(cfg, d / "out" / "bench_tiny", command="pytest", training_dirs=[d / "runs"],
                                     log=lambda s: None)
        _CACHE["result"] = {"doc": doc, "written": written, "dir": d}
    return _CACHE["result"]
