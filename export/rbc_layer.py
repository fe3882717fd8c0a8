"""Fit the red-cell bundle's size layer (edge/rbc_layer.py) on the host and write it into the manifest.

The layer is a multinomial logistic regression (scikit-learn) over [the int8 model's log-probabilities,
the detected cell's size relative to its field], fitted on the labelled points of Chula TRAIN frames
through the device path (detection, crops, int8 bundle, `--rbc-scale auto`): the cells the device
classifies, not the labelled crops. Standardisation is folded into the weights, so the manifest holds
plain numbers (`red_cells.layer`) and the device runs one matrix product; nothing is pickled.
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_FEATURES = ("relative_area", "relative_length")  # chosen on Chula val (docs/redcells.md)
DEFAULT_C = 1.0


def labelled_inputs(bundle, backend, chula: Path, split: str, features, scale: str = "auto") -> dict:
    """Per labelled point of the split's frames: layer input row (`edge.rbc_layer.layer_inputs` of the
    model alone), label, whether a detection holds it, frame number. Missed points get a zero row."""
    from hemaedge.train.rbc_points import matched_points
    from hemaedge.edge.rbc_layer import layer_inputs
    from hemaedge.edge.rbc_morphology import manifest_reference_diameter

    ref = manifest_reference_diameter(bundle)
    width = len(bundle.classes) + len(features)
    rows = {k: [] for k in ("x", "y", "found", "frame")}
    last, frame_no, inputs = None, -1, None
    for label, res, k, image in matched_points(bundle, backend, chula, split, scale, layer=False):
        if res is not last:
            last, frame_no = res, frame_no + 1
            inputs = layer_inputs(res.probabilities, res.cells, ref, features, image) if res.cells else None
        rows["x"].append(inputs[k] if k is not None else np.zeros(width))
        rows["y"].append(label)
        rows["found"].append(k is not None)
        rows["frame"].append(frame_no)
    return {k: np.asarray(v) for k, v in rows.items()}


def fit_layer(x: np.ndarray, y: np.ndarray, classes, features, c: float = DEFAULT_C) -> dict:
    """The manifest section of a layer fitted on input rows `x` (labels `y`): standardised
    logistic regression, the scaler folded into coef/intercept (z = x @ coef.T + intercept)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from hemaedge.edge.errors import DataError

    k = len(classes)
    missing = sorted(set(range(k)) - set(np.unique(y).tolist()))
    if missing:
        raise DataError(f"the fitting points hold no {', '.join(classes[i] for i in missing)}: the layer needs "
                        "every class; fit it on a split with all of them (Chula train)")
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x), y)
    coef, intercept = lr.coef_, lr.intercept_
    if k == 2:  # scikit-learn's binary form: one row for the second class; softmax over [0, z] is the same
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    coef = coef / scaler.scale_
    intercept = intercept - coef @ scaler.mean_
    return {"features": list(features), "classes": list(classes), "c": c,
            "coef": np.round(coef, 6).tolist(), "intercept": np.round(intercept, 6).tolist()}


def write_layer(bundle_dir: Path, chula: Path, features=DEFAULT_FEATURES, c: float = DEFAULT_C,
                split: str = "train", threads: int | None = None) -> dict:
    """Fit on the split's labelled points and write `red_cells.layer` into the bundle's manifest.
    The model file is not touched (its checksum and `edge verify` hold); a signed bundle is refused."""
    from hemaedge.edge.atomic import atomic_write_json
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import verify_bundle
    from hemaedge.edge.errors import BundleError, UsageError
    from hemaedge.edge.rbc_layer import FEATURES, SizeLayer
    from hemaedge.export.rbc_ood import load_unsigned

    if split == "test":
        raise UsageError("the size layer is never fitted on the test split; use --split train")
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise UsageError(f"unknown layer feature(s) {', '.join(unknown)}; choose from {', '.join(FEATURES)}")
    bundle_dir = Path(bundle_dir)
    bundle = load_unsigned(bundle_dir, "adding a layer", "Fit it on")
    manifest = bundle.manifest
    if not manifest.get("red_cells"):
        raise BundleError(f"{bundle_dir}: has no red_cells section: is it a red-cell bundle? Export it "
                          "with --data CROPS_TREE from `hemaedge data rbc-crops`")
    d = labelled_inputs(bundle, load_backend(bundle, threads=threads), chula, split, list(features))
    m = d["found"]
    section = fit_layer(d["x"][m], d["y"][m], list(bundle.classes), list(features), c)
    section.update({"points": int(m.sum()),
                    "fitted_on": f"labelled points of Chula RBC-12 {split} frames (frame split of "
                                 "`hemaedge data rbc-crops`, seed 42), device path, --rbc-scale auto",
                    "fitted": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})
    SizeLayer(section, list(bundle.classes), str(bundle_dir))  # what the device will read must load
    manifest["red_cells"]["layer"] = section
    atomic_write_json(bundle_dir / "manifest.json", manifest)
    problems = verify_bundle(bundle_dir)
    if problems:
        raise BundleError(f"{bundle_dir}: does not verify after adding the layer: {'; '.join(problems)}")
    logger.info("%s: size layer %s fitted on %d points", bundle_dir, features, section["points"])
    return section
