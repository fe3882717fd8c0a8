"""`train adapt --fit head` from a TFLite bundle alone: no Keras source, no TensorFlow.

The packaged default ships as int8 TFLite only (`tflite-int8-mixed`: MEAN, FULLY_CONNECTED and
SOFTMAX stay in float), and the head fit only changes the final FULLY_CONNECTED -> SOFTMAX. So:

- features: the FULLY_CONNECTED op's input, read from the bundle's own model run by the device's
  LiteRT back end (`LiteRTBackend(keep_tensors=True)`) on `prepare_batch` tensors and the bundle's
  test-time views: the int8 backbone's features, exactly what the device computes. Every batch is
  checked: the model's answer must be softmax(features @ W0 + b0) (temperature applied as the
  manifest says), else the bundle is not what this module assumes;
- the base head (W0, b0): the FULLY_CONNECTED op's float32 weight (classes x features) and bias;
- the adapted model: the base model.tflite byte for byte except those two buffers, overwritten in
  place by the fitted float32 values (same shape). They are found through the flatbuffer's
  operator -> tensor -> buffer tables and must also be an exact, unique byte match of the old
  values; anything else is refused. The patched file is read back and checked before use.

Flatbuffers are read with LiteRT's own schema module (ai_edge_litert.schema_py_generated); model
files and JSON only, nothing is unpickled.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemaedge.edge.errors import DataError, UsageError
from hemaedge.edge.preprocess import output_probabilities, softmax

log = logging.getLogger(__name__)

# The bundle's answer vs softmax(features @ W0 + b0): float rounding only (measured 2e-7 on the default)
MATCH_TOLERANCE = 1e-4


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise UsageError("adapting a TFLite bundle needs ai-edge-litert (pip install 'hemaedge[edge]')") from None
    return schema_py_generated


@dataclass(frozen=True)
class ClassifierEnd:
    """Where a TFLite model's float classifier (FULLY_CONNECTED -> SOFTMAX at its output) lives."""

    features: int   # tensor index of the FULLY_CONNECTED input: the backbone's features (N, F)
    weight: int     # tensor index of its (classes, F) float32 weight
    bias: int       # tensor index of its (classes,) float32 bias
    weight_at: int  # byte offset of the weight buffer's data in the model file
    bias_at: int
    w0: np.ndarray  # (F, classes): probabilities = softmax(features @ w0 + b0)
    b0: np.ndarray  # (classes,)


def _buffer_span(model, tensor, data: bytes) -> tuple[int, int]:
    """(byte offset, length) of a constant tensor's data in the file."""
    buf = model.Buffers(tensor.Buffer())
    if buf.DataLength():
        # the Data vector is field 0 of the Buffer table (vtable slot 4)
        return buf._tab.Vector(buf._tab.Offset(4)), buf.DataLength()
    if buf.Offset() > 1:  # large models keep buffers after the flatbuffer (offset from the file's start)
        return int(buf.Offset()), int(buf.Size())
    return -1, 0


def _float_constant(model, g, index: int, data: bytes, what: str, where: str) -> tuple[int, np.ndarray]:
    fb = _schema()
    t = g.Tensors(index)
    if t.Type() != fb.TensorType.FLOAT32:
        raise UsageError(f"{where}: the classifier's {what} is not float32 (an integer classifier layer cannot "
                         "be refitted in place); use the bundle's Keras source")
    at, length = _buffer_span(model, t, data)
    shape = tuple(int(v) for v in t.ShapeAsNumpy())
    if at < 0 or length != 4 * int(np.prod(shape)) or at + length > len(data):
        raise UsageError(f"{where}: the classifier's {what} is not a constant stored in the model file")
    return at, np.frombuffer(data, np.float32, int(np.prod(shape)), at).reshape(shape).copy()


def classifier_end(data: bytes, where: str = "model") -> ClassifierEnd:
    """The model's output must be SOFTMAX (beta 1) of a float FULLY_CONNECTED (no fused activation)
    with constant weight and bias; UsageError saying what differs otherwise."""
    fb = _schema()
    try:
        model = fb.Model.GetRootAs(data, 0)
        n_graphs = model.SubgraphsLength()
    except Exception as exc:  # a truncated or foreign file: flatbuffers raises plain errors
        raise UsageError(f"{where}: not a readable TFLite model ({type(exc).__name__})") from None
    if n_graphs != 1:
        raise UsageError(f"{where}: {n_graphs} subgraphs; the head fit reads single-graph models only")
    g = model.Subgraphs(0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    ops = [g.Operators(i) for i in range(g.OperatorsLength())]
    producer = {int(o): op for op in ops for o in op.OutputsAsNumpy()}
    outputs = g.OutputsAsNumpy()
    last = producer.get(int(outputs[0])) if g.OutputsLength() == 1 else None
    if last is None or codes[last.OpcodeIndex()] != fb.BuiltinOperator.SOFTMAX:
        raise UsageError(f"{where}: the model's output is not a SOFTMAX")
    opts = fb.SoftmaxOptions()
    if last.BuiltinOptions() is not None:
        opts.Init(last.BuiltinOptions().Bytes, last.BuiltinOptions().Pos)
        if abs(opts.Beta() - 1.0) > 1e-6:
            raise UsageError(f"{where}: the output SOFTMAX has beta {opts.Beta()}, not 1")
    fc = producer.get(int(last.InputsAsNumpy()[0]))
    if fc is None or codes[fc.OpcodeIndex()] != fb.BuiltinOperator.FULLY_CONNECTED:
        raise UsageError(f"{where}: the output SOFTMAX is not fed by a FULLY_CONNECTED layer")
    fc_opts = fb.FullyConnectedOptions()
    fc_opts.Init(fc.BuiltinOptions().Bytes, fc.BuiltinOptions().Pos)
    if fc_opts.FusedActivationFunction() != fb.ActivationFunctionType.NONE:
        raise UsageError(f"{where}: the classifier FULLY_CONNECTED has a fused activation")
    inputs = [int(i) for i in fc.InputsAsNumpy()]
    if len(inputs) < 3 or inputs[2] < 0:
        raise UsageError(f"{where}: the classifier FULLY_CONNECTED has no bias")
    features, weight, bias = inputs[:3]
    if g.Tensors(features).Type() != fb.TensorType.FLOAT32:
        raise UsageError(f"{where}: the classifier's input features are not float32")
    weight_at, w = _float_constant(model, g, weight, data, "weight", where)
    bias_at, b = _float_constant(model, g, bias, data, "bias", where)
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise UsageError(f"{where}: classifier weight {w.shape} and bias {b.shape} do not fit together")
    for what, at, values in (("weight", weight_at, w), ("bias", bias_at, b)):
        old = values.tobytes()
        if data.find(old) != at or data.find(old, at + 1) != -1:
            raise UsageError(f"{where}: the classifier's {what} bytes occur more than once in the model file; "
                             "refusing to patch it (use the bundle's Keras source)")
    return ClassifierEnd(features, weight, bias, weight_at, bias_at, np.ascontiguousarray(w.T), b)


def patched_model(data: bytes, end: ClassifierEnd, w: np.ndarray, b: np.ndarray) -> bytes:
    """The model file with the classifier's weight and bias replaced by (w (F, classes), b), read back."""
    w = np.ascontiguousarray(np.asarray(w, np.float32).T)
    b = np.ascontiguousarray(np.asarray(b, np.float32))
    if w.shape != end.w0.T.shape or b.shape != end.b0.shape:
        raise ValueError(f"new head {w.T.shape} / {b.shape} does not match the model's {end.w0.shape} / {end.b0.shape}")
    out = bytearray(data)
    out[end.weight_at:end.weight_at + w.nbytes] = w.tobytes()
    out[end.bias_at:end.bias_at + b.nbytes] = b.tobytes()
    out = bytes(out)
    back = classifier_end(out, "patched model")
    if not (np.array_equal(back.w0, w.T) and np.array_equal(back.b0, b) and back.features == end.features):
        raise RuntimeError("the patched model does not read back the new classifier")  # pragma: no cover
    return out


class BundleHead:
    """A TFLite bundle as `--fit head` uses it: `predict(x)` gives the features of a prepared batch
    (the `extractor` interface of train/adapt_head.py), w0 / b0 the base head. It is also the base
    `train adapt` adapts (the interface of train/adapt_keras.KerasBase): no Keras `model`; the new head
    is written into a copy of its model file."""

    model = None  # nothing to retrain or predict with in Keras: the features come from LiteRT

    def __init__(self, root, threads: int | None = None):
        from hemaedge.edge.backends import LiteRTBackend
        from hemaedge.edge.bundle import load_bundle, sha256_file
        from hemaedge.edge.store import manifest_digest

        self.root = Path(root)
        self.bundle = load_bundle(self.root)  # checksums and schema verified
        if self.bundle.backend != "tflite":
            raise UsageError(f"{root}: a {self.bundle.backend} bundle; the head fit reads TFLite bundles")
        self.data = self.bundle.model_path.read_bytes()
        self.end = classifier_end(self.data, str(self.bundle.model_path))
        output = self.bundle.output
        if output.get("kind", "probabilities") != "probabilities":
            raise UsageError(f"{root}: the bundle outputs {output.get('kind')}; adapting expects a softmax classifier")
        self.backend = LiteRTBackend(self.bundle, self.bundle.model_path, threads=threads, keep_tensors=True)
        self.sha256 = sha256_file(self.bundle.model_path)
        self.origin = {"bundle": str(self.root), "bundle_manifest_sha256": manifest_digest(self.root),
                       "inference": self.bundle.manifest.get("inference") or {}}
        self.max_mismatch = 0.0

    @property
    def path(self) -> Path:
        return self.bundle.model_path

    def describe(self) -> str:
        return (f"base: the bundle {self.root} itself (its int8 backbone's features; the new head is written into "
                "a copy of its model file, no Keras source needed)")

    def head_parts(self):
        """(classifier layer: none in Keras, feature extractor: this bundle, W0, B0, parameters outside the classifier)."""
        return None, self, self.w0, self.b0, self.parameters() - self.w0.size - self.b0.size

    def set_head(self, w: np.ndarray, b: np.ndarray) -> None:
        self._new_head = (w, b)  # written into the model file by `write`

    def write(self, out: Path, side: dict, provenance: dict, cfg, new, replay, pbc_src, logf) -> dict:
        """With cfg.export, OUT/bundle: this model file with the fitted head patched in (write_adapted_bundle)."""
        provenance["training"]["features"] = ("the base bundle's own model (LiteRT), input of its classifier layer; "
                                              f"its answers matched softmax(f @ W0 + b0) to {self.max_mismatch:.1g}")
        result = {"provenance": provenance}
        if cfg.export:
            w, b = self._new_head
            result["bundle"] = write_adapted_bundle(out / "bundle", self, w, b, side, provenance, pbc_src, cfg, logf)
            provenance["bundle"] = {k: v for k, v in result["bundle"].items() if k != "path"}
        return result

    def close(self) -> None:
        pass

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def contract(self):
        return self.bundle.contract

    @property
    def w0(self) -> np.ndarray:
        return self.end.w0

    @property
    def b0(self) -> np.ndarray:
        return self.end.b0

    def sidecar(self) -> dict:
        """The manifest's sections a Keras sidecar would give `train adapt` (output, ood, domain, inference)."""
        m = self.bundle.manifest
        return {k: m[k] for k in ("output", "ood", "domain", "inference") if m.get(k)}

    def parameters(self) -> int:
        """Numbers stored in the model's constant tensors (weights, biases, quantisation tables aside)."""
        fb = _schema()
        model = fb.Model.GetRootAs(self.data, 0)
        g = model.Subgraphs(0)
        return int(sum(int(np.prod(g.Tensors(i).ShapeAsNumpy())) for i in range(g.TensorsLength())
                       if _buffer_span(model, g.Tensors(i), self.data)[1]))

    def predict(self, x: np.ndarray, verbose: int = 0) -> np.ndarray:
        """(N, F) features of a prepared batch, each batch checked against the model's own answer."""
        b = self.backend
        size = len(x) if b.batch_dynamic else (b.fixed_batch or 1)
        feats = []
        for s in range(0, len(x), size):
            chunk = x[s:s + size]
            k = len(chunk)
            if k < size:  # a fixed-batch model: pad the last chunk
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - k, axis=0)])
            p = b.predict(chunk)
            f = b.tensor(self.end.features).reshape(len(chunk), -1)
            mine = output_probabilities(softmax(f @ self.w0 + self.b0), self.bundle.output)
            self.max_mismatch = max(self.max_mismatch, float(np.abs(mine - p).max()))
            if self.max_mismatch > MATCH_TOLERANCE:
                raise DataError(f"{self.root}: the model's answer is not softmax(features @ W + b) of its classifier "
                                f"layer (off by {self.max_mismatch:.2g}); it cannot be adapted from the bundle alone")
            feats.append(f[:k])
        return np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, len(self.b0)), np.float32)


def open_head_base(base) -> tuple[BundleHead | None, str]:
    """(BundleHead, "") when `base` is a TFLite bundle whose classifier the head fit can refit in
    place, else (None, why not)."""
    root = Path(base)
    if not (root.is_dir() and (root / "manifest.json").is_file()):
        return None, f"{base} is not a bundle"
    try:
        return BundleHead(root), ""
    except UsageError as exc:
        return None, str(exc)


class HeadOnFeatures:
    """The adapted model in numpy, softmax(base features @ w + b): what the patched bundle must answer.
    It stands as the parity 'source' (export/pipeline.measure_parity) of the patched model."""

    output_kind = "probabilities"

    def __init__(self, base: BundleHead, w: np.ndarray, b: np.ndarray):
        self.base, self.w, self.b = base, w, b
        self.classes, self.contract = base.classes, base.contract

    def predict(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.base.predict(x) @ self.w + self.b)


def write_adapted_bundle(out_dir: Path, base: BundleHead, w: np.ndarray, b: np.ndarray, sidecar: dict,
                         provenance: dict, pbc_src, cfg, logf) -> dict:
    """OUT/bundle: the base's model.tflite with the fitted head patched in, checked on PBC val through the
    device's code path against softmax(features @ w + b), with the adapted temperature / OOD / domain
    sections, the base's export settings (the backbone and its int8 calibration are the base's) and the
    adaptation's provenance. The manifest is new, so a base's signature is not carried over."""
    import tempfile

    from hemaedge.export import parity as par
    from hemaedge.export.bundle_writer import confidence_sections, write_export_bundle
    from hemaedge.export.pipeline import ParityData, measure_parity

    m = base.bundle.manifest
    raw_output = {k: v for k, v in base.bundle.output.items() if k != "temperature"}
    limit = cfg.eval_limit * len(base.classes) if cfg.eval_limit else None
    parity = ParityData(pbc_src, base.classes, splits=("val",), limit=limit, seed=cfg.seed) if pbc_src else None
    source = HeadOnFeatures(base, w, b)
    with tempfile.TemporaryDirectory(prefix="hemaedge-adapt-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(patched_model(base.data, base.end, w, b))
        splits, verdict = measure_parity(source, path, base.contract, raw_output, parity, par.DEFAULT_MAX_DROP)
        if parity is not None:
            verdict["data"] = parity.describe()
        output, sections = confidence_sections(sidecar, raw_output)
        settings = {**(m.get("export") or {}),
                    "head": "refitted by `train adapt --fit head` and written into the base model.tflite in place "
                            "(classifier weight and bias buffers; every other byte is the base's)",
                    "base_model_sha256": base.sha256}
        source_info = {"kind": "tflite-bundle", "file": base.bundle.meta.model.file, "sha256": base.sha256,
                       "bundle": str(base.root), "bundle_manifest_sha256": base.origin["bundle_manifest_sha256"],
                       **({"keras_source": m["source"]} if m.get("source") else {})}
        bundle = write_export_bundle(out_dir, path, model_format=base.bundle.meta.model.format, classes=base.classes,
                                     contract=base.contract, output=output, source=source_info, settings=settings,
                                     metrics=par.manifest_metrics(splits, verdict) if splits else {},
                                     validation=verdict, name=f"{base.bundle.meta.name or base.root.name}-adapted",
                                     manifest_extra={**sections, "adaptation": provenance,
                                                     "inference": sidecar.get("inference")})
        size = path.stat().st_size
    if splits:
        logf("[adapted bundle] " + par.format_summary(splits, verdict).replace("\n", "\n[adapted bundle] "))
    val = splits.get("val") or {}
    return {"path": str(bundle), "format": base.bundle.meta.model.format, "status": verdict["status"],
            "pbc_val_accuracy_int8": val.get("accuracy"), "pbc_val_n_int8": int(val.get("n") or 0),
            "max_abs_prob_diff": val.get("max_abs_prob_diff"), "size_mb": round(size / 1e6, 3),
            "patched": "classifier weight and bias of the base model.tflite"}
