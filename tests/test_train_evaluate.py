"""Shared evaluation: metrics on inputs whose answers are known by hand."""
import json

import numpy as np
import pytest

from hemaedge.train.evaluate import compute_metrics, metrics_markdown, plot_confusion_matrix, write_json

CLASSES = ["a", "b", "c"]


def onehot(pred, n=3, conf=0.9):
    p = np.full((len(pred), n), (1 - conf) / (n - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_perfect_predictions():
    y = np.array([0, 1, 2, 0, 1, 2])
    m = compute_metrics(y, onehot(y), CLASSES, bootstrap=200)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["kappa"] == 1.0
    assert m["roc_auc_ovr"] == 1.0
    assert m["accuracy_ci95"] == [1.0, 1.0]
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert m["n"] == 6


def test_known_mistakes():
    # 4 of class a (one predicted as b), 2 of b (correct), 2 of c (one predicted as a)
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    m = compute_metrics(y, onehot(pred), CLASSES, bootstrap=0)
    assert m["accuracy"] == pytest.approx(6 / 8)
    pc = m["per_class"]
    assert pc["a"]["precision"] == pytest.approx(3 / 4) and pc["a"]["recall"] == pytest.approx(3 / 4)
    assert pc["b"]["precision"] == pytest.approx(2 / 3) and pc["b"]["recall"] == 1.0
    assert pc["c"]["precision"] == 1.0 and pc["c"]["recall"] == 0.5
    assert pc["a"]["support"] == 4
    assert m["macro_recall"] == pytest.approx((0.75 + 1 + 0.5) / 3)
    # Cohen's kappa by hand: po = .75, pe = sum(row_i * col_i) / n^2
    rows, cols = np.array([4, 2, 2]), np.array([4, 3, 1])
    pe = (rows * cols).sum() / 64
    assert m["kappa"] == pytest.approx((0.75 - pe) / (1 - pe))
    assert m["confusion_matrix"][0] == [3, 1, 0]
    assert m["accuracy_ci95"] is None


def test_bootstrap_interval_contains_accuracy_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.8, y, (y + 1) % 3)
    m1 = compute_metrics(y, onehot(pred), CLASSES, bootstrap=500, seed=1)
    m2 = compute_metrics(y, onehot(pred), CLASSES, bootstrap=500, seed=1)
    lo, hi = m1["accuracy_ci95"]
    assert lo < m1["accuracy"] < hi and hi - lo < 0.15
    assert m1["accuracy_ci95"] == m2["accuracy_ci95"]


def test_auc_none_when_a_class_is_missing():
    y = np.array([0, 0, 1, 1])
    m = compute_metrics(y, onehot(y), CLASSES, bootstrap=0)
    assert m["roc_auc_ovr"] is None
    json.dumps(m)  # everything is JSON-serialisable


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics([0, 1], np.ones((2, 2)), CLASSES)


def test_files(tmp_path):
    y = np.array([0, 1, 2, 2])
    m = compute_metrics(y, onehot(np.array([0, 1, 2, 1])), CLASSES, bootstrap=0)
    png = plot_confusion_matrix(m["confusion_matrix"], CLASSES, tmp_path / "cm.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_json(tmp_path / "m.json", {"m": m, "arr": np.arange(3), "x": np.float32(0.5)})
    back = json.loads((tmp_path / "m.json").read_text())
    assert back["m"]["accuracy"] == 0.75 and back["arr"] == [0, 1, 2]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    md = metrics_markdown([{"k": "x", "acc": 0.5, "ci": [0.4, 0.6], "auc": None}],
                          ["k", ("acc", "Accuracy"), "ci", "auc"])
    assert md.splitlines()[0] == "| k | Accuracy | ci | auc |"
    assert "| x | 0.5000 | 0.4000–0.6000 | – |" in md
