"""The red-cell bundle's OOD limit, fitted on the cells the device actually classifies.

`train finetune` fits a bundle's `domain.ood` limit on the labelled validation crops: whole cells
centred on their labelled points. On the device the red-cell stage classifies every DETECTED
cell of a frame: partly hidden, overlapping, off-centre ones too, which score higher. A limit
fitted on labelled crops therefore sits too close to what an ordinary in-domain run gives (on
Chula val frames: run mean 0.352 against a limit of 0.390), and the check would fire on the
training microscope itself. This refits it on the device path: `RedCellClassifier` (detection,
crops, int8 bundle) over held-out frames of the training microscope, whole cells only, as the
device's own domain check (`edge.rbc_morphology`) collects them; the limit is the one of
`edge.domain.ood_limit` (a run of `group` cells exceeds it 1 % of the time).
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def load_unsigned(bundle_dir: Path, change: str, verb: str):
    """The bundle whose manifest is about to be edited in place; a signed one is refused (the signature covers
    the manifest, so the edit would break it)."""
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.errors import BundleError

    bundle = load_bundle(bundle_dir)
    if bundle.manifest.get("signature"):
        raise BundleError(f"{bundle_dir}: is signed; {change} would break the signature. "
                          f"{verb} an unsigned export, then sign it (hemaedge export ... --sign-key)")
    return bundle


def detected_cell_scores(bundle, backend, images) -> np.ndarray:
    """OOD scores of the whole (not border-cut) red cells the device classifies on `images`
    (RGB frames), each frame its own field as in `edge run` on an image folder."""
    from hemaedge.edge.confidence import ood_scores
    from hemaedge.edge.rbc_morphology import RedCellClassifier
    from hemaedge.edge.ruler import Ruler

    stage = RedCellClassifier(bundle, backend)
    ruler = Ruler(same_slide=False)
    scores = []
    for img in images:
        res = stage.process(img, ruler.read(img).diameter)
        if res.probabilities is None:
            continue
        whole = np.array([not c.edge for c in res.cells], bool)
        scores.append(ood_scores(res.probabilities[whole]))
    return np.concatenate(scores) if scores else np.zeros(0)


def refit_red_cell_ood(bundle_dir: Path, images, fitted_on: str, threads: int | None = None) -> dict:
    """Write the bundle manifest's `domain.ood` from the device path on `images`; returns
    {"before": old block, "after": new block}. The model file is not touched, so its checksum
    (and `edge verify`) still holds; a signed bundle is refused (the signature covers the manifest)."""
    from hemaedge.edge.atomic import atomic_write_json
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import verify_bundle
    from hemaedge.edge.domain import MIN_CELLS, ood_limit
    from hemaedge.edge.errors import BundleError, DataError

    bundle_dir = Path(bundle_dir)
    bundle = load_unsigned(bundle_dir, "refitting its OOD limit", "Refit")
    manifest = bundle.manifest
    if not (manifest.get("domain") or {}).get("ood"):
        raise BundleError(f"{bundle_dir}: has no domain section to refit; export it from a model trained "
                          "or snapshotted with this version of hemaedge")
    scores = detected_cell_scores(bundle, load_backend(bundle, threads=threads), images)
    if len(scores) < 10 * MIN_CELLS:
        raise DataError(f"only {len(scores)} whole red cells were classified on the given frames; an OOD limit "
                        f"needs at least {10 * MIN_CELLS}: pass more frames of the training microscope")
    before = dict(manifest["domain"]["ood"])
    after = {**ood_limit(scores, group=int(before.get("group") or 20)), "cells": int(len(scores)),
             "fitted_on": fitted_on,
             "fitted": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "replaces": {k: before[k] for k in ("val_mean", "limit") if k in before}}
    manifest["domain"]["ood"] = after
    atomic_write_json(bundle_dir / "manifest.json", manifest)
    problems = verify_bundle(bundle_dir)
    if problems:  # cannot happen unless the folder changed under us; say so rather than leave it
        raise BundleError(f"{bundle_dir}: does not verify after the refit: {'; '.join(problems)}")
    logger.info("%s: red-cell OOD limit %s -> %s (%d whole detected cells)", bundle_dir,
                before.get("limit"), after["limit"], len(scores))
    return {"before": before, "after": after}
