"""Colour normalisation (edge.preprocess): declared in the input contract, estimated from the
image's background and red cells, mapping another microscope's colours onto the training set's."""
from __future__ import annotations

import json

import numpy as np
import pytest

from hemaedge.edge.preprocess import (InputContract, apply_preprocess, colour_anchors, normalize_colour,
                                      read_image_rgb, reference_anchors, resize)

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SPEC = {"method": "lab-anchors", "background": [234.0, 133.0, 143.0], "cells": [183.0, 142.5, 133.0]}


def test_old_contracts_load_and_write_the_same():
    old = {"size": 128, "preprocess": "clahe", "scaling": "raw", "color_order": "RGB", "dtype": "float32",
           "quant_scale": None, "quant_zero_point": None, "clahe_clip": 2.0, "clahe_tiles": 8}
    c = InputContract.from_dict(old)
    assert c.normalize is None and c.to_dict() == old  # no new key in manifests without normalisation


def test_normalize_field_round_trips_through_json_and_is_validated():
    c = InputContract(size=64, normalize=SPEC)
    back = InputContract.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c and back.to_dict()["normalize"] == SPEC
    with pytest.raises(ValueError, match="method"):
        InputContract(normalize={"method": "macenko-he"})
    with pytest.raises(ValueError, match="background"):
        InputContract(normalize={"method": "lab-anchors", "background": [1, 2], "cells": [1, 2, 3]})


@pytest.fixture(scope="module")
def pbc_crops(bloodmnist128):
    files = sorted((bloodmnist128 / "val").glob("*/*.jpg"))[::80]
    return np.stack([read_image_rgb(f) for f in files])


def test_anchors_find_background_and_red_cells(pbc_crops, bccd):
    ref = reference_anchors(pbc_crops)
    bg, rbc = np.array(ref["background"]), np.array(ref["cells"])
    assert bg[0] > rbc[0] + 20  # the background is lighter than the red cells
    assert rbc[1] > bg[1] + 4   # and red cells are redder (Lab a*)
    frame = read_image_rgb(bccd / "JPEGImages" / "BloodImage_00011.jpg")
    a = colour_anchors(frame)
    assert a[0, 0] > a[1, 0] + 15 and a[1, 1] > a[0, 1] + 4  # the same semantics on another microscope


def _other_microscope(img):
    """A bluish, dimmer, weaker-stained version of a PBC crop (a different lamp, camera and stain)."""
    x = img.astype(np.float32)
    x = 255.0 * (x / 255.0) ** np.array([0.8, 1.0, 0.9])  # weaker stain in R and B
    x = x * np.array([0.85, 0.92, 1.05]) - 10.0          # cool white balance, dimmer lamp
    return np.clip(x, 0, 255).astype(np.uint8)


def test_normalisation_undoes_a_change_of_microscope(pbc_crops):
    ref = reference_anchors(pbc_crops)
    shifted = np.stack([_other_microscope(i) for i in pbc_crops])
    back = np.stack([normalize_colour(i, ref) for i in shifted])
    err_shifted = np.abs(shifted.astype(int) - pbc_crops).mean()
    err_back = np.abs(back.astype(int) - pbc_crops).mean()
    assert err_back < 0.5 * err_shifted  # most of the colour change is removed
    anchors_back = np.median(np.stack([colour_anchors(i) for i in back]), axis=0)
    np.testing.assert_allclose(anchors_back, [ref["background"], ref["cells"]], atol=6)


def test_contract_applies_normalisation_before_clahe(pbc_crops):
    img = pbc_crops[0]
    c = InputContract(size=64, preprocess="clahe", normalize=SPEC)
    plain = InputContract(size=64, preprocess="clahe")
    from hemaedge.edge.preprocess import clahe

    expected = clahe(normalize_colour(resize(img, 64), SPEC), 2.0, 8)
    assert np.array_equal(apply_preprocess(img, c), expected)
    assert not np.array_equal(apply_preprocess(img, plain), expected)


def test_blank_and_one_tone_images_pass_unharmed():
    grey = np.full((40, 40, 3), 200, np.uint8)
    out = normalize_colour(grey, SPEC)
    assert out.shape == grey.shape and out.dtype == np.uint8
    black = np.zeros((40, 40, 3), np.uint8)
    assert normalize_colour(black, SPEC).shape == black.shape


def test_histogram_median_equals_numpy_median():
    from hemaedge.edge.preprocess import _group_medians

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 4097):
        v = rng.integers(0, 256, (n, 3)).astype(np.uint8)
        one_group = _group_medians(v.T, np.zeros(n, np.intp), 1)[0]  # channel planes (3, N)
        assert np.array_equal(one_group, np.median(v, axis=0).astype(np.float32))


def test_group_medians_equal_numpy_medians_per_group():
    from hemaedge.edge.preprocess import _group_medians

    rng = np.random.default_rng(1)
    for n in (3, 8, 101, 4096):
        v = rng.integers(0, 256, (n, 3)).astype(np.uint8)
        g = rng.integers(-1, 2, n)
        g[:2] = [0, 1]  # both groups present
        got = _group_medians(v.T, g, 2)  # channel planes (3, N)
        for k in (0, 1):
            assert np.array_equal(got[k], np.median(v[g == k], axis=0).astype(np.float32))


def test_anchors_reuse_a_given_lab_image_exactly():
    """normalize_colour converts the crop to Lab once and hands it to colour_anchors."""
    import cv2

    frame = read_image_rgb(SAMPLES / "bccd" / "BloodImage_00011.jpg")
    for img in (frame, cv2.resize(frame[50:300, 100:350], (128, 128))):
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        assert np.array_equal(colour_anchors(img), colour_anchors(img, lab=lab))
