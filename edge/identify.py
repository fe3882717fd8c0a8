"""What a detection is counted as: the rules that make the segmenter's kind and the
classifier's class agree. All thresholds live here.

* A **platelet candidate** (a small stained speck) can only end as a platelet: when the
  classifier agrees it is counted as one; when it does not (its top class is another, or its
  confidence is low) it is kept as an unconfirmed platelet candidate, flagged for review and
  not counted. It never becomes a white cell.
* A **nucleated detection** takes its classifier class, except that it becomes
  **unidentified** (as CellaVision reports it) and is flagged for review when the classifier
  calls it a platelet, or its confidence is below `UNIDENTIFIED_BELOW`, or (when the bundle
  provides one) its out-of-distribution score is above the OOD threshold. A cell classified
  with a confidence between that and `REVIEW_BELOW` keeps its class and is flagged for review.
* A model without a "platelet" class cannot confirm platelets: candidates are then counted by
  the segmenter alone (confidence left empty).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLATELET = "platelet"
ERYTHROBLAST = "erythroblast"
UNIDENTIFIED = "unidentified"
# Below this top-class probability a cell is flagged for review (CLI: --review-threshold).
REVIEW_BELOW = 0.6
# Below this top-class probability a nucleated cell is unidentified (CLI: --unidentified-below).
# With the default bundle on 191 PBC fields (every 9th of pbc_raw_val) 5.9% of the correctly
# classified central cells and 4 of the 6 misclassified ones are below 0.4. Not calibrated per
# class (docs/edge.md).
UNIDENTIFIED_BELOW = 0.4
# A detection whose size leaves its kind open (a platelet clump or a small nucleus, see
# segment.SegmentParams) becomes a platelet only when the classifier is at least this sure;
# otherwise it stays nucleated (and, if called platelet, unidentified): losing a white cell
# from the count silently is worse than flagging a clump for review.
PLATELET_KIND_ABOVE = 0.5
# ... and only when its box is at most this many red-cell diameters across: labelled PBC platelet
# clumps of that size band are 0.97-1.75 d (5th-95th percentile, median 1.16), BCCD white cells
# 1.29-2.45 d (median 1.79): a larger detection is a white cell whatever the classifier says.
PLATELET_CLUMP_MAX_SIDE_RBC = 1.75
# Above this out-of-distribution score a nucleated cell is unidentified (None: no OOD score).
OOD_ABOVE: float | None = None


@dataclass(frozen=True)
class Decision:
    label: str  # class counted, "unidentified", or "platelet"
    confidence: float  # the classifier's probability for `label` (NaN: not classified)
    flag: str  # "" or why a human should look at the cell
    counted: bool  # False: recorded but not in the differential (unconfirmed platelet candidate)


def is_platelet_clump(prob_row: np.ndarray, classes: list[str], side_rbc: float | None,
                      above: float = PLATELET_KIND_ABOVE, max_side_rbc: float = PLATELET_CLUMP_MAX_SIDE_RBC) -> bool:
    """A size-ambiguous detection (box side `side_rbc` red-cell diameters) that is a platelet clump."""
    if PLATELET not in classes or side_rbc is None or side_rbc > max_side_rbc:
        return False
    return float(prob_row[classes.index(PLATELET)]) >= above


def is_unidentified(prob_row: np.ndarray, ood_score: float | None = None, threshold: float = UNIDENTIFIED_BELOW,
                    ood_threshold: float | None = OOD_ABOVE) -> bool:
    """The classifier is not sure enough (or the cell is unlike anything it was trained on)."""
    if float(np.max(prob_row)) < threshold:
        return True
    return ood_score is not None and ood_threshold is not None and ood_score > ood_threshold


def decide(kind: str, prob_row: np.ndarray | None, classes: list[str], threshold: float = UNIDENTIFIED_BELOW,
           ood_score: float | None = None, review_below: float = REVIEW_BELOW) -> Decision:
    """The label a detection of `kind` ("wbc" = nucleated, "platelet") is counted as."""
    if kind == PLATELET:
        if prob_row is None or PLATELET not in classes:
            return Decision(PLATELET, float("nan"), "", True)
        p = float(prob_row[classes.index(PLATELET)])
        if classes[int(np.argmax(prob_row))] == PLATELET and p >= threshold:
            return Decision(PLATELET, p, f"confidence {p:.2f} below {review_below}" if p < review_below else "", True)
        return Decision(PLATELET, p, "platelet candidate not confirmed by the classifier", False)
    top = int(np.argmax(prob_row))
    conf = float(prob_row[top])
    if classes[top] == PLATELET:
        return Decision(UNIDENTIFIED, conf, "nucleated cell classified as platelet", True)
    if is_unidentified(prob_row, ood_score, threshold):
        why = "low confidence" if conf < threshold else "unlike the training cells (OOD score)"
        return Decision(UNIDENTIFIED, conf, f"{why} ({classes[top]} {conf:.2f})", True)
    return Decision(classes[top], conf, f"confidence {conf:.2f} below {review_below}" if conf < review_below else "", True)
