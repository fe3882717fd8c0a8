"""The distance-weighted KNN head as ONNX (train/knn_onnx.py) against scikit-learn, on real features."""
import numpy as np
import pytest

from hemaedge.edge.preprocess import prepare_batch
from hemaedge.train import heads as H
from hemaedge.train.knn_onnx import MARKER_KEY, knn_to_onnx
from hybrid_helpers import head_features

SIZE = 32


@pytest.fixture(scope="module")
def feats(bloodmnist128):
    return head_features(bloodmnist128, SIZE)


def _run(proto_or_path, X):
    import onnxruntime as ort

    src = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    # merged graphs prefix the head's outputs ("head_label"); the order is what runners rely on
    assert [o.name.removeprefix("head_") for o in sess.get_outputs()] == ["label", "probabilities"]
    label, proba = sess.run(None, {sess.get_inputs()[0].name: np.asarray(X, np.float32)})
    return label, proba


def test_graph_equals_sklearn_on_held_out_and_training_rows(feats):
    from sklearn.neighbors import KNeighborsClassifier

    X, y = feats["Xtr"], feats["ytr"]
    head = H.make_knn(1).fit(X, y)
    # held-out rows, plus training rows (a zero-distance neighbour each)
    Q = np.concatenate([feats["Xte"], X[::7]])
    label, proba = _run(knn_to_onnx(head, X.shape[1]), Q)
    ref = head.predict_proba(Q)
    np.testing.assert_array_equal(label, head.predict(Q))
    assert label.dtype == np.int64 and proba.shape == (len(Q), len(head[-1].classes_))
    np.testing.assert_allclose(proba, ref, atol=1e-5, rtol=0)
    # The slice tells the two weightings apart (a uniform-voting graph would fail above).
    uniform = H.make_knn(1).set_params(knn=KNeighborsClassifier(9, metric="euclidean")).fit(X, y)
    assert np.abs(uniform.predict_proba(Q) - ref).max() > 0.1
    assert (uniform.predict(feats["Xte"]) != head.predict(feats["Xte"])).any()


def test_exact_matches_get_sklearns_zero_distance_weights_and_ties_go_to_the_first_class(feats):
    X, y = feats["Xtr"], feats["ytr"]
    # Training row 0 twice, with a second label: a query equal to it has two zero-distance
    # neighbours of different classes -> weight 1 each, the 7 others 0 -> an exact 0.5/0.5 tie.
    other = (int(y[0]) + 3) % 8
    X2, y2 = np.concatenate([X, X[:1]]), np.concatenate([y, [other]])
    head = H.make_knn(1).fit(X2, y2)
    unique_row = int(np.flatnonzero((y2 == y2[5]) & (np.arange(len(y2)) != 0))[0])
    Q = np.stack([X[0], X[unique_row]])
    label, proba = _run(knn_to_onnx(head, X.shape[1]), Q)
    tie = np.zeros(8)
    tie[[y[0], other]] = 0.5
    np.testing.assert_array_equal(proba[0], tie)
    assert label[0] == min(int(y[0]), other)  # sklearn's weighted_mode: ties to the first class
    np.testing.assert_array_equal(proba[1], np.eye(8)[y2[unique_row]])
    # scikit-learn agrees (its brute search may give ~1e-7 instead of 0; a tree search is exact)
    exact = H.make_knn(1).set_params(knn__algorithm="ball_tree").fit(X2, y2)
    np.testing.assert_allclose(proba, exact.predict_proba(Q), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(label, exact.predict(Q))
    np.testing.assert_array_equal(label, head.predict(Q))


def test_training_rows_are_stored_once(feats):
    head = H.make_knn(1).fit(feats["Xtr"], feats["ytr"])
    proto = knn_to_onnx(head, feats["Xtr"].shape[1])
    big = [t for t in proto.graph.initializer if np.prod(t.dims) >= feats["Xtr"].size]
    assert [tuple(t.dims) for t in big] == [feats["Xtr"].shape]
    assert {p.key: p.value for p in proto.metadata_props}[MARKER_KEY]


def test_unsupported_knn_is_refused(feats):
    from sklearn.neighbors import KNeighborsClassifier

    X, y = feats["Xtr"], feats["ytr"]
    with pytest.raises(ValueError, match="euclidean"):
        knn_to_onnx(KNeighborsClassifier(9, weights="distance", metric="manhattan").fit(X, y))
    with pytest.raises(ValueError, match="uniform"):
        knn_to_onnx(KNeighborsClassifier(9).fit(X, y))
    with pytest.raises(ValueError, match="takes 24 features"):
        knn_to_onnx(H.make_knn(1).fit(X, y), 25)


def test_save_sklearn_writes_the_weighted_graph_for_distance_knn_only(feats, tmp_path):
    import onnx
    from sklearn.neighbors import KNeighborsClassifier

    X, y, Xte = feats["Xtr"], feats["ytr"], feats["Xte"]
    head = H.make_knn(1).fit(X, y)
    files = H.save_sklearn(head, tmp_path / "knn", X.shape[1])
    assert MARKER_KEY in {p.key for p in onnx.load(files["onnx"]).metadata_props}
    label, proba = _run(files["onnx"], Xte)
    np.testing.assert_array_equal(label, head.predict(Xte))
    np.testing.assert_allclose(proba, head.predict_proba(Xte), atol=1e-5, rtol=0)
    uniform = H.save_sklearn(KNeighborsClassifier(9).fit(X, y), tmp_path / "uniform", X.shape[1])
    assert MARKER_KEY not in {p.key for p in onnx.load(uniform["onnx"]).metadata_props}


def test_export_accepts_distance_knn_alone_and_merged_with_the_backbone(feats, tmp_path):
    import skops.io as sio

    from hemaedge.export.onnx_export import keras_to_onnx
    from hemaedge.export.onnx_head import export_head_file, head_converter, head_to_onnx, merge_backbone_head

    X, y, Xte = feats["Xtr"], feats["ytr"], feats["Xte"]
    head = H.make_knn(1).fit(X, y)
    sio.dump(head, tmp_path / "knn.skops")
    out = export_head_file(tmp_path / "knn.skops", tmp_path / "knn.onnx")
    label, _ = _run(out, Xte)
    np.testing.assert_array_equal(label, head.predict(Xte))
    assert head_converter(head) == "hemaedge.train.knn_onnx"

    import onnx

    merged = merge_backbone_head(keras_to_onnx(feats["bb"], feats["contract"], 17), head_to_onnx(head, X.shape[1]))
    x = prepare_batch(feats["xte"], feats["contract"])
    label, proba = _run(onnx.load_from_string(merged), x)
    np.testing.assert_array_equal(label, head.predict(feats["bb"].predict(x, verbose=0)))
    # backbone features in ONNX vs Keras differ by float noise; the votes barely move
    np.testing.assert_allclose(proba, head.predict_proba(feats["bb"].predict(x, verbose=0)), atol=1e-3)
