"""Bounded logits for full-integer int8 (export/bounded_logits.py): the rewritten classifier end is
the same softmax in float, it is found in plain / Softmax-layer / nested (fused ANN) models, and it
keeps int8 from losing close calls when some classes' logits are huge — the default model's case."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from export_helpers import calibration_dir, split_files, tiny_model  # noqa: E402
from hemaedge.edge.preprocess import InputContract, output_probabilities, prepare_batch, read_image_rgb  # noqa: E402
from hemaedge.export import bounded_logits as bl  # noqa: E402
from hemaedge.export.calibration import calibration_batches, load_calibration  # noqa: E402
from hemaedge.export.source import SourceModel, load_source  # noqa: E402


@pytest.fixture(scope="module")
def images(bloodmnist128):
    files, labels = split_files(bloodmnist128, "val", 12)
    return [read_image_rgb(f) for f in files]


@pytest.fixture(scope="module")
def calib_images(bloodmnist128):
    return load_calibration(calibration_dir(bloodmnist128))


def _float_probs(model, x, logit_scale=None):
    out = np.asarray(model.predict(x, verbose=0))
    return out if logit_scale is None else output_probabilities(out, {"kind": "logits", "logit_scale": logit_scale})


def test_bounded_end_is_the_same_softmax_in_float(bloodmnist128, images, calib_images):
    source = load_source(tiny_model(bloodmnist128, "effnet"))
    bounded, info = bl.bound_for_int8(source.model, calibration_batches(calib_images, source.contract, 16))
    assert info["bound"] >= bl.MIN_BOUND and info["logit_scale"] == pytest.approx(info["bound"] / 3)
    x = prepare_batch(images, source.contract)
    ref = _float_probs(source.model, x)
    got = _float_probs(bounded, x, info["logit_scale"])
    raw = np.asarray(bounded.predict(x, verbose=0))
    assert raw.min() >= 0 and raw.max() <= 6  # the RELU6 range the int8 tensor gets
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_choose_bound_covers_the_runner_up_not_the_winner():
    centred = np.array([[300.0, 2.0, -1.0, -301.0], [3.0, 2.8, -2.9, -2.9], [0.5, 0.4, -0.4, -0.5]])
    info = bl.choose_bound(centred)
    assert info["bound"] == 5.0  # ceil(1.5 x 2.8): the largest runner-up logit, not 300
    assert info["calibration_top_clipped"] == pytest.approx(1 / 3, abs=1e-3)
    assert bl.choose_bound(np.zeros((4, 3)))["bound"] == bl.MIN_BOUND


def _head_models():
    import keras
    from keras import layers

    inp = keras.Input((4,))
    plain = keras.Model(inp, layers.Dense(3, activation="softmax")(inp))
    inp2 = keras.Input((4,))
    two = keras.Model(inp2, layers.Softmax()(layers.Dense(3)(inp2)))
    hin = keras.Input((6,))
    h = layers.Dense(5, activation="relu")(hin)
    head = keras.Model(hin, layers.Dense(3, activation="softmax")(h), name="ann_head")
    inp3 = keras.Input((4,))
    nested = keras.Model(inp3, head(layers.Dense(6)(inp3)))  # like the fused backbone + ANN
    inp4 = keras.Input((4,))
    logits = keras.Model(inp4, layers.Dense(3)(inp4))
    return plain, two, nested, logits


def test_softmax_end_is_found_in_plain_softmax_layer_and_nested_models():
    plain, two, nested, logits = _head_models()
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32) * 3
    for model in (plain, two, nested):
        assert bl.softmax_dense_end(model) is not None
        centred = bl.logits_model(model, (np.full(3, 1 / 3), 0.0))  # minus the row mean
        c = np.asarray(centred.predict(x, verbose=0))
        np.testing.assert_allclose(c.sum(1), 0, atol=1e-4)  # centred: the mean logit is removed
        bound = bl.choose_bound(c)["bound"]
        got = _float_probs(bl.bounded_logits_model(model, bound, (np.full(3, 1 / 3), 0.0)), x, bound / 3)
        ref = _float_probs(model, x)
        inside = np.abs(c).max(1) <= bound
        np.testing.assert_allclose(got[inside], ref[inside], atol=1e-4)
        assert (got.argmax(1) == ref.argmax(1)).all()
    assert bl.softmax_dense_end(logits) is None
    model, reason = bl.bound_for_int8(logits, [x])
    assert model is None and "softmax" in reason


def _with_huge_logits(model, x):
    """A copy of the tiny trained model whose class-0 logit climbs to ~300 with one (non-negative,
    skewed) pooled feature while the other classes keep their small, close logits: the shape of the
    default model's logits (saturated features on lymphocytes: ~500; other cells a few units apart)."""
    import keras

    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    dense, feats = bl.softmax_dense_end(twin)
    f = np.asarray(keras.Model(twin.inputs, feats).predict(x, verbose=0))
    j = int(f.std(0).argmax())
    w, b = dense.get_weights()
    w[:, 0] = 0.0
    w[j, 0] = 300.0 / (f[:, j].max() - np.median(f[:, j]) + 1e-6)
    b[0] = -w[j, 0] * np.median(f[:, j])  # class 0 wins on a good part of the images
    dense.set_weights([w, b])
    return twin


def test_int8_keeps_close_calls_when_some_logits_are_huge(tmp_path, bloodmnist128, images, calib_images):
    """Plain full-integer int8 of such a model loses agreement; the bounded end keeps it."""
    from hemaedge.export.parity import predict_artifact
    from hemaedge.export.tflite import convert_tflite

    source = load_source(tiny_model(bloodmnist128, "effnet"))
    contract = source.contract
    calib_x = prepare_batch(calib_images, contract)
    model = _with_huge_logits(source.model, calib_x)
    ref = _float_probs(model, prepare_batch(images, contract))
    assert 0.1 < (ref.argmax(1) == 0).mean() < 0.9

    def agreement(m, kind, scale=None):
        res = convert_tflite(m, contract, "int8", calib_images=calib_images, output_kind=kind)
        path = tmp_path / f"{kind}.tflite"
        path.write_bytes(res.data)
        out = dict(res.output, logit_scale=scale) if scale else res.output
        probs = predict_artifact(path, images, classes=source.classes, contract=res.contract, output=out)
        return float((probs.argmax(1) == ref.argmax(1)).mean())

    plain = agreement(model, "probabilities")
    bounded, info = bl.bound_for_int8(model, calibration_batches(calib_images, contract, 16))
    kept = agreement(bounded, "logits", info["logit_scale"])
    assert kept >= 0.9
    assert kept - plain >= 0.05, (plain, kept)


def test_pipeline_records_bound_and_device_softmax(tmp_path, bloodmnist128, calib_images, images):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.export.pipeline import export_one

    source = load_source(tiny_model(bloodmnist128, "effnet"))
    row = export_one("tflite-int8", source, tmp_path / "b", calib_images=calib_images, log=lambda *_: None)
    bundle = load_bundle(row["bundle"])
    out, settings = bundle.manifest["output"], bundle.manifest["export"]
    assert out["kind"] == "logits" and out["logit_scale"] == pytest.approx(settings["bounded_logits"]["bound"] / 3)
    assert settings["bounded_logits"]["applied"] is True
    probs = load_backend(bundle).predict(prepare_batch(images, bundle.contract))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    ref = source.predict(prepare_batch(images, source.contract))
    assert (probs.argmax(1) == ref.argmax(1)).mean() >= 0.9
    off = export_one("tflite-int8", source, tmp_path / "plain", calib_images=calib_images, bound_logits=False,
                     log=lambda *_: None)
    assert load_bundle(off["bundle"]).manifest["output"]["kind"] == "probabilities"


def test_logit_models_are_left_alone(tmp_path, calib_images):
    from hemaedge.export.pipeline import export_one

    import keras
    from keras import layers

    inp = keras.Input((32, 32, 3), name="image")
    model = keras.Model(inp, layers.Dense(8)(layers.GlobalAveragePooling2D()(layers.Rescaling(1 / 255.0)(inp))))
    source = SourceModel(path=tmp_path / "m.keras", model=model, classes=[str(i) for i in range(8)],
                         contract=InputContract(size=32, preprocess="rgb", scaling="raw"), sha256="0" * 64,
                         output_kind="logits")
    row = export_one("tflite-int8", source, tmp_path / "b", calib_images=calib_images[:8], log=lambda *_: None)
    from hemaedge.edge.bundle import load_bundle

    manifest = load_bundle(row["bundle"]).manifest
    assert "logit_scale" not in manifest["output"] and "bounded_logits" not in manifest["export"]


def test_onnx_qdq_int8_gets_the_bounded_end_too(tmp_path, bloodmnist128, calib_images, images):
    pytest.importorskip("tf2onnx")
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.export.pipeline import export_one

    source = load_source(tiny_model(bloodmnist128, "effnet"))
    row = export_one("onnx-int8", source, tmp_path / "b", calib_images=calib_images, log=lambda *_: None)
    bundle = load_bundle(row["bundle"])
    assert bundle.manifest["output"]["kind"] == "logits" and bundle.manifest["output"]["logit_scale"] > 0
    probs = load_backend(bundle).predict(prepare_batch(images, bundle.contract))
    ref = source.predict(prepare_batch(images, source.contract))
    assert (probs.argmax(1) == ref.argmax(1)).mean() >= 0.9
