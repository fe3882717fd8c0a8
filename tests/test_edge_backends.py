"""Back ends: LiteRT and ONNX Runtime on tiny real models in real bundles; quantized inputs and
outputs, logits, variable and fixed batch sizes, and mismatched bundles."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from edge_helpers import CLASSES, cached_tflite, make_bundle, make_onnx, reference_probs
from hemaedge.edge.backends import BackendError, load_backend
from hemaedge.edge.bundle import BundleError, load_bundle
from hemaedge.edge.preprocess import InputContract, prepare_batch, read_image_rgb

SIZE = 32


@pytest.fixture(scope="module")
def crops(pbc_raw_val):
    imgs = [read_image_rgb(pbc_raw_val / f"val_{i:05d}.jpg") for i in range(5)]
    # a purple cell, a pale background patch, and whole fields
    return [imgs[0][120:240, 120:240], np.full((50, 50, 3), 235, np.uint8)] + imgs


def _expected(crops):
    return reference_probs(prepare_batch(crops, InputContract(size=SIZE)))


@pytest.mark.parametrize("batch", [None, 1, 4])
def test_onnx_dynamic_and_fixed_batch(tmp_path, crops, batch):
    m = make_onnx(tmp_path / "m.onnx", SIZE, batch=batch)
    b = load_bundle(make_bundle(tmp_path, m, "onnx", SIZE))
    be = load_backend(b, threads=1)
    probs = be.predict(prepare_batch(crops, b.contract))
    assert probs.dtype == np.float32 and probs.shape == (len(crops), len(CLASSES))
    np.testing.assert_allclose(probs, _expected(crops), atol=1e-5)
    assert probs[0].argmax() == 0 and probs[1].argmax() == 1
    assert be.predict(prepare_batch([], b.contract)).shape == (0, len(CLASSES))


def test_onnx_uint8_input_logits_output(tmp_path, crops):
    m = make_onnx(tmp_path / "m.onnx", SIZE, input_dtype="uint8", output="logits")
    b = load_bundle(make_bundle(tmp_path, m, "onnx", SIZE, dtype="uint8", quant=(1.0, 0),
                                output={"kind": "logits", "dtype": "float32"}))
    probs = load_backend(b, threads=1).predict(prepare_batch(crops, b.contract))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # softmax applied
    np.testing.assert_allclose(probs, _expected(crops), atol=1e-4)


def test_onnx_quantized_output_is_dequantized(tmp_path, crops):
    m = make_onnx(tmp_path / "m.onnx", SIZE, quant_out=(1 / 255, 0))
    b = load_bundle(make_bundle(tmp_path, m, "onnx", SIZE,
                                output={"kind": "probabilities", "dtype": "uint8", "quant_scale": 1 / 255,
                                        "quant_zero_point": 0}))
    probs = load_backend(b, threads=1).predict(prepare_batch(crops, b.contract))
    np.testing.assert_allclose(probs, _expected(crops), atol=1 / 255 + 1e-6)


def test_class_count_mismatch_is_a_clear_error(tmp_path, crops):
    m = make_onnx(tmp_path / "m.onnx", SIZE)
    b = load_bundle(make_bundle(tmp_path, m, "onnx", SIZE, classes=["a", "b"]))
    with pytest.raises(BackendError, match="3 outputs but the bundle lists 2 classes"):
        load_backend(b, threads=1).predict(prepare_batch(crops, b.contract))


def test_input_dtype_mismatch_is_a_clear_error(tmp_path):
    m = make_onnx(tmp_path / "m.onnx", SIZE)  # takes float32
    b = load_bundle(make_bundle(tmp_path, m, "onnx", SIZE, dtype="uint8", quant=(1.0, 0)))
    with pytest.raises(BackendError, match="input contract says uint8 but the model takes float32"):
        load_backend(b, threads=1)


def test_input_size_mismatch_is_a_clear_error(tmp_path, crops):
    m = make_onnx(tmp_path / "m.onnx", SIZE)
    b = load_bundle(make_bundle(tmp_path, m, "onnx", 64))
    with pytest.raises(BackendError, match="do not match"):
        load_backend(b, threads=1).predict(prepare_batch(crops, b.contract))


def test_garbage_model_file_is_a_clear_error(tmp_path):
    m = tmp_path / "m.onnx"
    m.write_bytes(b"not a model at all")
    with pytest.raises(BundleError, match="not a readable ONNX model"):  # refused before it is a bundle
        make_bundle(tmp_path, m, "onnx", SIZE)
    from hemaedge.edge.defaults import model_from_file

    with pytest.raises(BackendError, match="not a loadable ONNX model"):  # a bare --model file
        load_backend(model_from_file(m, "a,b,c", InputContract(size=SIZE)))
    t = tmp_path / "t.tflite"
    t.write_bytes(b"not a model at all either")
    b = load_bundle(make_bundle(tmp_path, t, "tflite", SIZE, name="t"))
    with pytest.raises(BackendError, match="not a loadable TFLite model"):
        load_backend(b)


def test_tensorrt_where_not_importable_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    e = tmp_path / "m.engine"
    e.write_bytes(b"\x00" * 64)
    b = load_bundle(make_bundle(tmp_path, e, "tensorrt", SIZE))
    with pytest.raises(BackendError, match="TensorRT is not importable here"):
        load_backend(b)


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory):
    pytest.importorskip("tensorflow")
    tmp = tmp_path_factory.mktemp("tflite")
    return tmp, cached_tflite(SIZE), cached_tflite(SIZE, int8=True)


def test_litert_float_variable_batch(tflite_models, crops):
    tmp, (path, output), _ = tflite_models
    b = load_bundle(make_bundle(tmp, path, "tflite", SIZE, output=output, name="f32"))
    be = load_backend(b, threads=2)
    for n in (len(crops), 1, 3):  # the input tensor is resized to each batch
        probs = be.predict(prepare_batch(crops[:n], b.contract))
        np.testing.assert_allclose(probs, _expected(crops[:n]), atol=1e-5)


def test_litert_int8_full_integer(tflite_models, crops):
    tmp, _, (path, output) = tflite_models
    from ai_edge_litert.interpreter import Interpreter

    det = Interpreter(model_path=str(path)).get_input_details()[0]
    scale, zero = det["quantization"]
    b = load_bundle(make_bundle(tmp, path, "tflite", SIZE, dtype="int8", quant=(scale, zero), output=output,
                                name="int8"))
    probs = load_backend(b, threads=1).predict(prepare_batch(crops, b.contract))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, _expected(crops), atol=0.03)  # int8 output steps of 1/256
    assert (probs.argmax(1)[:2] == [0, 1]).all()


def test_onnx_with_label_and_probability_outputs_gives_the_probabilities(tmp_path):
    # scikit-learn heads converted by skl2onnx emit (label int64, probabilities); the device must
    # score with the probabilities (it used to take the label and fail on an integer output)
    from onnx import TensorProto, helper, numpy_helper, save

    w = np.random.default_rng(0).normal(0, 0.01, (3, len(CLASSES))).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
             helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "two-outputs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(CLASSES)])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, tmp_path / "m.onnx")
    backend = load_backend(load_bundle(make_bundle(tmp_path, tmp_path / "m.onnx", "onnx")))
    x = prepare_batch([np.full((40, 40, 3), v, np.uint8) for v in (10, 200)], InputContract(size=SIZE))
    probs = backend.predict(x)
    assert probs.shape == (2, len(CLASSES)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_a_large_batch_runs_in_chunks_with_the_same_answers(bccd):
    """A frame of many cells (4 views each on stills) must not grow the interpreter's arena past
    `max_batch` images: the packaged default gives the very same probabilities chunk by chunk."""
    from hemaedge.edge.defaults import packaged_default_bundle

    frame = read_image_rgb(bccd / "JPEGImages" / "BloodImage_00007.jpg")
    crops = [frame[y:y + 150, x:x + 150] for y in range(0, 330, 55) for x in range(0, 490, 70)]  # 42 crops
    b = load_bundle(packaged_default_bundle())
    batch = prepare_batch(crops, b.contract)
    chunked = load_backend(b, threads=1)
    whole = load_backend(b, threads=1)
    whole.max_batch = None
    assert chunked.max_batch == 16 and len(batch) > 2 * chunked.max_batch
    probs = chunked.predict(batch)
    assert chunked.batch_size <= chunked.max_batch  # the interpreter never took more than a chunk
    np.testing.assert_array_equal(probs, whole.predict(batch))
    assert whole.batch_size == len(batch)


def test_kept_tensors_are_those_of_the_whole_batch(bccd):
    """`train adapt` reads the classifier's input features of a batch after `predict`: with
    `keep_tensors` a batch is never split, so the tensor holds every image of it."""
    from hemaedge.edge.backends import LiteRTBackend
    from hemaedge.edge.defaults import packaged_default_bundle

    frame = read_image_rgb(bccd / "JPEGImages" / "BloodImage_00011.jpg")
    crops = [frame[y:y + 120, x:x + 120] for y in range(0, 360, 60) for x in range(0, 480, 80)]  # 36 crops
    b = load_bundle(packaged_default_bundle())
    be = LiteRTBackend(b, b.model_path, threads=1, keep_tensors=True)
    assert be.max_batch is None
    be.predict(prepare_batch(crops, b.contract))
    assert be.batch_size == len(crops)
