"""Classical heads (SVM, KNN, Random Forest, with their scaler) -> ONNX via skl2onnx, and
backbone + head merged into one ONNX graph, so a device runs the hybrid model without pickle.

The head is read from its `.skops` file trusting only scikit-learn/numpy types (the training
code's `load_skops`). The merged graph maps the image input straight to class scores:
  input (N,S,S,3 float32 raw pixels) -> Keras backbone (tf2onnx) -> features -> head graph.
The head graph comes from skl2onnx, except for a distance-weighted KNN, which skl2onnx writes as
uniform voting: that one is built by hemaedge.train.knn_onnx (marked by a "hemaedge_knn"
metadata entry).
Heads with predict_proba give probabilities; an SVC without probability estimates gives its
decision scores, recorded as kind "logits" (the device's softmax keeps their order).
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemaedge.edge.atomic import atomic_write_bytes
from hemaedge.edge.cli_support import UserError

from hemaedge.export import parity as par
from hemaedge.export.source import SourceModel, build_contract, load_keras_model, model_input_size, read_sidecar

logger = logging.getLogger(__name__)

FEATURES = "features"


def load_head(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such head file")
    if path.suffix != ".skops":
        raise UserError(f"{path}: expected a scikit-learn head saved with skops (.skops); pickles are not accepted")
    from hemaedge.train.heads import load_skops

    try:
        return load_skops(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _final_estimator(model):
    return model.steps[-1][1] if hasattr(model, "steps") else model


def head_scores(head, features: np.ndarray) -> tuple[np.ndarray, str]:
    """(scores, kind) as the ONNX graph will produce them."""
    if hasattr(head, "predict_proba") and getattr(_final_estimator(head), "probability", True):
        return np.asarray(head.predict_proba(features), np.float32), "probabilities"
    return np.asarray(head.decision_function(features), np.float32), "logits"


def head_to_onnx(head, n_features: int, opset: int = 17):
    """ModelProto with input "features" (N, n_features) float32, outputs (label, probabilities)."""
    from hemaedge.train.knn_onnx import is_distance_knn, knn_to_onnx

    final = _final_estimator(head)
    if is_distance_knn(head):
        # skl2onnx (1.20) writes weights="distance" as uniform voting; this graph weights by 1/d.
        try:
            return knn_to_onnx(head, n_features, opset=opset, input_name=FEATURES)
        except ValueError as exc:
            raise UserError(f"cannot write this KNN head as ONNX: {exc}") from None
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    try:
        return to_onnx(head, initial_types=[(FEATURES, FloatTensorType([None, int(n_features)]))],
                       options={id(final): {"zipmap": False}}, target_opset={"": int(opset), "ai.onnx.ml": 3})
    except Exception as exc:
        raise RuntimeError(f"skl2onnx cannot convert {type(final).__name__}: {exc}") from exc


def head_converter(head) -> str:
    """What writes the head's ONNX graph (recorded in the bundle settings)."""
    from hemaedge.train.knn_onnx import is_distance_knn

    return "hemaedge.train.knn_onnx" if is_distance_knn(head) else "skl2onnx"


def export_head_file(head_path, out, opset: int = 17, overwrite: bool = False) -> Path:
    """Head alone -> .onnx, checked against scikit-learn on random features."""
    import onnxruntime as ort

    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --force to replace it")
    head = load_head(head_path)
    n = int(getattr(head, "n_features_in_", 0) or 0)
    if not n:
        raise UserError(f"{head_path}: the head does not say how many features it takes (n_features_in_)")
    proto = head_to_onnx(head, n, opset)
    data = proto.SerializeToString()
    x = np.random.default_rng(0).normal(size=(32, n)).astype(np.float32)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    onnx_labels = sess.run(None, {FEATURES: x})[0].reshape(-1)
    sk_labels = np.asarray(head.predict(x)).reshape(-1)
    # float32 (ONNX) vs float64 (scikit-learn) can flip a near-tie on random probes; more is a bug.
    wrong = int((onnx_labels.astype(sk_labels.dtype) != sk_labels).sum())
    if wrong > 2:
        raise RuntimeError(f"{head_path}: the ONNX head disagrees with scikit-learn on {wrong} of 32 probe vectors")
    atomic_write_bytes(out, data)
    return out


@dataclass
class HybridSource(SourceModel):
    """Backbone (Keras, images -> features) + scikit-learn head, predicted in Python."""

    head: object = None
    head_path: Path | None = None
    head_sha256: str = ""

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        feats = np.asarray(self.model.predict(x, batch_size=batch_size, verbose=0), np.float32)
        return head_scores(self.head, feats)[0]

    def source_info(self) -> dict:
        info = super().source_info()
        info.update(kind="keras+sklearn", head_file=self.head_path.name, head_sha256=self.head_sha256,
                    head=type(_final_estimator(self.head)).__name__)
        return info


def load_hybrid_source(backbone_path, head_path, *, classes=None, preprocess=None, size=None) -> HybridSource:
    from hemaedge.edge.bundle import sha256_file

    backbone_path, head_path = Path(backbone_path), Path(head_path)
    backbone = load_keras_model(backbone_path)
    head = load_head(head_path)
    sidecar = read_sidecar(head_path) or read_sidecar(backbone_path)
    msize = model_input_size(backbone)
    if size is not None and int(size) != msize:
        raise UserError(f"{backbone_path}: --size {size} but the backbone takes {msize} px")
    names = list(classes) if classes else list(sidecar.get("classes") or [])
    if not names:
        raise UserError(f"{head_path}: no class list; write {head_path.with_suffix('.json').name} or pass --classes")
    n_feat = int(backbone.outputs[0].shape[-1])
    if getattr(head, "n_features_in_", n_feat) != n_feat:
        raise UserError(f"{head_path}: the head takes {head.n_features_in_} features, the backbone gives {n_feat}")
    n_cls = len(getattr(_final_estimator(head), "classes_", names))
    if n_cls != len(names):
        raise UserError(f"{head_path}: the head knows {n_cls} classes but {len(names)} class names were given")
    contract = build_contract(sidecar, msize, preprocess=preprocess, where=str(backbone_path))
    _, kind = head_scores(head, np.zeros((1, n_feat), np.float32))
    return HybridSource(path=backbone_path, model=backbone, classes=names, contract=contract,
                        sha256=sha256_file(backbone_path), sidecar=sidecar, output_kind=kind,
                        head=head, head_path=head_path, head_sha256=sha256_file(head_path))


def merge_backbone_head(backbone_onnx: bytes, head_proto) -> bytes:
    """One graph: backbone output feeds the head's "features" input; outputs label + scores."""
    import onnx
    from onnx import compose

    bb = onnx.load_from_string(backbone_onnx)
    hd = head_proto
    ir = max(bb.ir_version, hd.ir_version)
    bb.ir_version = hd.ir_version = ir
    # Both graphs must import the same opset of every domain they share: take the newer.
    newest = {}
    for m in (bb, hd):
        for o in m.opset_import:
            newest[o.domain] = max(newest.get(o.domain, 0), o.version)
    for m in (bb, hd):
        for o in m.opset_import:
            o.version = newest[o.domain]
    hd = compose.add_prefix(hd, prefix="head_", rename_inputs=False)
    feat_out = bb.graph.output[0].name
    merged = compose.merge_models(bb, hd, io_map=[(feat_out, FEATURES)])
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


def export_hybrid_bundle(source: HybridSource, out_dir, *, opset: int = 17, parity_data=None,
                         max_drop: float = par.DEFAULT_MAX_DROP, overwrite: bool = False, log=None) -> dict:
    """Backbone + head -> one ONNX bundle, parity-checked against backbone + scikit-learn."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    from hemaedge.export.bundle_writer import write_export_bundle
    from hemaedge.export.onnx_export import keras_to_onnx
    from hemaedge.export.pipeline import make_row, measure_parity

    t0 = time.perf_counter()
    n_feat = int(source.model.outputs[0].shape[-1])
    data = merge_backbone_head(keras_to_onnx(source.model, source.contract, opset), head_to_onnx(source.head, n_feat, opset))
    export_s = time.perf_counter() - t0
    output = {"kind": source.output_kind, "dtype": "float32", "quant_scale": None, "quant_zero_point": None}
    settings = {"quant": "fp32", "opset": opset, "format": "onnx-hybrid",
                "head": type(_final_estimator(source.head)).__name__, "converter": f"tf2onnx + {head_converter(source.head)}"}
    with tempfile.TemporaryDirectory(prefix="hemaedge-head-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        splits, verdict = measure_parity(source, path, source.contract, output, parity_data, max_drop)
        if splits:
            log(par.format_summary(splits, verdict))
        bundle = write_export_bundle(out_dir, path, model_format="onnx-hybrid", classes=source.classes,
                                     contract=source.contract, output=output, source=source.source_info(),
                                     settings=settings, metrics=par.manifest_metrics(splits, verdict) if splits else {},
                                     validation=verdict, name=f"{source.name}-{source.head_path.stem}-onnx",
                                     overwrite=overwrite)
    return make_row("onnx-hybrid", verdict["status"], size=len(data), splits=splits, bundle=bundle,
                    export_s=export_s, contract=source.contract, output=output)
