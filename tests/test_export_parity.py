"""Parity logic: agreement, deltas, per-class deltas and the failed-validation threshold."""
import numpy as np
import pytest

from hemaedge.export import parity as par

CLASSES = ["a", "b", "c"]


def onehot(pred, n=3):
    p = np.full((len(pred), n), 0.05, np.float32)
    p[np.arange(len(pred)), pred] = 0.9
    return p


def test_split_parity_counts_agreement_and_deltas():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 2, 1, 0])
    src = np.array([0, 0, 1, 1, 2, 2, 2, 1, 1, 0])  # 9/10 right
    art = np.array([0, 1, 1, 1, 2, 2, 2, 1, 1, 0])  # 8/10 right, differs from source once
    r = par.split_parity(y, onehot(src), onehot(art), CLASSES)
    assert r["n"] == 10
    assert r["agreement"] == pytest.approx(0.9)
    assert r["source_accuracy"] == pytest.approx(0.9)
    assert r["accuracy"] == pytest.approx(0.8)
    assert r["accuracy_delta_points"] == pytest.approx(-10.0)
    # class "a": recall 3/3 -> 2/3
    assert r["per_class"]["a"]["recall_delta_points"] == pytest.approx(-100 / 3)
    assert r["per_class"]["c"]["recall_delta_points"] == pytest.approx(0.0)
    assert r["macro_f1_delta_points"] < 0
    assert r["per_class"]["b"]["support"] == 3


def test_identical_predictions_are_perfect_parity():
    y = np.array([0, 1, 2, 1])
    p = onehot(np.array([0, 1, 1, 1]))
    r = par.split_parity(y, p, p, CLASSES)
    assert r["agreement"] == 1.0 and r["accuracy_delta_points"] == 0.0 and r["max_abs_prob_diff"] == 0.0


def _splits(val_delta, test_delta):
    return {"val": {"accuracy_delta_points": val_delta}, "test": {"accuracy_delta_points": test_delta}}


@pytest.mark.parametrize("val,test,max_drop,status", [
    (0.0, -0.5, 1.0, par.PASSED),
    (-1.0, 0.0, 1.0, par.PASSED),          # exactly at the threshold still ships
    (-1.01, 0.0, 1.0, par.FAILED_VALIDATION),
    (0.2, -2.5, 1.0, par.FAILED_VALIDATION),  # the worst split decides
    (0.0, -0.4, 0.3, par.FAILED_VALIDATION),
    (+3.0, +1.0, 0.0, par.PASSED),         # gains never fail
])
def test_judge_marks_failed_validation_beyond_threshold(val, test, max_drop, status):
    v = par.judge(_splits(val, test), max_drop)
    assert v["status"] == status
    if status == par.FAILED_VALIDATION:
        assert "points" in v["reason"]


def test_judge_without_data_is_not_validated():
    assert par.judge({}, 1.0)["status"] == par.NOT_VALIDATED


def test_manifest_metrics_and_summary():
    y = np.array([0, 1, 2])
    r = par.split_parity(y, onehot(y), onehot(y), CLASSES)
    v = par.judge({"test": r})
    m = par.manifest_metrics({"test": r}, v)
    assert m["test"]["accuracy"] == 1.0 and m["parity"]["status"] == par.PASSED
    assert "agreement 100.00%" in par.format_summary({"test": r}, v)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        par.split_parity(np.array([0, 1]), onehot(np.array([0])), onehot(np.array([0])), CLASSES)
