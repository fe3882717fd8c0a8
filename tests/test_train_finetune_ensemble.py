"""Weighted-average ensembles: the weight grids, the search on validation data, and one saved
Keras model that reproduces the averaged probabilities (two tiny real members)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from finetune_helpers import TREE_CLASSES, tiny_runs, tree3  # noqa: E402,F401

from hemaedge.train.ensemble import (EnsembleError, combine, run_ensemble, search_weights,  # noqa: E402
                                     weight_grid)


def test_weight_grids():
    assert weight_grid(2, "paper") == [(0.3, 0.7), (0.4, 0.6), (0.6, 0.4), (0.7, 0.3)]
    simplex = weight_grid(3, "simplex", 0.25)
    assert len(simplex) == 15 and len(set(simplex)) == 15
    assert all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in simplex)
    assert len(weight_grid(2, "simplex", 0.1)) == 11
    with pytest.raises(EnsembleError, match="two members"):
        weight_grid(3, "paper")
    with pytest.raises(EnsembleError, match="divide 1"):
        weight_grid(2, "simplex", 0.3)


def test_search_picks_the_weights_that_fix_the_most_validation_errors():
    # member A is right on the first 6 samples, member B on the last 4; B is more confident.
    y = np.array([0] * 6 + [1] * 4)
    a = np.tile([0.7, 0.3], (10, 1))                 # always says class 0
    b = np.tile([0.05, 0.95], (10, 1))               # always says class 1, confidently
    best, table = search_weights([a, b], y, weight_grid(2, "simplex", 0.1))
    accs = {tuple(r["weights"]): r["accuracy"] for r in table}
    assert accs[best] == max(accs.values())
    p = combine([a, b], best)
    assert (p.argmax(1) == y).mean() == max(accs.values())
    # ties on accuracy are broken by log loss: among all-class-0 weightings, the most A-heavy
    assert best[0] > best[1]


def test_ensemble_of_two_tiny_members(tiny_runs, tree3, tmp_path):
    import keras

    members = [Path(r.out) / "best.keras" for r in tiny_runs]
    out = tmp_path / "ens"
    result = run_ensemble(members, str(tree3), out, grid="simplex", step=0.25, bootstrap=20,
                          log=lambda *_: None)
    side = json.loads((out / "ensemble.json").read_text())
    assert side["classes"] == sorted(TREE_CLASSES.values())
    assert side["input"] == json.loads((members[0].with_suffix(".json")).read_text())["input"]
    assert abs(sum(side["ensemble_weights"]) - 1) < 1e-9
    # its own temperature, OOD threshold and domain reference (fitted on val): the bundle's identify rule
    assert side["output"]["temperature"] > 0 and side["output"]["temperature_fitted_on"] == "val"
    assert side["ood"]["threshold"] >= 0 and "domain" in side
    assert 0 <= result["test"]["ensemble"]["ece_calibrated"] <= 1
    # each member and the ensemble, with the shared metrics (kappa, AUC, bootstrap interval)
    for split in ("val", "test"):
        assert set(result[split]) == {"member0", "member1", "ensemble"}
        for m in result[split].values():
            assert {"kappa", "roc_auc_ovr", "accuracy_ci95", "macro_f1"} <= set(m)
    # the simplex grid contains (1, 0) and (0, 1): the chosen weights are at least as good on val
    val = result["val"]
    assert val["ensemble"]["accuracy"] >= max(val["member0"]["accuracy"], val["member1"]["accuracy"])
    # ONE Keras model: image in, averaged probabilities out, equal to the weighted average
    model = keras.models.load_model(out / "ensemble.keras")
    assert result["saved_model_max_abs_diff"] < 1e-5
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    ps = [np.asarray(keras.models.load_model(m)(x, training=False)) for m in members]
    np.testing.assert_allclose(np.asarray(model(x, training=False)), combine(ps, side["ensemble_weights"]),
                               atol=1e-5)
    assert (out / "summary.md").read_text().count("| test |") == 3


def test_members_must_share_classes(tiny_runs, tmp_path):
    from hemaedge.train.ensemble import check_compatible, read_sidecar

    a = read_sidecar(Path(tiny_runs[0].out) / "best.keras")
    b = dict(a, classes=["x", "y", "z"])
    with pytest.raises(EnsembleError, match="classes"):
        check_compatible([a, b], ["a.keras", "b.keras"])
    lone = tmp_path / "lone.keras"
    lone.write_bytes(b"")
    with pytest.raises(EnsembleError, match="sidecar"):
        read_sidecar(lone)
