"""The flag-score benchmark: per-view probabilities recorded from the real packaged bundle on real
BCCD frames and BloodMNIST crops, and the scores, levels and rates computed from them."""
from __future__ import annotations

import numpy as np
import pytest

from hemaedge.benchmarks.tools.flag_scores import (SCORES, ScoreSet, _Recorder, _views_of, bccd_cells,
                                                   bloodmnist_cells, evaluate, probability_scores)
from hemaedge.edge.confidence import ood_scores


@pytest.fixture(scope="module")
def clf_rec():
    from hemaedge.benchmarks.tools.bccd_wbc import _Model
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.defaults import packaged_default_bundle
    from hemaedge.edge.pipeline import CellClassifier

    b = load_bundle(packaged_default_bundle())
    rec = _Recorder(load_backend(b, threads=1))
    return CellClassifier(_Model(list(b.classes), b.contract, b.manifest), rec), rec


def test_recorded_views_average_to_what_the_pipeline_classified(clf_rec, bccd):
    from hemaedge.edge.preprocess import read_image_rgb

    clf, rec = clf_rec
    assert len(clf.views) == 4  # the packaged default runs flips: the view scores have something to compare
    res = clf.process(read_image_rgb(sorted((bccd / "JPEGImages").glob("*.jpg"))[0]))
    views, colour = _views_of(rec, len(clf.views), len(res.detections))
    assert views.shape == (4, len(res.detections), len(clf.classes)) and colour.shape == (len(res.detections), 6)
    np.testing.assert_allclose(views.mean(axis=0), res.probabilities, atol=1e-6)
    s = probability_scores(views)
    np.testing.assert_allclose(s["msp"], ood_scores(res.probabilities), atol=1e-5)  # the device's score


def test_view_scores_on_hand_made_views():
    sure = [0.9, 0.05, 0.05]
    views = np.array([[sure, sure], [sure, [0.2, 0.7, 0.1]], [sure, sure], [sure, sure]])  # (V=4, N=2, C=3)
    s = probability_scores(views)
    assert s["view-split"].tolist() == [0.0, 0.25]  # one of four views of cell 2 says class 1
    assert s["worst-view"][1] == pytest.approx(-np.log(0.2)) and s["worst-view"][0] == pytest.approx(-np.log(0.9))
    assert np.all(s["worst-view"] >= s["msp"] - 1e-12) and s["margin"][1] > s["margin"][0]


def test_levels_fitted_on_training_domain_and_rates_on_bccd(clf_rec, bloodmnist128, bccd):
    clf, rec = clf_rec
    val = bloodmnist_cells(clf, rec, bloodmnist128 / "val", 120)
    ss = ScoreSet(val, clf.classes, 0.9)
    right = [c for c in val if ss.right(c)]
    s = ss.scores(right)
    for name in ("msp", "margin", "entropy", "crop-colour"):  # continuous scores: ~10 % of right cells above
        assert np.mean(s[name] > ss.levels[name]) <= 0.1 + 1.0 / len(right)
    cells = bccd_cells(clf, rec, bccd, "val")[:12]
    r = evaluate(cells, ss)
    assert r["cells"] == 12 and r["right"] + r["wrong"] == 12 and set(r["scores"]) == set(SCORES)
    for v in r["scores"].values():
        assert 0.0 <= v["wrong_flagged"] <= 1.0 and 0.0 <= v["right_flagged"] <= 1.0
        if "auroc" in v:
            assert 0.0 <= v["auroc"] <= 1.0 and v["best_at_15"]["right_flagged"] <= 0.15
