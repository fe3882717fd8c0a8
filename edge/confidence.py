"""Confidence that means what it says: per-cell out-of-distribution scores and the
"unidentified" test, from the manifest's `ood` section. numpy only (runs on the device).

The probabilities reaching here are already temperature-scaled (`output.temperature`, applied
by `preprocess.output_probabilities` in every backend). The OOD score of a cell is the negative
log of its largest probability (max-softmax, Hendrycks & Gimpel 2017, after temperature
scaling): 0 for a certain answer, growing as the model hesitates. Our bundles output
probabilities, not logits, so logit-based scores (energy, max logit) are not available from
every bundle; this one is.

The manifest's `ood` section (written at training/snapshot time from the validation split of
the training domain, see `ood_section`; copied into the bundle at export; re-calibrated on the
bundle's own outputs by `benchmarks/tools/ood_calibrate.py`) holds the score's statistics on
the training classes and two levels: `threshold`, the score that `quantile` (default 95 %) of
correctly classified in-distribution validation cells stay below, and
`unidentified_threshold`, the one `unidentified_quantile` (default 99.5 %) stay below. A
nucleated cell above the strict level is "unidentified" (reason "out of distribution"), one
between the two is counted and flagged for review: the rule is `identify.OodRule` /
`identify.decide`, the one implementation the pipeline, the benchmark tools and the run
folders (and so the review page) share.

Because the score is a function of the top probability, on these bundles the OOD rule is a
second, calibrated confidence threshold: exp(-threshold) is the confidence below which a cell is
out of distribution (0.136 -> 0.873 for the epoch-4 checkpoint). Energy / max-logit / feature
distance scores need a model output the bundles do not have yet (docs/edge.md).
"""
from __future__ import annotations

import numpy as np

OOD_SCORE = "neg-log-max-prob"
DEFAULT_QUANTILE = 0.95  # review level: 1 in 20 confident, right training-domain cells is flagged
# unidentified level: 1 in 200 of them is left out of the count (the cost on the training domain)
UNIDENTIFIED_QUANTILE = 0.995


def ood_scores(probabilities: np.ndarray) -> np.ndarray:
    """Per-cell OOD score (higher = less like the training classes); (N, C) -> (N,)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.size == 0:
        return np.zeros(len(p), dtype=np.float32)
    return (-np.log(np.clip(p.max(axis=1), 1e-12, 1.0))).astype(np.float32)


def ood_section(val_probabilities: np.ndarray, val_labels=None, quantile: float = DEFAULT_QUANTILE,
                unidentified_quantile: float | None = UNIDENTIFIED_QUANTILE) -> dict:
    """The manifest's `ood` section from in-distribution validation probabilities (the review
    level at `quantile`, the unidentified level at `unidentified_quantile`; None: one tier).

    With labels, the statistics use the correctly classified cells only (what a confident,
    in-distribution answer looks like) and the share of wrong answers above the threshold is
    recorded too."""
    s = ood_scores(val_probabilities)
    ref = s
    out = {"score": OOD_SCORE, "quantile": float(quantile), "n": int(len(s))}
    if val_labels is not None:
        y = np.asarray(val_labels)
        right = np.asarray(val_probabilities).argmax(axis=1) == y
        ref = s[right] if right.any() else s
        out["n_right"] = int(right.sum())  # the levels' sample size (train adapt's minimum per level)
    thr = float(np.quantile(ref, quantile)) if len(ref) else float("inf")
    out.update(mean=round(float(ref.mean()), 6) if len(ref) else None,
               std=round(float(ref.std()), 6) if len(ref) else None,
               threshold=round(thr, 6))
    if unidentified_quantile is not None:
        if not quantile <= unidentified_quantile < 1:
            raise ValueError(f"unidentified quantile {unidentified_quantile} must lie in [{quantile}, 1)")
        out["unidentified_quantile"] = float(unidentified_quantile)
        out["unidentified_threshold"] = round(float(np.quantile(ref, unidentified_quantile)) if len(ref)
                                              else float("inf"), 6)
    if val_labels is not None and (~right).any():
        out["wrong_above_threshold"] = round(float(np.mean(s[~right] > thr)), 4)
        if unidentified_quantile is not None:
            out["wrong_above_unidentified_threshold"] = round(float(np.mean(s[~right] > out["unidentified_threshold"])), 4)
    return out


__all__ = ["OOD_SCORE", "DEFAULT_QUANTILE", "UNIDENTIFIED_QUANTILE", "ood_scores", "ood_section"]
