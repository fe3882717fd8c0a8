"""A Keras source as `train adapt` adapts it: the counterpart of train/adapt_bundle.BundleHead.

Both give `adapt()` the same few things, so it does not branch on the kind of base: `model` (a
Keras model to predict with and retrain, or None), `path`, `origin`, `sha256`, `sidecar()`,
`classes`, `contract`, `head_parts()` (the classifier layer, the feature extractor, its weights),
`set_head(w, b)`, `write(...)` (the adapted model and its int8 bundle) and `close()`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hemaedge.edge.atomic import atomic_write_json
from hemaedge.edge.errors import UsageError
from hemaedge.train.adapt import BUNDLE_FORMAT, AdaptConfig, Cells, resolve_base


class KerasBase:
    """model.keras + its sidecar (as `train finetune` writes them, or a bundle's Keras source)."""

    def __init__(self, base, why_not_bundle: str = ""):
        from hemaedge.export.source import load_source

        self.path, self.origin = resolve_base(base, why_not_bundle)
        source = load_source(self.path)
        if source.output_kind != "probabilities":
            raise UsageError(f"{self.path}: the base model outputs logits; adapting expects a softmax classifier")
        self.model, self.sha256, self._sidecar = source.model, source.sha256, dict(source.sidecar)
        self.classes, self.contract = list(source.classes), source.contract
        self._layer = None

    def describe(self) -> str:
        return f"base: the Keras model {self.path}"

    def sidecar(self) -> dict:
        return dict(self._sidecar)

    def head_parts(self):
        """(classifier layer, feature extractor, W0, B0, parameters outside the classifier)."""
        from hemaedge.train import adapt_head

        self._layer, extractor = adapt_head.classifier_layer(self.model)
        w0, b0 = (np.asarray(a, np.float32) for a in self._layer.get_weights())
        return self._layer, extractor, w0, b0, extractor.count_params()

    def set_head(self, w: np.ndarray, b: np.ndarray) -> None:
        self._layer.set_weights([w, b])

    def write(self, out: Path, side: dict, provenance: dict, cfg: AdaptConfig, new: Cells, replay: Cells, pbc_src,
              logf) -> dict:
        """OUT/model.keras + model.json, and with cfg.export the int8 bundle OUT/bundle."""
        from hemaedge.train.finetune import save_keras_atomic

        for layer in self.model.layers:
            layer.trainable = True
        save_keras_atomic(self.model, out / "model.keras")
        atomic_write_json(out / "model.json", side)
        result = {"provenance": provenance, "model": str(out / "model.keras")}
        if cfg.export:
            result["bundle"] = export_bundle(out, new, replay, pbc_src, cfg, provenance, logf, side["inference"])
        return result

    def close(self) -> None:
        import keras

        keras.backend.clear_session()


def export_bundle(out: Path, new: Cells, replay: Cells, pbc_src, cfg: AdaptConfig, provenance: dict, logf,
                  side_inference: dict | None = None) -> dict:
    """The adapted model as an int8 bundle (the default's format), provenance in its manifest and the
    test-time views its OOD levels were set for (`inference.views`: the base bundle's unless --views)."""
    from hemaedge.export.pipeline import ParityData, export_one
    from hemaedge.export.source import load_source

    source = load_source(out / "model.keras")
    rng = np.random.default_rng(cfg.seed + 7)
    pool = np.concatenate([new.images, replay.images]) if len(replay) else new.images
    calib = [pool[i] for i in np.sort(rng.permutation(len(pool))[:cfg.calib_count])]
    # eval_limit is per class elsewhere; the export's parity reader takes a total
    limit = cfg.eval_limit * len(source.classes) if cfg.eval_limit else None
    parity = ParityData(pbc_src, source.classes, splits=("val",), limit=limit, seed=cfg.seed) if pbc_src else None
    row = export_one(BUNDLE_FORMAT, source, out / "bundle", parity_data=parity, calib_images=calib,
                     calib_info={"images": len(calib), "from": "new training cells + replay sample"},
                     manifest_extra={"adaptation": provenance, "inference": side_inference}, log=logf)
    provenance["bundle"] = {"format": BUNDLE_FORMAT, "status": row.get("status"),
                            "pbc_val_accuracy_int8": row.get("val_accuracy"),
                            "pbc_val_n_int8": int(len(parity.data("val")[1])) if parity else 0,
                            "size_mb": row.get("size_mb")}
    return {"path": str(out / "bundle"), **provenance["bundle"]}


def open_base(cfg: AdaptConfig):
    """The base to adapt: with --fit head a TFLite bundle is adapted alone (BundleHead); otherwise,
    or when its classifier cannot be refitted in place, its Keras source (KerasBase)."""
    why_not = ""
    if cfg.fit == "head":
        from hemaedge.train.adapt_bundle import open_head_base

        base, why_not = open_head_base(cfg.base)
        if base is not None:
            return base
        why_not = f"its classifier cannot be refitted in place ({why_not})" if why_not else ""
    return KerasBase(cfg.base, why_not)
