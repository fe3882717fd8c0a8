"""The pixel contract shared by training, export and the device."""
import numpy as np
import pytest

from hemaedge.edge import preprocess as pp


def test_to_rgb_converts_every_supported_layout():
    gray = np.full((5, 7), 200, np.uint8)
    assert pp.to_rgb_uint8(gray).shape == (5, 7, 3)
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = 255
    assert pp.to_rgb_uint8(rgba)[0, 0].tolist() == [255, 0, 0]
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    assert pp.to_rgb_uint8(bgr, "BGR")[0, 0].tolist() == [0, 0, 255]
    deep = np.full((3, 3, 3), 65535, np.uint16)
    assert pp.to_rgb_uint8(deep).max() == 255 and pp.to_rgb_uint8(deep).dtype == np.uint8


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8),
                                 np.zeros((4, 4, 3), np.int64), np.zeros((2, 2, 2, 2), np.uint8)])
def test_to_rgb_rejects_what_it_cannot_convert(bad):
    with pytest.raises(pp.FrameFormatError):
        pp.to_rgb_uint8(bad)


def test_read_image_names_the_broken_file(tmp_path):
    broken = tmp_path / "cell.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(pp.FrameFormatError, match="cell.jpg"):
        pp.read_image_rgb(broken)


def test_scalings_match_their_definitions():
    px = np.array([[[[0, 127, 255]]]], np.uint8)
    assert pp.scale_pixels(px, "raw").tolist() == [[[[0.0, 127.0, 255.0]]]]
    assert np.allclose(pp.scale_pixels(px, "lite"), (px - 127.0) / 128.0)
    assert np.allclose(pp.scale_pixels(px, "unit"), px / 255.0)
    caffe = pp.scale_pixels(px, "caffe")  # BGR order, mean subtracted
    assert np.allclose(caffe[0, 0, 0], [255 - 103.939, 127 - 116.779, 0 - 123.68])


def test_quantize_round_trip_is_within_half_a_step():
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    q = pp.quantize(x, 0.05, -3, "int8")
    assert q.dtype == np.int8
    assert np.abs(pp.dequantize(q, 0.05, -3) - x).max() <= 0.025 + 1e-6


def test_prepare_batch_resizes_and_quantizes_exactly():
    imgs = [np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8) for _ in range(3)]
    contract = pp.InputContract(size=32, dtype="uint8", quant_scale=1.0, quant_zero_point=0)
    batch = pp.prepare_batch(imgs, contract)
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.uint8
    as_float = pp.prepare_batch(imgs, pp.InputContract(size=32))
    assert np.array_equal(batch.astype(np.float32), as_float)  # raw pixels: uint8 input is exact
    # the uint8 shortcut (no float round trip) gives what the general quantisation gives, in both orders
    bgr = pp.InputContract(size=32, dtype="uint8", quant_scale=1.0, quant_zero_point=0, color_order="BGR")
    got = pp.prepare_batch(imgs, bgr)
    assert got.flags.c_contiguous and np.array_equal(got, pp.quantize(as_float[..., ::-1], 1.0, 0, "uint8"))


def test_contract_round_trip_and_validation():
    c = pp.InputContract(size=96, preprocess="clahe", scaling="imagenet")
    assert pp.InputContract.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="preprocessing mode"):
        pp.InputContract(preprocess="sharpen")
    with pytest.raises(ValueError, match="unknown fields"):
        pp.InputContract.from_dict({**c.to_dict(), "gamma": 2})


def test_given_colour_anchors_replace_the_measured_ones(pbc_raw_val):
    """`preprocess_batch(..., anchors=)`: the crop's own measured anchors give the very pixels of the
    default path; a frame's anchors give other pixels (the per-run study compares the two)."""
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.defaults import packaged_default_bundle

    contract = load_bundle(packaged_default_bundle()).contract
    field = pp.read_image_rgb(pbc_raw_val / "val_00000.jpg")
    crops = [field[60:260, 60:260], field[100:300, 40:240]]
    own = np.stack([pp.colour_anchors(pp.resize(c, contract.size)) for c in crops])
    np.testing.assert_array_equal(pp.preprocess_batch(crops, contract, own), pp.preprocess_batch(crops, contract))
    np.testing.assert_array_equal(pp.apply_preprocess(crops[0], contract, own[0]), pp.apply_preprocess(crops[0], contract))
    frame = np.stack([pp.colour_anchors(field)] * 2)
    assert not np.array_equal(pp.preprocess_batch(crops, contract, frame), pp.preprocess_batch(crops, contract))
