"""Parity logic: agreement, deltas, per-class deltas and the failed-validation threshold; the
artifact's predictions come from the device's own code path."""
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


def test_parity_predictions_go_through_the_device_code(tmp_path):
    """The artifact is staged as a bundle and run by edge.backends: the same contract checks a
    device makes (no silent input conversion), the same probabilities `edge run` gets."""
    from bench_helpers import CLASSES as CELLS, SIZE, onnx_model
    from bench_helpers import bundle as make_bundle
    from hemaedge.edge.backends import BackendError, load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.preprocess import InputContract, prepare_batch

    model = onnx_model(tmp_path / "m.onnx")
    images = [np.full((20, 20, 3), v, np.uint8) for v in (0, 90, 250)]
    contract = InputContract(size=SIZE)
    got = par.predict_artifact(model, images, classes=CELLS, contract=contract, output={"kind": "probabilities"})
    device = load_backend(load_bundle(make_bundle(tmp_path / "b", model, "onnx-fp32")))
    np.testing.assert_array_equal(got, device.predict(prepare_batch(images, contract)))
    # a contract that does not describe the model is the device's error, not a quiet astype()
    wrong = InputContract(size=SIZE, dtype="uint8", quant_scale=1 / 255, quant_zero_point=0)
    with pytest.raises(BackendError, match="input contract says uint8 but the model takes float32"):
        par.predict_artifact(model, images, classes=CELLS, contract=wrong, output={"kind": "probabilities"})
