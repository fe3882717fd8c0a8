"""Each head of the hybrid paper on a small real slice (features of a tiny backbone)."""
import numpy as np
import pytest

from hemaedge.edge.preprocess import prepare_batch
from hemaedge.train import heads as H
from hybrid_helpers import head_features

SIZE = 32


@pytest.fixture(scope="module")
def feats(bloodmnist128):
    return head_features(bloodmnist128, SIZE)


CHANCE = 1 / 8


@pytest.fixture(scope="module")
def svm(feats):
    return H.svm_grid_search(feats["Xtr"], feats["ytr"], seed=42, n_jobs=2, progress=False)


def test_rbf_kernel_matches_sklearn(feats):
    from sklearn.metrics.pairwise import rbf_kernel

    A, B = feats["Xtr"][:50], feats["Xte"][:20]
    K = H.rbf_kernel_into(A, B, 0.05, chunk=16)
    assert K.dtype == np.float64
    np.testing.assert_allclose(K, rbf_kernel(A.astype(np.float64), B.astype(np.float64), gamma=0.05),
                               rtol=1e-4, atol=1e-6)


def test_svm_grid_selects_what_plain_gridsearch_selects(feats, svm):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X, y = feats["Xtr"], feats["ytr"]
    fast = svm
    plain = GridSearchCV(Pipeline([("scale", StandardScaler()), ("svc", SVC())]),
                         {"svc__C": list(H.SVM_C), "svc__gamma": list(H.SVM_GAMMA)},
                         cv=StratifiedKFold(5, shuffle=True, random_state=42), scoring="accuracy").fit(X, y)
    assert fast.best_params == {"C": plain.best_params_["svc__C"], "gamma": plain.best_params_["svc__gamma"]}
    assert fast.n_fits == 46 and len(fast.cv_results) == 9
    ours = np.array([r["mean_test_score"] for r in fast.cv_results])
    theirs = plain.cv_results_["mean_test_score"]
    # 'scale' is the non-degenerate gamma for z-scored features: fold scores must agree exactly.
    for i, r in enumerate(fast.cv_results):
        if r["gamma"] == "scale":
            assert ours[i] == pytest.approx(theirs[i], abs=1e-12)
    # The refitted model is an ordinary RBF SVC that predicts like GridSearchCV's refit.
    svc = fast.pipeline[-1]
    assert svc.kernel == "rbf" and len(svc.support_vectors_) == fast.n_support
    assert (fast.pipeline.predict(feats["Xte"]) == plain.predict(feats["Xte"])).mean() >= 0.98
    scores = H.svm_scores(fast.pipeline, feats["Xte"])
    assert (scores.argmax(1) == fast.pipeline.predict(feats["Xte"])).all()
    np.testing.assert_allclose(scores.sum(1), 1, rtol=1e-9)
    assert (scores.argmax(1) == feats["yte"]).mean() > 2 * CHANCE


def test_svm_knn_rf_saved_safely_and_reload(feats, svm, tmp_path):
    import onnxruntime as ort

    X, y, Xte = feats["Xtr"], feats["ytr"], feats["Xte"]
    models = {"svm": svm.pipeline,
              "knn": H.make_knn(1).fit(X, y), "rf": H.make_rf(0, 1).fit(X, y)}
    knn = models["knn"][-1]
    assert (knn.n_neighbors, knn.weights, knn.metric) == (9, "distance", "euclidean")
    assert models["rf"].n_estimators == 200 and not hasattr(models["rf"], "steps")  # no scaling
    for name, model in models.items():
        pred = model.predict(Xte)
        assert (pred == feats["yte"]).mean() > 2 * CHANCE, name
        files = H.save_sklearn(model, tmp_path / name, X.shape[1])
        back = H.load_skops(files["skops"])
        assert (back.predict(Xte) == pred).all()
        sess = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
        onnx_label, onnx_scores = sess.run(None, {sess.get_inputs()[0].name: Xte.astype(np.float32)})
        if name == "knn":  # its own graph (train/knn_onnx.py): sklearn's 1/distance votes, exactly
            np.testing.assert_array_equal(onnx_label, pred)
            np.testing.assert_allclose(onnx_scores, model.predict_proba(Xte), atol=1e-5, rtol=0)
        else:  # skl2onnx, float32: a near-tie may flip
            assert (onnx_label == pred).mean() >= 0.97, name
        assert not list(tmp_path.glob("*.tmp*"))


def test_ann_architecture_and_training(feats):
    X, y = feats["Xtr"], feats["ytr"]
    m = H.build_ann(X.shape[1], 8, X)
    dense = [l.units for l in m.layers if l.__class__.__name__ == "Dense"]
    drop = [l.rate for l in m.layers if l.__class__.__name__ == "Dropout"]
    assert dense == [128, 64, 8] and drop == [0.2, 0.2]
    assert sum(l.__class__.__name__ == "BatchNormalization" for l in m.layers) == 2
    # The paper's lr 1e-5 barely moves in a few epochs; a larger one shows the head can learn.
    r = H.train_ann(X, y, feats["Xte"], feats["yte"], 8, epochs=12, lr=3e-3, seed=0)
    p = r.model.predict(feats["Xte"], verbose=0)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    assert (p.argmax(1) == feats["yte"]).mean() > 2 * CHANCE
    assert 1 <= r.epochs <= 12 and "val_loss" in r.history


def test_fused_ann_equals_head_of_backbone(feats, tmp_path):
    head = H.build_ann(feats["Xtr"].shape[1], 8, feats["Xtr"])
    fused = H.fuse_backbone_and_head(feats["bb"], head)
    fused.save(tmp_path / "fused_ann.keras")
    back = H.load_fused(tmp_path / "fused_ann.keras")
    x = prepare_batch(feats["xte"][:12], feats["contract"])
    assert back.input_shape == (None, SIZE, SIZE, 3)
    p = back.predict(x, verbose=0)
    expect = head.predict(feats["bb"].predict(x, verbose=0), verbose=0)
    np.testing.assert_allclose(p, expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
