"""What could separate BCCD eosinophils from neutrophils (issue #14, the adapted model's main error)?
BCCD TRAIN cells only, cross-validated; the test split is never read.

    python -m hemaedge.benchmarks.tools.eos_neut_features --run ~/hemaedge-runs/adapt/steps-packaged/run-train \
        --bundle src/hemaedge/models/default --out benchmarks/results/eos_neut_features

The cells are the reviewed device crops of `adapt_bccd`'s BCCD train run (the reviewer simulated from
wbc_subtypes.csv). Each feature set is scored by the same linear classifier (L2 logistic regression,
standardised inputs, C in 1e-4..10 chosen by an inner 5-fold search) in 5 x repeated stratified 5-fold
cross-validation, eosinophil against neutrophil:

- `backbone`: the bundle's own int8 backbone features (input of its classifier layer, train/adapt_bundle.py),
  averaged over the bundle's test-time views: what `train adapt --fit head` can use;
- `colour`: 8 numbers measured on the crop in CIE Lab: the nucleus (the darkest 12% of the pixels within
  the crop's central disc) and the ring around it (pixels within 9 px of the nucleus, neither nucleus nor
  background): mean a*, b*, L of each, the ring minus the nucleus a* and b*;
- `shape`: number of nucleus pieces of at least 20 px (lobes as the threshold splits them), solidity;
- `backbone + colour + shape`.
If the colour or shape numbers add to the backbone's, the device could feed them to the classifier layer
(the model's input stays the same); if not, the information is not in these 640x480 JPEG crops.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = ("eosinophil", "neutrophil")
COLOUR = ("nucleus a*", "nucleus b*", "nucleus L", "ring a*", "ring b*", "ring L", "ring - nucleus a*",
          "ring - nucleus b*")
# (no nucleus area: the nucleus is a fixed share of the disc by construction)
SHAPE = ("nucleus pieces", "nucleus solidity")


def hand_features(img: np.ndarray) -> np.ndarray:
    """COLOUR + SHAPE numbers of one uint8 RGB crop (the cell at its centre)."""
    import cv2

    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    n = img.shape[0]
    yy, xx = np.mgrid[:n, :n]
    disc = (yy - n / 2) ** 2 + (xx - n / 2) ** 2 <= (0.42 * n) ** 2
    L = lab[..., 0]
    nucleus = disc & (L <= np.quantile(L[disc], 0.12))
    nucleus = cv2.morphologyEx(nucleus.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    if not nucleus.any():
        nucleus = disc & (L <= np.quantile(L[disc], 0.12))
    near = cv2.dilate(nucleus.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (19, 19))).astype(bool)
    background = L >= np.quantile(L, 0.85)
    ring = near & ~nucleus & ~background
    if not ring.any():
        ring = near & ~nucleus
    nuc, rin = lab[nucleus].mean(0), lab[ring].mean(0)
    pieces = cv2.connectedComponentsWithStats(nucleus.astype(np.uint8))[2][1:, cv2.CC_STAT_AREA]
    contours, _ = cv2.findContours(nucleus.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours)) if contours else None
    solidity = float(nucleus.sum() / max(1.0, cv2.contourArea(hull))) if hull is not None else 0.0
    return np.array([nuc[1], nuc[2], nuc[0], rin[1], rin[2], rin[0], rin[1] - nuc[1], rin[2] - nuc[2],
                     float((pieces >= 20).sum()), solidity], np.float64)


def cv_scores(x: np.ndarray, y: np.ndarray, repeats: int = 5, seed: int = 0) -> dict:
    """Accuracy and ROC AUC of a standardised L2 logistic regression over repeated stratified 5-fold CV."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    accs, aucs = [], []
    folds = RepeatedStratifiedKFold(n_splits=5, n_repeats=repeats, random_state=seed)
    for train, test in folds.split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, 1, 6), cv=5, max_iter=500))
        clf.fit(x[train], y[train])
        p = clf.predict_proba(x[test])[:, 1]
        accs.append(float(((p > 0.5) == y[test]).mean()))
        aucs.append(float(roc_auc_score(y[test], p)))
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_sd": float(np.std(accs, ddof=1)),
            "auc_mean": float(np.mean(aucs)), "auc_sd": float(np.std(aucs, ddof=1)), "folds": len(accs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="adapt_bccd's reviewed BCCD TRAIN run folder")
    ap.add_argument("--bundle", required=True, help="the bundle whose backbone features are scored")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True, help="OUT.md and OUT.json")
    args = ap.parse_args(argv)
    if "test" in args.run.name:
        raise SystemExit("eos_neut_features reads BCCD train cells only; give the train run")

    from hemaedge.benchmarks.tools.result_files import write_result
    from hemaedge.edge.tta import bundle_views
    from hemaedge.train.adapt import load_new_cells
    from hemaedge.train.adapt_bundle import BundleHead
    from hemaedge.train.adapt_head import view_features
    from hemaedge.train.finetune import machine

    base = BundleHead(args.bundle)
    cells = load_new_cells([str(args.run)], base.classes, base.contract.size)
    keep = np.isin(cells.labels, [base.classes.index(c) for c in CLASSES])
    cells = cells.subset(np.flatnonzero(keep))
    y = (cells.labels == base.classes.index(CLASSES[1])).astype(int)  # 1 = neutrophil
    views_name, views = bundle_views(base.bundle.manifest)
    backbone = view_features(base, cells.images, base.contract, views).mean(0).astype(np.float64)
    hand = np.stack([hand_features(im) for im in cells.images])
    sets = {"backbone": backbone, "colour": hand[:, :len(COLOUR)], "shape": hand[:, len(COLOUR):],
            "colour + shape": hand, "backbone + colour + shape": np.concatenate([backbone, hand], 1)}
    scores = {name: cv_scores(x, y, args.repeats) for name, x in sets.items()}
    single = {}
    from sklearn.metrics import roc_auc_score

    for i, name in enumerate(COLOUR + SHAPE):
        auc = float(roc_auc_score(y, hand[:, i]))
        single[name] = {"auc": round(max(auc, 1 - auc), 4), "higher_in": CLASSES[1] if auc >= 0.5 else CLASSES[0],
                        "eosinophil_median": round(float(np.median(hand[y == 0, i])), 2),
                        "neutrophil_median": round(float(np.median(hand[y == 1, i])), 2)}
    command = "python -m hemaedge.benchmarks.tools.eos_neut_features " + " ".join(argv or sys.argv[1:])
    data = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "load_average": os.getloadavg(), "run": str(args.run), "bundle": str(args.bundle), "views": views_name,
            "cells": {c: int((y == k).sum()) for k, c in enumerate(CLASSES)}, "scores": scores, "single": single}
    lines = ["# BCCD eosinophil vs neutrophil: which numbers separate them? (BCCD train only)", "",
             f"Command: `{command}`", "",
             f"Machine {data['machine']}; {data['date']}; load average {data['load_average'][0]:.1f}. Cells: the "
             f"reviewed device crops of `{args.run}` ({data['cells']['eosinophil']} eosinophils, "
             f"{data['cells']['neutrophil']} neutrophils; BCCD test never read). Backbone: `{args.bundle}`'s own int8 "
             f"features, mean over its `{views_name}` views.", "",
             f"Each set: standardised L2 logistic regression (C in 1e-4..10 by inner 5-fold search), {args.repeats} x repeated "
             "stratified 5-fold cross-validation; mean ± sd over the folds.", "",
             "| numbers | how many | accuracy | ROC AUC |", "|---|---|---|---|"]
    for name, x in sets.items():
        sc = scores[name]
        lines.append(f"| {name} | {x.shape[1]} | {100 * sc['accuracy_mean']:.1f} ± {100 * sc['accuracy_sd']:.1f}% | "
                     f"{sc['auc_mean']:.3f} ± {sc['auc_sd']:.3f} |")
    lines += ["", "Each hand-measured number alone (ROC AUC on all these cells, no fitting; medians per class):", "",
              "| number | AUC | higher in | eosinophil median | neutrophil median |", "|---|---|---|---|---|"]
    for name, v in single.items():
        lines.append(f"| {name} | {v['auc']:.3f} | {v['higher_in']} | {v['eosinophil_median']} | "
                     f"{v['neutrophil_median']} |")
    write_result(args.out, data, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
