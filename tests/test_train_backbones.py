"""Backbones: the torch-free Lite weights reader, the Lite conversion (real ImageNet weights
classify real photos), input scaling inside the graph, and refusal of unverified weights."""
from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

pytest.importorskip("keras")

from hemaedge.edge.preprocess import resize, scale_pixels  # noqa: E402
from hemaedge.train import backbones  # noqa: E402
from hemaedge.train.backbones import WeightsError, build_backbone  # noqa: E402
from hemaedge.train.lite_weights import UnsafeCheckpointError, load_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    old = os.environ.get("HEMAEDGE_CACHE")
    path = tmp_path_factory.mktemp("hemaedge_cache")
    os.environ["HEMAEDGE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HEMAEDGE_CACHE", None)
    else:
        os.environ["HEMAEDGE_CACHE"] = old


def _lite0_pth():
    # The weights package is pinned in the same extra as Keras (hemaedge[train]): when Keras is
    # here and the weights are not, the install is broken, and that is a failure, not a skip.
    try:
        return backbones.lite_pth_path("efficientnet-lite0")
    except WeightsError as exc:
        pytest.fail(f"broken train install: {exc}")


# ----------------------------------------------------------------------------- .pth reader


def test_reads_real_lite_state_dict_without_torch():
    state = load_state_dict(_lite0_pth())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert np.isfinite(state["_bn1.running_var"]).all() and (state["_bn1.running_var"] > 0).all()
    # The Lite architecture derived from the variant parameters matches the file, block by block.
    blocks = backbones.lite_blocks("efficientnet-lite0")
    for i, b in enumerate(blocks):
        dw = state[f"_blocks.{i}._depthwise_conv.weight"]
        assert dw.shape == (b["cin"] * b["expand"], 1, b["kernel"], b["kernel"])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def _legacy_file(payload) -> bytes:
    out = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(head, out, protocol=2)
    pickle.dump(payload, out, protocol=2)
    return out.getvalue()


def test_refuses_pickled_code_legacy_format(tmp_path):
    bad = tmp_path / "evil.pth"
    bad.write_bytes(_legacy_file({"w": _Evil()}))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_state_dict(bad)


def test_refuses_pickled_code_zip_format(tmp_path):
    bad = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(bad)


def test_refuses_truncated_file(tmp_path):
    data = _lite0_pth().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeCheckpointError, match="truncated|readable"):
        load_state_dict(cut)


# ----------------------------------------------------------------------------- Lite conversion


def _photos():
    from sklearn.datasets import load_sample_images

    images = dict(zip(("china", "flower"), load_sample_images().images))
    try:
        import skimage.data as sk

        images.update(chelsea=sk.chelsea(), coffee=sk.coffee(), rocket=sk.rocket())
    except ImportError:
        pass
    return images


def _center_square(img, size):
    h, w = img.shape[:2]
    s = min(h, w)
    return resize(img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s], size)


# What a correct ImageNet classifier must put in its top 5 for each photo.
EXPECTED_TOP5 = {
    "china": {"palace", "monastery", "bell cote", "castle", "pagoda", "stupa", "boathouse"},
    "chelsea": {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "lynx"},
    "coffee": {"espresso", "cup", "coffee mug"},
    "rocket": {"missile", "projectile", "space shuttle"},
}


def test_converted_lite0_classifies_photos(cache):
    names = pytest.importorskip("skl2onnx.tutorial.imagenet_classes").class_names
    model, digest = backbones.lite_classifier("efficientnet-lite0", input_size=224)
    assert digest.startswith("57934424")  # the file name's hash prefix
    photos = _photos()
    x = np.stack([_center_square(img, 224) for img in photos.values()]).astype(np.float32)
    proba = np.asarray(model(x, training=False))  # eager: no graph tracing for 5 images
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-4)
    for name, row in zip(photos, proba):
        top5 = {names[i].split(",")[0] for i in np.argsort(row)[::-1][:5]}
        if name in EXPECTED_TOP5:
            assert top5 & EXPECTED_TOP5[name], f"{name}: top-5 {top5}"
    if "coffee" in photos:
        assert names[int(proba[list(photos).index("coffee")].argmax())].startswith("espresso")
    # The conversion was cached as .weights.h5 (later builds read HDF5, not the pickle).
    assert len(list((cache / "weights").glob("efficientnet-lite0-*.weights.h5"))) == 1


def test_lite_backbone_features_and_info(cache):
    model, info = build_backbone("efficientnet-lite0", "imagenet", 64)
    # built from the cached conversion (or converted once and cached now)
    assert len(list((cache / "weights").glob("efficientnet-lite0-*.weights.h5"))) == 1
    assert info["feature_dim"] == 1280 and info["input_size"] == 64
    assert "ImageNet" in info["weights"] and "sha256 579344248a93" in info["weights"]
    feats = np.asarray(model(np.full((2, 64, 64, 3), 127.0, np.float32), training=False))
    assert feats.shape == (2, 1280) and np.isfinite(feats).all()
    # converted statistics, not the fresh-layer defaults (mean 0, variance 1)
    assert not np.allclose(model.get_layer("head_bn").get_weights()[2], 0.0)


# ----------------------------------------------------------------------------- Keras applications


def test_resnet50_caffe_scaling_inside_the_graph():
    import keras

    model, info = build_backbone("resnet50", None, 32)
    assert info["feature_dim"] == 2048 and info["weights"].startswith("random init")
    layer = model.get_layer("caffe_bgr_mean")
    probe = keras.Model(model.input, layer.output)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    got = np.asarray(probe(rgb.astype(np.float32)))
    np.testing.assert_allclose(got, scale_pixels(rgb, "caffe"), atol=1e-4)


def test_local_weights_file_with_wrong_hash_is_refused(tmp_path):
    fake = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    fake.write_bytes(b"not the published weights")
    with pytest.raises(WeightsError, match="published hash .*refusing"):
        build_backbone("resnet50", str(fake), 64)
    assert backbones.keras_notop_hash("efficientnetv2b0") == "893217f2bb855e2983157299931e43ff"


def test_unknown_backbone_and_bad_size():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16", None, 64)
    with pytest.raises(ValueError, match="out of range"):
        build_backbone("smallcnn", None, 8)
    with pytest.raises(WeightsError):
        build_backbone("smallcnn", "imagenet", 32)
