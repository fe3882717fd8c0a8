"""Test-time views (edge/tta.py): flipped/rotated views of each cell's prepared crop, averaged in
probability, on real crops with the packaged default bundle."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
from hemaedge.edge.tta import DIHEDRAL, FLIPS, bundle_views, check_views, dihedral_view, predict_views

DEFAULT = Path(__file__).resolve().parents[1] / "src" / "hemaedge" / "models" / "default"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def default_bundle():
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle

    b = load_bundle(DEFAULT)
    return b, load_backend(b, threads=2)


@pytest.fixture(scope="module")
def val_crops(bloodmnist128):
    return [read_image_rgb(sorted((bloodmnist128 / "val" / c).glob("*.jpg"))[0])
            for c in ("eosinophil", "lymphocyte", "neutrophil")]


def test_the_eight_views_are_the_distinct_symmetries_of_a_real_crop(val_crops):
    img = val_crops[0]
    views = [dihedral_view(img, k) for k in DIHEDRAL]
    assert np.array_equal(views[0], img)
    assert len({v.tobytes() for v in views}) == 8  # a real cell is not symmetric
    assert np.array_equal(dihedral_view(img, 2), img[::-1, ::-1]) and np.array_equal(dihedral_view(img, 4), img[:, ::-1])
    batch = np.stack(val_crops)
    for k in DIHEDRAL:  # the batch form transforms each image alike
        assert np.array_equal(dihedral_view(batch, k, axes=(1, 2))[1], dihedral_view(val_crops[1], k))
    with pytest.raises(ValueError):
        dihedral_view(img, 8)


def test_averaged_views_are_the_mean_of_each_view_through_the_real_model(default_bundle, val_crops):
    b, be = default_bundle
    x = prepare_batch(val_crops, b.contract)
    np.testing.assert_array_equal(predict_views(be.predict, x, (0,)), be.predict(x))
    p = predict_views(be.predict, x, FLIPS)
    one_by_one = np.mean([be.predict(np.ascontiguousarray(dihedral_view(x, k, axes=(1, 2)))) for k in FLIPS], axis=0)
    np.testing.assert_allclose(p, one_by_one, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-4)
    assert p.shape == (3, len(b.classes))
    assert predict_views(be.predict, x[:0], FLIPS).shape[0] == 0


def test_the_views_come_from_the_bundle_unless_the_user_says_otherwise():
    from hemaedge.edge.errors import BundleError, UsageError

    assert bundle_views({}, None) == ("off", (0,))  # bundles before views: one view, as before
    assert bundle_views({"inference": {"views": "flips"}}, "auto") == ("flips", FLIPS)
    assert bundle_views({"inference": {"views": "flips"}}, "off") == ("off", (0,))
    assert bundle_views(None, "dihedral")[1] == DIHEDRAL
    # a tracked stream (video, camera, --same-slide) averages each cell over its frames: auto = one view
    assert bundle_views({"inference": {"views": "flips"}}, "auto", tracked=True) == ("off", (0,))
    assert bundle_views({"inference": {"views": "flips"}}, "flips", tracked=True) == ("flips", FLIPS)
    with pytest.raises(BundleError, match="inference.views"):
        bundle_views({"inference": {"views": "kaleidoscope"}}, None)
    with pytest.raises(UsageError, match="test-time views"):
        check_views("all")


def test_a_real_frame_runs_with_each_view_set_and_the_summary_says_which(default_bundle):
    from hemaedge.edge.pipeline import CellClassifier

    b, be = default_bundle
    img = read_image_rgb(SAMPLES / "bccd" / "BloodImage_00011.jpg")
    out = {}
    for v in ("off", "flips", "dihedral"):
        clf = CellClassifier(b, be, views=v)
        res = clf.process(img)
        assert clf.identify_rule()["views"] == v and res.detections
        out[v] = res.probabilities
    assert out["off"].shape == out["flips"].shape == out["dihedral"].shape
    assert not np.allclose(out["off"], out["flips"])
    assert CellClassifier(b, be).views_name == b.manifest.get("inference", {}).get("views", "off")
    assert CellClassifier(b, be, same_slide=True).views_name == "off"


def test_edge_run_refuses_an_unknown_view_set_with_one_line(tmp_path):
    from click.testing import CliRunner

    from hemaedge.cli import main

    res = CliRunner().invoke(main, ["edge", "run", "--source", str(SAMPLES / "bccd"), "--out", str(tmp_path / "r"),
                                    "--views", "all", "-q"])
    assert res.exit_code == 2 and "--views" in res.output and "Traceback" not in res.output
