"""Each converter on small real models trained on a slice of BloodMNIST-128: TFLite fp32 / fp16 /
dynamic / full-integer int8 (uint8 and int8 I/O), ONNX (tf2onnx), ONNX QDQ int8, skl2onnx heads
and a backbone + head merged into one ONNX bundle."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from export_helpers import CLASSES, calibration_dir, eval_tree, split_files, tiny_model  # noqa: E402
from hemaedge.edge.bundle import load_bundle  # noqa: E402
from hemaedge.edge.preprocess import prepare_batch, read_image_rgb  # noqa: E402
from hemaedge.export.calibration import load_calibration  # noqa: E402
from hemaedge.export.parity import predict_artifact  # noqa: E402
from hemaedge.export.source import load_source  # noqa: E402


@pytest.fixture(scope="module")
def probe(bloodmnist128):
    files, labels = split_files(bloodmnist128, "val", 4)
    return [read_image_rgb(f) for f in files], labels


@pytest.fixture(scope="module")
def source(bloodmnist128):
    """The EfficientNet-like tiny model (BN + ReLU6 + depthwise + swish)."""
    return load_source(tiny_model(bloodmnist128, "effnet"))


@pytest.fixture(scope="module", params=["conv", "effnet"])
def any_source(request, bloodmnist128):
    return load_source(tiny_model(bloodmnist128, request.param))


@pytest.fixture(scope="module")
def calib_images(bloodmnist128):
    return load_calibration(calibration_dir(bloodmnist128))


def _tflite_probs(tmp_path, res, images, name="m.tflite"):
    path = tmp_path / name
    path.write_bytes(res.data)
    return predict_artifact(path, images, classes=CLASSES, contract=res.contract, output=res.output)


def test_source_reads_sidecar_and_model_shape(source):
    assert source.classes == CLASSES
    assert source.contract.size == 32 and source.contract.scaling == "raw" and source.contract.dtype == "float32"
    assert source.output_kind == "probabilities"


@pytest.mark.parametrize("quant,tol", [("fp32", 1e-4), ("fp16", 5e-3), ("dynamic", 5e-2)])
def test_tflite_float_variants_match_keras(tmp_path, source, probe, quant, tol):
    from hemaedge.export.tflite import convert_tflite

    images, _ = probe
    res = convert_tflite(source.model, source.contract, quant)
    assert res.contract.dtype == "float32" and res.output["dtype"] == "float32"
    ref = source.predict(prepare_batch(images, source.contract))
    got = _tflite_probs(tmp_path, res, images)
    assert np.abs(got - ref).max() < tol
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_tflite_full_integer_uint8_io_is_exact_on_raw_pixels(tmp_path, any_source, probe, calib_images):
    source = any_source
    from ai_edge_litert.interpreter import Interpreter

    from hemaedge.export.tflite import convert_tflite

    images, _ = probe
    res = convert_tflite(source.model, source.contract, "int8", calib_images=calib_images, int8_io="uint8")
    # Raw 0..255 pixels into a uint8 input: scale 1, zero point 0, i.e. the pixels themselves.
    assert (res.contract.dtype, res.contract.quant_scale, res.contract.quant_zero_point) == ("uint8", 1.0, 0)
    assert res.output["dtype"] == "uint8" and res.output["quant_scale"] > 0
    assert res.settings["calibration_images"] == len(calib_images)
    interp = Interpreter(model_content=res.data)
    kinds = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    assert kinds <= {"uint8", "int8", "int32"}  # integer-only: no float tensor anywhere
    x = prepare_batch(images, res.contract)
    np.testing.assert_array_equal(x, prepare_batch(images, source.contract).astype(np.uint8))
    ref = source.predict(prepare_batch(images, source.contract))
    got = _tflite_probs(tmp_path, res, images)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75
    assert np.abs(got - ref).max() < 0.25


def test_tflite_int8_io_and_float_output(tmp_path, source, probe, calib_images):
    from hemaedge.export.tflite import convert_tflite

    images, _ = probe
    res = convert_tflite(source.model, source.contract, "int8", calib_images=calib_images[:8], int8_io="int8",
                         int8_output="float32")
    assert (res.contract.dtype, res.contract.quant_scale, res.contract.quant_zero_point) == ("int8", 1.0, -128)
    assert res.output["dtype"] == "float32" and res.output["quant_scale"] is None
    got = _tflite_probs(tmp_path, res, images)
    assert np.allclose(got.sum(1), 1.0, atol=0.05)


def test_tflite_selective_float_fallback(tmp_path, bloodmnist128, probe, calib_images):
    from ai_edge_litert.interpreter import Interpreter

    from hemaedge.export.tflite import convert_tflite

    src = load_source(tiny_model(bloodmnist128, "effnet"))
    res = convert_tflite(src.model, src.contract, "int8", calib_images=calib_images[:8], int8_io="float32",
                         denylisted_ops=["MEAN", "SOFTMAX"])
    assert res.settings["float_fallback_ops"] == ["MEAN", "SOFTMAX"]
    interp = Interpreter(model_content=res.data)
    ops = [d["op_name"] for d in interp._get_ops_details()]
    assert "DEQUANTIZE" in ops and "CONV_2D" in ops
    # the pooling and softmax run on float tensors, the convolutions on int8 ones
    details = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    by_op = {d["op_name"]: details[d["inputs"][0]] for d in interp._get_ops_details()}
    assert by_op["MEAN"] == "float32" and by_op["SOFTMAX"] == "float32" and by_op["DEPTHWISE_CONV_2D"] == "int8"
    got = _tflite_probs(tmp_path, res, probe[0])
    ref = src.predict(prepare_batch(probe[0], src.contract))
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75


def test_tflite_int16x8(tmp_path, source, probe, calib_images):
    from ai_edge_litert.interpreter import Interpreter

    from hemaedge.export.tflite import convert_tflite

    res = convert_tflite(source.model, source.contract, "int16x8", calib_images=calib_images[:8])
    kinds = {np.dtype(t["dtype"]).name for t in Interpreter(model_content=res.data).get_tensor_details()}
    assert "int16" in kinds and res.contract.dtype == "float32" and res.settings["activations"] == "int16"
    ref = source.predict(prepare_batch(probe[0], source.contract))
    assert (_tflite_probs(tmp_path, res, probe[0]).argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_int8_without_calibration_is_refused(source):
    from hemaedge.edge.cli_support import UserError
    from hemaedge.export.tflite import convert_tflite

    with pytest.raises(UserError, match="calibration"):
        convert_tflite(source.model, source.contract, "int8", calib_images=[])


def test_onnx_and_qdq_int8(tmp_path, source, probe, calib_images):
    import onnx

    from hemaedge.export.onnx_export import keras_to_onnx, onnx_opset, quantize_onnx_int8

    images, _ = probe
    data = keras_to_onnx(source.model, source.contract, opset=15)
    assert onnx_opset(data) == 15
    (tmp_path / "m.onnx").write_bytes(data)
    out = {"kind": "probabilities"}
    ref = source.predict(prepare_batch(images, source.contract))
    got = predict_artifact(tmp_path / "m.onnx", images, classes=CLASSES, contract=source.contract, output=out)
    assert np.abs(got - ref).max() < 1e-4
    q, settings = quantize_onnx_int8(data, source.contract, calib_images[:16])
    assert settings["calibration_images"] == 16 and settings["quant"] == "int8-qdq"
    ops = {n.op_type for n in onnx.load_from_string(q).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    (tmp_path / "q.onnx").write_bytes(q)
    got_q = predict_artifact(tmp_path / "q.onnx", images, classes=CLASSES, contract=source.contract, output=out)
    assert (got_q.argmax(1) == ref.argmax(1)).mean() >= 0.75


# ----------------------------------------------------------------------------- classical heads


@pytest.fixture(scope="module")
def backbone_and_features(bloodmnist128, tmp_path_factory):
    """A feature extractor cut from the tiny conv net, and its features on a train slice."""
    import keras

    src = load_source(tiny_model(bloodmnist128, "conv"))
    backbone = keras.Model(src.model.inputs, src.model.layers[-2].output)
    def features(split, n):
        files, y = split_files(bloodmnist128, split, n)
        return backbone.predict(prepare_batch([read_image_rgb(f) for f in files], src.contract), verbose=0), y

    feats, y = features("train", 20)
    held_out, _ = features("val", 3)  # never-seen vectors: no zero-distance ties for KNN
    d = tmp_path_factory.mktemp("hybrid")
    path = d / "backbone.keras"
    backbone.save(path)
    return path, feats, y, held_out


def _heads():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {"svm": make_pipeline(StandardScaler(), SVC(C=10, gamma="scale")),
            "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(9)),
            "knn-distance": make_pipeline(StandardScaler(), KNeighborsClassifier(9, weights="distance")),
            "rf": RandomForestClassifier(20, random_state=0)}


@pytest.mark.parametrize("name", ["svm", "knn", "knn-distance", "rf"])
def test_skl2onnx_head_file_matches_sklearn(tmp_path, backbone_and_features, name):
    import onnxruntime as ort
    import skops.io as sio

    from hemaedge.export.onnx_head import export_head_file, head_scores

    _, feats, y, held_out = backbone_and_features
    head = _heads()[name].fit(feats, y)
    sio.dump(head, tmp_path / f"{name}.skops")
    out = export_head_file(tmp_path / f"{name}.skops", tmp_path / f"{name}.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    labels, scores = sess.run(None, {"features": held_out.astype(np.float32)})
    np.testing.assert_array_equal(labels.reshape(-1), head.predict(held_out))
    ref, _ = head_scores(head, held_out)
    assert np.abs(scores - ref).max() < 1e-3


def test_pickle_heads_are_refused(tmp_path):
    from hemaedge.edge.cli_support import UserError
    from hemaedge.export.onnx_head import load_head

    (tmp_path / "head.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(UserError, match="pickles are not accepted"):
        load_head(tmp_path / "head.pkl")


def test_backbone_plus_head_bundle(tmp_path, bloodmnist128, backbone_and_features):
    import json

    import skops.io as sio

    from hemaedge.export.onnx_head import export_hybrid_bundle, load_hybrid_source
    from hemaedge.export.pipeline import ParityData

    bb_path, feats, y, _ = backbone_and_features
    head = _heads()["svm"].fit(feats, y)
    sio.dump(head, tmp_path / "svm.skops")
    (tmp_path / "svm.json").write_text(json.dumps({"classes": CLASSES, "input": {"size": 32}}))
    src = load_hybrid_source(bb_path, tmp_path / "svm.skops")
    assert src.output_kind == "logits"  # SVC without probability: decision scores
    row = export_hybrid_bundle(src, tmp_path / "bundle", parity_data=ParityData(eval_tree(bloodmnist128), CLASSES, limit=16),
                               max_drop=1.0, log=lambda s: None)
    assert row["agreement"] == 1.0 and row["status"] == "passed"
    b = load_bundle(tmp_path / "bundle")
    assert b.backend == "onnx" and b.output["kind"] == "logits" and b.manifest["source"]["head"] == "SVC"


def test_weighted_ensemble_exports(tmp_path, bloodmnist128, probe, calib_images):
    """The training code's ensemble (one Keras model: members -> weighted sum) converts like any model."""
    from hemaedge.export.tflite import convert_tflite
    from hemaedge.train.ensemble import build_ensemble_model

    a, b = (load_source(tiny_model(bloodmnist128, k)) for k in ("conv", "effnet"))
    ens = build_ensemble_model([a.model, b.model], [0.3, 0.7])
    images, _ = probe
    x = prepare_batch(images, a.contract)
    ref = ens.predict(x, verbose=0)
    np.testing.assert_allclose(ref, 0.3 * a.predict(x) + 0.7 * b.predict(x), atol=1e-5)
    fp32 = convert_tflite(ens, a.contract, "fp32")
    assert np.abs(_tflite_probs(tmp_path, fp32, images, "f.tflite") - ref).max() < 1e-4
    int8 = convert_tflite(ens, a.contract, "int8", calib_images=calib_images[:8])
    assert int8.contract.quant_scale == 1.0
    assert (_tflite_probs(tmp_path, int8, images, "i.tflite").argmax(1) == ref.argmax(1)).mean() >= 0.75
