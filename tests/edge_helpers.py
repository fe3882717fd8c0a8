"""Tiny real models for the edge tests: ONNX graphs built with onnx.helper, TFLite models
converted with TensorFlow, each wrapped in a real bundle with `write_bundle`.

The models are deliberately simple but deterministic: the class score is a linear function
of the crop's mean colour (blue-purple crops -> class 0 "wbc_like", pale crops -> class 1),
so a test can check that the right pixels reached the model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["wbc_like", "pale", "other"]
# mean R, G, B (0..255) -> logits; blue minus green drives class 0
W = np.array([[0.0, 0.0, 0.005],
              [-0.1, 0.02, 0.0],
              [0.1, 0.0, 0.0]], dtype=np.float32)
B = np.array([0.0, -2.0, 0.0], dtype=np.float32)


def reference_probs(batch_float: np.ndarray) -> np.ndarray:
    m = batch_float.reshape(len(batch_float), -1, 3).mean(axis=1)
    z = m @ W + B
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def make_onnx(path: Path, size: int = 32, batch=None, input_dtype: str = "float32", output: str = "probabilities",
              quant_out: tuple[float, int] | None = None, weights=None) -> Path:
    """(N, size, size, 3) -> mean colour -> linear -> softmax (or logits / uint8-quantized)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    elem = {"float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8, "int8": TensorProto.INT8}[input_dtype]
    dim0 = batch if batch else "N"
    inp = helper.make_tensor_value_info("pixels", elem, [dim0, size, size, 3])
    nodes = []
    x = "pixels"
    if input_dtype != "float32":
        nodes.append(helper.make_node("Cast", ["pixels"], ["pixf"], to=TensorProto.FLOAT))
        x = "pixf"
    w_, b_ = weights if weights is not None else (W, B)
    inits = [numpy_helper.from_array(w_, "W"), numpy_helper.from_array(b_, "B"),
             numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")]
    nodes += [helper.make_node("ReduceMean", [x, "axes"], ["mean"], keepdims=0),
              helper.make_node("MatMul", ["mean", "W"], ["mw"]),
              helper.make_node("Add", ["mw", "B"], ["logits"])]
    last = "logits"
    if output == "probabilities":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        last = "probs"
    out_elem = TensorProto.FLOAT
    if quant_out:
        inits += [numpy_helper.from_array(np.array(quant_out[0], np.float32), "qs"),
                  numpy_helper.from_array(np.array(quant_out[1], np.uint8), "qz")]
        nodes.append(helper.make_node("QuantizeLinear", [last, "qs", "qz"], ["q"]))
        last, out_elem = "q", TensorProto.UINT8
    out = helper.make_tensor_value_info(last, out_elem, [dim0, w_.shape[1]])
    graph = helper.make_graph(nodes, "tiny", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_bundle(tmp: Path, model_path: Path, backend: str, size: int = 32, dtype: str = "float32",
                quant=(None, None), output: dict | None = None, classes=CLASSES, name: str = "tiny") -> Path:
    from hemaedge.edge.bundle import write_bundle
    from hemaedge.edge.preprocess import InputContract

    contract = InputContract(size=size, dtype=dtype, quant_scale=quant[0], quant_zero_point=quant[1])
    return write_bundle(tmp / name, {model_path.name: model_path}, model_file=model_path.name, backend=backend,
                        model_format=backend, classes=list(classes), contract=contract,
                        output=output or {"kind": "probabilities", "dtype": "float32"})


def make_tflite(tmp: Path, size: int = 32, int8: bool = False) -> tuple[Path, dict]:
    """A Keras model of the same function converted to TFLite (float, or full-integer int8).

    Returns the file and the output description for the manifest.
    """
    import tensorflow as tf

    inp = tf.keras.Input((size, size, 3), dtype="float32")
    m = tf.keras.layers.GlobalAveragePooling2D()(inp)
    dense = tf.keras.layers.Dense(len(CLASSES), activation="softmax")
    out = dense(m)
    model = tf.keras.Model(inp, out)
    dense.set_weights([W, B])
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    output = {"kind": "probabilities", "dtype": "float32"}
    if int8:
        rng = np.random.default_rng(0)

        def rep():
            for _ in range(32):  # flat random colours: spans the range of mean colours
                colour = rng.uniform(0, 255, (1, 1, 1, 3))
                yield [np.clip(colour + rng.normal(0, 20, (1, size, size, 3)), 0, 255).astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        output = {"kind": "probabilities", "dtype": "int8"}
    path = tmp / ("tiny_int8.tflite" if int8 else "tiny_f32.tflite")
    path.write_bytes(conv.convert())
    return path, output


_TFLITE_CACHE: dict = {}


def cached_tflite(size: int = 32, int8: bool = False) -> tuple[Path, dict]:
    """make_tflite once per test process (TensorFlow conversion is the slow part)."""
    import atexit
    import shutil
    import tempfile

    key = (size, int8)
    if key not in _TFLITE_CACHE:
        tmp = Path(tempfile.mkdtemp(prefix="hemaedge-tflite-"))
        atexit.register(shutil.rmtree, tmp, True)
        _TFLITE_CACHE[key] = make_tflite(tmp, size, int8)
    return _TFLITE_CACHE[key]
