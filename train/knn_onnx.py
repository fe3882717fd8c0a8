"""A distance-weighted KNN head (z-score + KNeighborsClassifier(weights='distance')) as ONNX.

skl2onnx (checked with 1.20) writes such a KNN as if it voted uniformly, so its labels and
probabilities differ from scikit-learn's. This module builds the graph itself from standard ops:

  x (N, D) float32 -> z-score with the scaler's float32 mean/scale (as StandardScaler.transform)
  -> squared distances to the stored training rows, ||x||^2 - 2 x.T' + ||T||^2 (one Gemm)
  -> TopK of k + MARGIN candidates -> their distances recomputed exactly as sum((x - t)^2)
  -> TopK k -> weights 1/d, or sklearn's exact-match rule (a row with any zero-distance
  neighbour gives those neighbours weight 1 and the others 0, sklearn.neighbors._base._get_weights)
  -> weighted one-hot votes -> outputs "label" (the class value, like skl2onnx) and
  "probabilities" (N, n_classes), in that order.

Why the recomputation: in float32 the expansion cancels badly for near neighbours (an exact
training row comes out at ~1e-3 instead of 0, and close neighbours can swap order), while the
direct difference of the few candidates is exact for an identical row and accurate otherwise.
The training rows are stored once and used by both the Gemm and the Gather.

Only ops whose signature is the same from opset 13 to 21 are used (no ReduceMax, whose axes
moved to an input in 18), so the head still loads when merged with a newer-opset backbone.
"""
from __future__ import annotations

import numpy as np

MARKER_KEY = "hemaedge_knn"  # metadata_props entry that marks graphs built here
MARKER_VALUE = "distance-weighted/v1"
MARGIN = 16  # extra candidates kept from the float32 expansion before the exact recomputation


def split_knn_pipeline(model):
    """(scaler or None, KNeighborsClassifier) of a bare KNN or Pipeline([StandardScaler], KNN)."""
    steps = [s for _, s in model.steps if s not in (None, "passthrough")] if hasattr(model, "steps") else [model]
    *pre, knn = steps
    if type(knn).__name__ != "KNeighborsClassifier":
        raise ValueError(f"not a KNN head: the last step is {type(knn).__name__}")
    if len(pre) > 1 or (pre and type(pre[0]).__name__ != "StandardScaler"):
        raise ValueError("only a KNN alone or StandardScaler + KNN can be written as a KNN ONNX graph")
    return (pre[0] if pre else None), knn


def is_distance_knn(model) -> bool:
    """True for a KNN head (alone or after a scaler) that weights its votes by 1/distance."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    return type(final).__name__ == "KNeighborsClassifier" and getattr(final, "weights", None) == "distance"


def _check_supported(knn):
    # sklearn resolves minkowski with p=2 to "euclidean" in effective_metric_.
    if knn.effective_metric_ != "euclidean":
        raise ValueError(f"only the euclidean metric is supported, not {knn.metric!r}")
    if getattr(knn, "outputs_2d_", False):
        raise ValueError("multi-output KNN is not supported")
    if knn.n_neighbors > knn.n_samples_fit_:
        raise ValueError(f"n_neighbors={knn.n_neighbors} but only {knn.n_samples_fit_} training rows")


def _scaler_arrays(scaler, n_features: int):
    mean = np.zeros(n_features, np.float32)
    scale = np.ones(n_features, np.float32)
    if scaler is not None:
        # StandardScaler.transform casts mean_/scale_ to the input dtype, then subtracts/divides.
        if getattr(scaler, "mean_", None) is not None and scaler.with_mean:
            mean = np.asarray(scaler.mean_, np.float32)
        if getattr(scaler, "scale_", None) is not None and scaler.with_std:
            scale = np.asarray(scaler.scale_, np.float32)
    return mean, scale


def knn_to_onnx(model, n_features: int | None = None, *, opset: int = 17, input_name: str = "features"):
    """ModelProto: input `input_name` (N, D) float32 -> outputs "label" (N,), "probabilities" (N, C)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if opset < 13:
        raise ValueError("the KNN graph needs opset 13 or newer")
    scaler, knn = split_knn_pipeline(model)
    if knn.weights != "distance":
        raise ValueError(f"weights={knn.weights!r}: this graph is for weights='distance' (skl2onnx handles 'uniform')")
    _check_supported(knn)
    train = np.ascontiguousarray(knn._fit_X, dtype=np.float32)
    m, d = train.shape
    if n_features is not None and int(n_features) != d:
        raise ValueError(f"the KNN head takes {d} features, not {n_features}")
    classes = np.asarray(knn.classes_)
    n_cls, k = len(classes), int(knn.n_neighbors)
    cand = min(k + MARGIN, m)
    mean, scale = _scaler_arrays(scaler, d)
    onehot = np.zeros((m, n_cls), np.float32)
    onehot[np.arange(m), np.asarray(knn._y, np.int64)] = 1.0
    if np.issubdtype(classes.dtype, np.integer):
        class_values, label_type = classes.astype(np.int64), TensorProto.INT64
    elif classes.dtype.kind in "UO":
        class_values, label_type = classes.astype(object), TensorProto.STRING
    else:
        raise ValueError(f"class labels of dtype {classes.dtype} are not supported (integers or strings)")

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [const("zscore_mean", mean), const("zscore_scale", scale),
             const("train_rows", train),  # (M, D), the one copy of the training set
             const("train_sq_norms", np.einsum("ij,ij->i", train.astype(np.float64), train.astype(np.float64)).astype(np.float32)),
             const("train_onehot", onehot), const("class_values", class_values),
             const("n_candidates", np.array([cand], np.int64)), const("k", np.array([k], np.int64)),
             const("axis1", np.array([1], np.int64)), const("axis2", np.array([2], np.int64)),
             const("zero", np.array(0.0, np.float32)), const("one", np.array(1.0, np.float32))]
    n = helper.make_node
    nodes = [
        # z-score exactly as StandardScaler.transform on float32 rows: (x - mean) / scale
        n("Sub", [input_name, "zscore_mean"], ["centred"]),
        n("Div", ["centred", "zscore_scale"], ["xs"]),
        # squared distances to every training row, ||x||^2 - 2 x.T' + ||T||^2, clipped at 0
        n("Mul", ["xs", "xs"], ["xs_sq"]),
        n("ReduceSum", ["xs_sq", "axis1"], ["x_sq_norm"], keepdims=1),
        n("Gemm", ["xs", "train_rows"], ["minus_2xt"], alpha=-2.0, transB=1),
        n("Add", ["minus_2xt", "x_sq_norm"], ["d2_part"]),
        n("Add", ["d2_part", "train_sq_norms"], ["d2_raw"]),
        n("Max", ["d2_raw", "zero"], ["d2_all"]),
        n("TopK", ["d2_all", "n_candidates"], ["cand_d2_approx", "cand_idx"], axis=1, largest=0, sorted=1),
        # exact squared distances of the candidates: sum((t - x)^2), 0 for an identical row
        n("Gather", ["train_rows", "cand_idx"], ["cand_rows"], axis=0),
        n("Unsqueeze", ["xs", "axis1"], ["xs_row"]),
        n("Sub", ["cand_rows", "xs_row"], ["cand_diff"]),
        n("Mul", ["cand_diff", "cand_diff"], ["cand_diff_sq"]),
        n("ReduceSum", ["cand_diff_sq", "axis2"], ["cand_d2"], keepdims=0),
        n("TopK", ["cand_d2", "k"], ["nn_d2", "nn_pos"], axis=1, largest=0, sorted=1),
        n("GatherElements", ["cand_idx", "nn_pos"], ["nn_idx"], axis=1),
        # weights: 1/d, or (rows with a zero distance) 1 for the zero-distance neighbours, else 0
        n("Sqrt", ["nn_d2"], ["nn_d"]),
        n("Equal", ["nn_d", "zero"], ["is_exact"]),
        n("Cast", ["is_exact"], ["exact_w"], to=TensorProto.FLOAT),
        n("ReduceSum", ["exact_w", "axis1"], ["n_exact"], keepdims=1),
        n("Greater", ["n_exact", "zero"], ["row_has_exact"]),
        n("Div", ["one", "nn_d"], ["inv_d"]),
        n("Where", ["row_has_exact", "exact_w", "inv_d"], ["nn_w"]),
        # weighted votes per class, normalised
        n("Gather", ["train_onehot", "nn_idx"], ["nn_onehot"], axis=0),
        n("Unsqueeze", ["nn_w", "axis2"], ["nn_w3"]),
        n("Mul", ["nn_onehot", "nn_w3"], ["weighted_votes"]),
        n("ReduceSum", ["weighted_votes", "axis1"], ["votes"], keepdims=0),
        n("ReduceSum", ["votes", "axis1"], ["votes_total"], keepdims=1),
        n("Div", ["votes", "votes_total"], ["probabilities"]),
        # sklearn's weighted_mode: the largest vote, ties to the first class
        n("ArgMax", ["votes"], ["label_index"], axis=1, keepdims=0),
        n("Gather", ["class_values", "label_index"], ["label"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "distance_weighted_knn",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("label", label_type, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, n_cls])],
        initializer=inits)
    opsets = [helper.make_opsetid("", int(opset))]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="hemaedge.train.knn_onnx",
                              ir_version=helper.find_min_ir_version_for(opsets))
    helper.set_model_props(proto, {MARKER_KEY: MARKER_VALUE, "n_neighbors": str(k), "weights": "distance"})
    onnx.checker.check_model(proto)
    return proto


def is_knn_graph(proto) -> bool:
    """True for a ModelProto written by `knn_to_onnx` (recognised by its metadata entry)."""
    return any(p.key == MARKER_KEY for p in proto.metadata_props)


__all__ = ["knn_to_onnx", "is_distance_knn", "is_knn_graph", "split_knn_pipeline", "MARKER_KEY"]
