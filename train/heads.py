"""The hybrid paper's classifier heads on frozen features, parameter for parameter.

  svm  z-score + SVC(RBF), 5-fold GridSearchCV over C in {1, 10, 100} x gamma in {0.01, 0.1,
       'scale'}, accuracy scoring                          (`svm_grid_search`, fast, see below)
  knn  z-score + KNeighborsClassifier(k=9, weights='distance', metric='euclidean')
  rf   RandomForestClassifier(200 trees), no scaling
  ann  z-score (a Keras Normalization layer) + Dense 128 - Dense 64 (ReLU, batch norm, dropout
       0.2) + softmax; Adam lr 1e-5, batch 32, <= 50 epochs, early stopping (patience 10) and
       reduce-LR-on-plateau (patience 5) on the validation split

Why the SVM grid is fast: the plain `GridSearchCV(Pipeline(StandardScaler, SVC))` spends its time
in libsvm's scalar RBF kernel (d = 1280 multiply-adds per entry, recomputed for every C). Here the
kernel of each (fold, gamma) is computed ONCE with a BLAS matrix product (float32) into a float64
matrix and the three C values are fitted on it with SVC(kernel='precomputed') in parallel threads
(libsvm releases the GIL). What is searched is unchanged: the scaler is fitted on each fold's
training part, gamma='scale' is resolved per fold exactly as SVC does (1 / (d * X.var())), the
folds are StratifiedKFold(5, shuffle, seed), candidates are ranked as GridSearchCV ranks them.
The refitted model is turned back into an ordinary SVC(kernel='rbf') with the same support
vectors and coefficients, so it can be saved (skops / ONNX) and used without the training set.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

HEADS = ("svm", "knn", "rf", "ann")
SVM_C = (1, 10, 100)
SVM_GAMMA = (0.01, 0.1, "scale")


# ----------------------------------------------------------------------------- RBF kernel


def rbf_kernel_into(A: np.ndarray, B: np.ndarray, gamma: float, out: np.ndarray | None = None,
                    chunk: int = 2048) -> np.ndarray:
    """exp(-gamma * ||a - b||^2) for all rows of A and B: float32 matrix products, float64 result
    (what libsvm needs), written chunk by chunk so no second full-size temporary is made."""
    A = np.ascontiguousarray(A, dtype=np.float32)
    B = np.ascontiguousarray(B, dtype=np.float32)
    if out is None:
        out = np.empty((len(A), len(B)), dtype=np.float64)
    bn = np.einsum("ij,ij->i", B, B)
    for s in range(0, len(A), chunk):
        a = A[s:s + chunk]
        d2 = a @ B.T
        d2 *= -2.0
        d2 += np.einsum("ij,ij->i", a, a)[:, None]
        d2 += bn[None, :]
        np.maximum(d2, 0.0, out=d2)
        o = out[s:s + len(a)]
        o[...] = d2  # exp in float64: tiny kernel values must not underflow to 0 as in float32
        o *= -float(gamma)
        np.exp(o, out=o)
    return out


def _scale_gamma(Xs: np.ndarray) -> float:
    """SVC's gamma='scale' for the data it is fitted on: 1 / (n_features * X.var())."""
    var = float(np.asarray(Xs, dtype=np.float64).var())
    return 1.0 / (Xs.shape[1] * var) if var != 0 else 1.0


def _resolve_gamma(g, Xs) -> float:
    return _scale_gamma(Xs) if g == "scale" else float(g)


def _kernel_buffer(n: int, m: int, scratch_dir=None) -> np.ndarray:
    """A float64 (n, m) array in RAM, or memory-mapped in `scratch_dir` when RAM is short
    (the page cache then holds what fits instead of the process being killed)."""
    need = n * m * 8
    try:
        import psutil

        avail = psutil.virtual_memory().available
    except ImportError:  # pragma: no cover
        avail = need * 2
    if scratch_dir is None or need + (3 << 30) < avail:
        return np.empty((n, m), dtype=np.float64)
    import tempfile
    from pathlib import Path

    Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    fh = tempfile.NamedTemporaryFile(dir=scratch_dir, prefix="kernel-", suffix=".f64")
    arr = np.memmap(fh, dtype=np.float64, mode="w+", shape=(n, m))
    arr._hemaedge_file = fh  # keep the file alive as long as the array
    return arr


# ----------------------------------------------------------------------------- SVM


@dataclass
class SVMResult:
    pipeline: object                    # Pipeline(StandardScaler, SVC(kernel='rbf')), saveable
    best_params: dict                   # {"C": .., "gamma": .. as searched ('scale' or a number)}
    gamma_value: float                  # the gamma the refitted model uses
    cv_results: list = field(default_factory=list)
    search_seconds: float = 0.0
    refit_seconds: float = 0.0
    n_fits: int = 0
    n_support: int = 0


def _fit_precomputed(K, y, C, cache_size=500):
    from sklearn.svm import SVC

    t = time.perf_counter()
    m = SVC(kernel="precomputed", C=C, cache_size=cache_size)
    m.fit(K, y)
    return m, time.perf_counter() - t


def _parallel(jobs, n_jobs):
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs, prefer="threads")(delayed(f)(*a) for f, a in jobs)


def svm_grid_search(X, y, *, C=SVM_C, gamma=SVM_GAMMA, cv: int = 5, seed: int = 42,
                    n_jobs: int = -1, scratch_dir=None, progress: bool = True) -> SVMResult:
    """The paper's 5-fold grid search of z-score + SVC(RBF), with cached kernels (see module doc).

    Selects what GridSearchCV(Pipeline([('scale', StandardScaler()), ('svc', SVC())]),
    {'svc__C': C, 'svc__gamma': gamma}, cv=StratifiedKFold(cv, shuffle=True, random_state=seed),
    scoring='accuracy') selects, and refits the winner on all of X.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from tqdm.auto import tqdm

    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    # GridSearchCV's candidate order (ParameterGrid sorts keys: C outer, gamma inner).
    cands = [{"C": c, "gamma": g} for c, g in itertools.product(C, gamma)]
    scores = np.zeros((len(cands), cv))
    fit_times = np.zeros((len(cands), cv))
    folds = list(StratifiedKFold(cv, shuffle=True, random_state=seed).split(X, y))
    t_search = time.perf_counter()
    bar = tqdm(total=len(cands) * cv, desc="svm grid (fits)", disable=not progress, leave=False)
    for f, (tr, te) in enumerate(folds):
        scaler = StandardScaler().fit(X[tr])
        Xtr, Xte = scaler.transform(X[tr]), scaler.transform(X[te])
        K = _kernel_buffer(len(tr), len(tr), scratch_dir)
        Kte = np.empty((len(te), len(tr)), dtype=np.float64)
        for g in gamma:
            gv = _resolve_gamma(g, Xtr)
            rbf_kernel_into(Xtr, Xtr, gv, out=K)
            rbf_kernel_into(Xte, Xtr, gv, out=Kte)
            idx = [i for i, c in enumerate(cands) if c["gamma"] == g]
            fitted = _parallel([(_fit_precomputed, (K, y[tr], cands[i]["C"])) for i in idx], n_jobs)
            for i, (m, secs) in zip(idx, fitted):
                scores[i, f] = float(np.mean(m.predict(Kte) == y[te]))
                fit_times[i, f] = secs
                bar.update(1)
        del K, Kte
    bar.close()
    search_s = time.perf_counter() - t_search

    mean = scores.mean(axis=1)
    # GridSearchCV: rank by mean test score (ties share the best rank), best = first of rank 1.
    best = int(np.flatnonzero(mean == mean.max())[0])
    cv_results = [{"C": c["C"], "gamma": c["gamma"], "mean_test_score": float(mean[i]),
                   "std_test_score": float(scores[i].std()), "split_scores": scores[i].tolist(),
                   "mean_fit_time": float(fit_times[i].mean())} for i, c in enumerate(cands)]

    t_refit = time.perf_counter()
    scaler = StandardScaler().fit(X)
    Xs = scaler.transform(X)
    gv = _resolve_gamma(cands[best]["gamma"], Xs)
    K = _kernel_buffer(len(Xs), len(Xs), scratch_dir)
    rbf_kernel_into(Xs, Xs, gv, out=K)
    pre, _ = _fit_precomputed(K, y, cands[best]["C"])
    del K
    svc = precomputed_to_rbf(pre, Xs, gv)
    refit_s = time.perf_counter() - t_refit

    from sklearn.pipeline import Pipeline

    pipe = Pipeline([("scale", scaler), ("svc", svc)])
    return SVMResult(pipeline=pipe, best_params=dict(cands[best]), gamma_value=gv,
                     cv_results=cv_results, search_seconds=search_s, refit_seconds=refit_s,
                     n_fits=len(cands) * cv + 1, n_support=int(len(svc.support_)))


def precomputed_to_rbf(pre, X_train_scaled: np.ndarray, gamma: float):
    """An SVC(kernel='rbf') equal to a precomputed-kernel SVC fitted on rbf(X_train, X_train)."""
    from sklearn.svm import SVC

    svc = SVC(kernel="rbf", C=pre.C, gamma=float(gamma), cache_size=pre.cache_size)
    for k, v in vars(pre).items():
        if k.endswith("_") or k.startswith("_"):
            setattr(svc, k, v)
    svc.support_vectors_ = np.ascontiguousarray(X_train_scaled[pre.support_], dtype=np.float64)
    svc._gamma = float(gamma)
    svc.shape_fit_ = X_train_scaled.shape
    svc.n_features_in_ = X_train_scaled.shape[1]
    return svc


def svm_outputs(pipeline, X, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(one-vs-rest decision values, predicted labels) of the saved RBF pipeline, computed through
    a BLAS kernel against the support vectors and libsvm's precomputed-kernel path: the same
    numbers as the pipeline's own decision_function/predict, much faster for many rows."""
    from sklearn.svm import SVC

    scaler, svc = pipeline[0], pipeline[-1]
    Xs = scaler.transform(np.asarray(X, dtype=np.float32))
    sv = svc.support_vectors_
    pre = SVC(kernel="precomputed", C=svc.C)
    for k, v in vars(svc).items():
        if k.endswith("_") or k.startswith("_"):
            setattr(pre, k, v)
    pre.support_ = np.arange(len(sv), dtype=np.int32)  # columns of our kernel = the SVs
    pre.shape_fit_ = (len(sv), len(sv))
    pre.support_vectors_ = np.empty((0, 0), dtype=np.float64)
    pre.n_features_in_ = len(sv)
    dec, pred = [], []
    for s in range(0, len(Xs), chunk):
        K = rbf_kernel_into(Xs[s:s + chunk], sv, svc._gamma)
        dec.append(pre.decision_function(K))
        pred.append(pre.predict(K))
    if not dec:
        return np.zeros((0, len(svc.classes_))), np.zeros(0, dtype=svc.classes_.dtype)
    return np.concatenate(dec), np.concatenate(pred)


def svm_scores(pipeline, X) -> np.ndarray:
    """Class scores of the SVM for metrics: softmax of the one-vs-rest decision values.

    SVC.predict votes one-vs-one and breaks vote ties by class order, while the one-vs-rest
    values break them by confidence, so on rare rows their argmax differs; there the two scores
    are swapped so the top score is always SVC.predict's class (accuracy = the model's accuracy).
    """
    from hemaedge.edge.preprocess import softmax

    dec, pred = svm_outputs(pipeline, X)
    p = softmax(np.asarray(dec, dtype=np.float64))
    col = np.searchsorted(pipeline[-1].classes_, pred)
    top = p.argmax(axis=1)
    rows = np.flatnonzero(top != col)
    p[rows, top[rows]], p[rows, col[rows]] = p[rows, col[rows]], p[rows, top[rows]]
    return p


# ----------------------------------------------------------------------------- KNN, RF


def make_knn(n_jobs: int = -1):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()),
                     ("knn", KNeighborsClassifier(n_neighbors=9, weights="distance",
                                                  metric="euclidean", n_jobs=n_jobs))])


def make_rf(seed: int = 42, n_jobs: int = -1):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=n_jobs)


# ----------------------------------------------------------------------------- ANN


def build_ann(n_features: int, n_classes: int, train_features: np.ndarray | None = None):
    """Normalization (z-score, fitted on the training features) -> Dense 128 -> Dense 64 -> softmax."""
    import keras
    from keras import layers

    norm = layers.Normalization(name="zscore")
    if train_features is not None:
        norm.adapt(np.asarray(train_features, dtype=np.float32))
    inp = keras.Input((n_features,), name="features")
    x = norm(inp)
    for units in (128, 64):
        x = layers.Dense(units, name=f"dense{units}")(x)
        x = layers.BatchNormalization(name=f"bn{units}")(x)
        x = layers.ReLU(name=f"relu{units}")(x)
        x = layers.Dropout(0.2, name=f"dropout{units}")(x)
    out = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out, name="ann_head")


@dataclass
class ANNResult:
    model: object
    history: dict
    epochs: int
    seconds: float


def train_ann(X, y, X_val, y_val, n_classes: int, *, seed: int = 42, epochs: int = 50,
              batch_size: int = 32, lr: float = 1e-5, verbose: int = 0) -> ANNResult:
    import keras

    keras.utils.set_random_seed(seed)
    model = build_ann(X.shape[1], n_classes, X)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    cbs = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True),
           keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=5, factor=0.1)]
    t = time.perf_counter()
    hist = model.fit(np.asarray(X, np.float32), np.asarray(y), validation_data=(np.asarray(X_val, np.float32), np.asarray(y_val)),
                     epochs=epochs, batch_size=batch_size, callbacks=cbs, verbose=verbose, shuffle=True)
    secs = time.perf_counter() - t
    h = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return ANNResult(model=model, history=h, epochs=len(h.get("loss", [])), seconds=secs)


def load_fused(path):
    """Load a saved Keras model (fused or head) in safe mode (no arbitrary code), uncompiled."""
    import keras

    return keras.saving.load_model(path, compile=False, safe_mode=True)


def fuse_backbone_and_head(backbone, head, name: str = "fused_ann"):
    """One Keras model: image (RGB 0..255) -> backbone features -> head -> class probabilities."""
    import keras

    return keras.Model(backbone.input, head(backbone.output), name=name)


# ----------------------------------------------------------------------------- saving


def save_sklearn(model, path_stem, n_features: int, onnx: bool = True) -> dict:
    """Save a fitted scikit-learn head safely: skops (`.skops`) and ONNX (`.onnx`, scaler
    included). Never a bare pickle. Returns {format: path}.

    A distance-weighted KNN is written by `knn_onnx` (skl2onnx would write it as uniform voting);
    the other heads by skl2onnx, when it is installed."""
    from pathlib import Path

    import skops.io as sio

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    files = {}
    tmp = stem.with_name(stem.name + ".tmp.skops")
    sio.dump(model, tmp)
    final = stem.with_name(stem.name + ".skops")
    tmp.replace(final)
    files["skops"] = str(final)
    if onnx:
        try:
            onx = _to_onnx(model, n_features)
        except ImportError:
            return files
        except Exception as exc:  # keep the skops file; say why ONNX is missing
            files["onnx_error"] = f"{type(exc).__name__}: {exc}"
            return files
        if onx is None:
            return files
        final = stem.with_name(stem.name + ".onnx")
        tmp = stem.with_name(stem.name + ".tmp.onnx")
        tmp.write_bytes(onx.SerializeToString())
        tmp.replace(final)
        files["onnx"] = str(final)
    return files


def _to_onnx(model, n_features: int):
    """ModelProto of a head (input "X", outputs label + probabilities), None without skl2onnx."""
    from hemaedge.train.knn_onnx import is_distance_knn, knn_to_onnx

    if is_distance_knn(model):
        return knn_to_onnx(model, n_features, opset=17, input_name="X")
    try:
        from skl2onnx import to_onnx
    except ImportError:
        return None
    x0 = np.zeros((1, n_features), dtype=np.float32)
    opts = {id(model): {"zipmap": False}} if not hasattr(model, "steps") else {id(model.steps[-1][1]): {"zipmap": False}}
    return to_onnx(model, x0, options=opts, target_opset=17)


def load_skops(path):
    """Load a head saved by `save_sklearn`, trusting only scikit-learn/numpy types."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=path)
    allowed = [t for t in untrusted if t.startswith(("sklearn.", "numpy."))]
    bad = sorted(set(untrusted) - set(allowed))
    if bad:
        raise ValueError(f"{path}: contains types that are not scikit-learn/numpy: {bad}")
    return sio.load(path, trusted=allowed)


__all__ = ["HEADS", "SVM_C", "SVM_GAMMA", "rbf_kernel_into", "svm_grid_search", "SVMResult",
           "precomputed_to_rbf", "svm_outputs", "svm_scores", "load_fused", "make_knn", "make_rf",
           "build_ann", "train_ann", "ANNResult", "fuse_backbone_and_head", "save_sklearn",
           "load_skops"]
