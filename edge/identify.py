"""What a detection is counted as: the rules that make the segmenter's kind and the
classifier's class agree. All thresholds live here.

* A **platelet candidate** (a small stained speck) can only end as a platelet: when the
  classifier agrees it is counted as one; when it does not (its top class is another, or its
  confidence is low) it is kept as an unconfirmed platelet candidate, flagged for review and
  not counted. It never becomes a white cell.
* A **nucleated detection** takes its classifier class, except that it becomes
  **unidentified** (as CellaVision reports it) and is flagged for review, with the reason, when
  - the classifier calls it a platelet ("classified as platelet"), or
  - its confidence is below `UNIDENTIFIED_BELOW` ("low confidence"), or
  - its out-of-distribution score (`confidence.ood_scores`) is above the strict OOD level
    ("out of distribution"): the bundle's `ood.unidentified_threshold`, the score 99.5 % of the
    correctly classified training-domain validation cells stay below (`OodRule.from_bundle`).
  A cell classified with a confidence between `UNIDENTIFIED_BELOW` and `REVIEW_BELOW`, or whose
  OOD score is above the bundle's review level `ood.threshold` (95 % of those cells stay
  below) but not above the strict one, keeps its class, is counted, and is flagged for review
  with the reason (two tiers, as CellaVision counts a cell it is unsure of but asks for a look).
  Bundles whose `ood` section has only `threshold` (exported before the two tiers) keep the
  one-tier rule (above it: unidentified); bundles without an `ood` section keep the
  confidence-only rule; the run summary says which.
* A model without a "platelet" class cannot confirm platelets: candidates are then counted by
  the segmenter alone (confidence left empty).
* A cell cut by the frame edge is not counted (a lab counts whole cells), so a run that does not
  count such cells does not classify them either: it is recorded as **not classified**
  (`not_classified`), confidence empty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hemaedge.edge.confidence import OOD_SCORE, ood_scores
from hemaedge.edge.errors import BundleError, UsageError

PLATELET = "platelet"
ERYTHROBLAST = "erythroblast"
UNIDENTIFIED = "unidentified"
# The label of a detection the run did not classify (cut by the frame edge, not counted).
NOT_CLASSIFIED = "not classified"
CUT_NOT_CLASSIFIED = "cut by the frame edge: not classified, not counted"
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
# from the count silently is worse than flagging a clump for review. 0.5 until the whole pipeline
# was measured on BCCD (8 train + val small lymphocytes of 1.25-1.73 d scored 0.56-0.98 and were
# lost as clumps), then 0.99; 0.995 since the default-v6 bundle (2026-12-03), which scores one BCCD
# val lymphocyte 0.993: at 0.995 it stays a white cell, while 195 of the 210 size-ambiguous
# detections of PBC platelet fields stay clumps (197 at 0.99; PBC fields with the right nucleated
# count 98.0 vs 98.1 %): `benchmarks/results/identify_levels.md`, chosen on BCCD train + val and PBC val.
PLATELET_KIND_ABOVE = 0.995
# A platelet candidate is counted only when the classifier's top class is platelet with at least
# this probability. It was the unidentified level (0.4) until 2026-12-03, then 0.5 with the
# default-v6 bundle; `benchmarks/results/identify_levels.md` chooses it on BCCD train + val
# (every cell, IoU >= 0.5; test only reported) as the level whose smaller of recall and precision
# is largest. With the ruler's per-camera median (2026-12-03 evening): 82.5 / 80.3 % at 0.5,
# 81.2 / 81.7 % at 0.6.
PLATELET_CONFIRM_ABOVE = 0.6
# ... and only when its box is at most this many red-cell diameters across: labelled PBC platelet
# clumps of that size band are 0.97-1.75 d (5th-95th percentile, median 1.16), BCCD white cells
# 1.29-2.45 d (median 1.79): a larger detection is a white cell whatever the classifier says.
PLATELET_CLUMP_MAX_SIDE_RBC = 1.75

# A platelet candidate lying on a red cell: a platelet on top of it, or an inclusion (a
# Howell-Jolly body, a parasite) or stain in its pallor; size and colour cannot tell which.
ON_RED_CELL = "platelet candidate lying on a red cell (an overlap or an inclusion): not counted"
# Why a nucleated cell is unidentified (Decision.reason; summary.json counts each).
AS_PLATELET = "classified as platelet"
LOW_CONFIDENCE = "low confidence"
OUT_OF_DISTRIBUTION = "out of distribution"
REASONS = (AS_PLATELET, LOW_CONFIDENCE, OUT_OF_DISTRIBUTION)


@dataclass(frozen=True)
class Decision:
    label: str  # class counted, "unidentified", or "platelet"
    confidence: float  # the classifier's probability for `label` (NaN: not classified)
    flag: str  # "" or why a human should look at the cell
    counted: bool  # False: recorded but not in the differential (unconfirmed platelet candidate)
    reason: str = ""  # for "unidentified": one of REASONS
    ood_score: float = float("nan")  # the cell's OOD score (NaN: not computed)


@dataclass(frozen=True)
class OodRule:
    """The out-of-distribution part of the unidentified rule: a cell whose OOD score is above
    `threshold` is unidentified (threshold None: confidence-only rule); one above
    `flag_threshold` (None: no review tier) but not above `threshold` is counted and flagged
    for review. `source` says where the thresholds came from, `note` what a user should know
    (both go into summary.json)."""
    threshold: float | None = None
    source: str = "none"
    note: str = ""
    score: str = OOD_SCORE
    flag_threshold: float | None = None
    flag_source: str = "bundle"  # where the review level came from: "bundle", "user" or "none"

    @classmethod
    def from_bundle(cls, manifest: dict | None, override=None, review_level: float | None = None,
                    unidentified_below: float | None = None) -> "OodRule":
        """The rule for a bundle: its `ood` section's levels (calibrated on the training
        domain's validation split), unless `override` says otherwise: a number (your own
        unidentified level; the bundle's review level still flags cells below it), "off"
        (confidence only) or None/"auto" (the bundle's). `review_level` (a top probability,
        `parse_review_level`) replaces the bundle's review level: a counted cell less sure than
        that is flagged; it must not be below the unidentified level, the OOD one or the confidence
        one `unidentified_below` (UsageError)."""
        rule = cls._from_bundle(manifest, override)
        if review_level is None:
            return rule if rule.flag_threshold is not None else replace(rule, flag_source="none")
        p = parse_review_level(review_level)
        if rule.threshold is not None and p < math.exp(-rule.threshold):
            raise UsageError(f"--review-level {p:g} is below the unidentified level {math.exp(-rule.threshold):.3f} "
                             f"(OOD score {rule.threshold:g}): cells that unsure are already unidentified; give a "
                             f"review level between {math.exp(-rule.threshold):.3f} and 1")
        if unidentified_below is not None and p < unidentified_below:
            raise UsageError(f"--review-level {p:g} is below the unidentified level {unidentified_below:g} "
                             f"(--unidentified-below): cells that unsure are already unidentified; give a review "
                             f"level between {unidentified_below:g} and 1")
        kept = rule.note.split("; the bundle's review level")[0].split("; counted but flagged")[0]
        return replace(rule, flag_threshold=round(-math.log(p), 6), flag_source="user",
                       note=kept + f"; review level {p:g} given by the user (--review-level): counted cells with "
                                        f"a top probability below it (OOD score above {-math.log(p):.4g}) are flagged")

    @classmethod
    def _from_bundle(cls, manifest: dict | None, override=None) -> "OodRule":
        ood = (manifest or {}).get("ood") if isinstance(manifest, dict) else None
        if isinstance(override, str) and override.strip().lower() == "off":
            return cls(None, "off", "OOD rule switched off by the user (--ood-threshold off): confidence-only rule")
        if override is not None and not (isinstance(override, str) and override.strip().lower() == "auto"):
            t = parse_ood_threshold(override)
            flag = _level(ood, "threshold") if ood and ood.get("unidentified_threshold") is not None else None
            flag = flag if flag is not None and flag < t else None
            return cls(t, "user", f"OOD threshold {t:g} given by the user (--ood-threshold), not the bundle's"
                       + (f"; the bundle's review level {flag:g} still flags cells below it" if flag is not None else ""),
                       flag_threshold=flag)
        if not ood or ood.get("threshold") is None:
            return cls(None, "none", "the bundle has no OOD statistics (exported before they existed): "
                                     "confidence-only rule; re-export the model to add them")
        if ood.get("score", OOD_SCORE) != OOD_SCORE:
            raise BundleError(f"the bundle's OOD score {ood.get('score')!r} is unknown to this version of hemaedge "
                              f"(it knows {OOD_SCORE!r}); update hemaedge or re-export the bundle")
        t = _level(ood, "threshold")
        q = ood.get("quantile")
        share = lambda quantile: (f"the score {100 * float(quantile):g}% of correctly classified training-domain "
                                  "validation cells stay below" if quantile is not None else "from the bundle")
        if ood.get("unidentified_threshold") is None:
            return cls(t, "bundle", f"one-tier OOD rule (the bundle predates the review tier; re-calibrate it with "
                                    f"hemaedge.benchmarks.tools.ood_calibrate): unidentified above {t:g}, {share(q)}")
        u = _level(ood, "unidentified_threshold")
        if u < t:
            raise BundleError(f"the bundle's OOD levels are inverted (unidentified {u:g} below review {t:g}); "
                              "re-calibrate the bundle")
        return cls(u, "bundle", f"two-tier OOD rule from the bundle: unidentified above {u:g} "
                                f"({share(ood.get('unidentified_quantile'))}); counted but flagged for review above "
                                f"{t:g} ({share(q)})", flag_threshold=t)

    def to_dict(self) -> dict:
        return {"score": self.score, "threshold": self.threshold, "flag_threshold": self.flag_threshold,
                "source": self.source, "note": self.note, "flag_source": self.flag_source,
                # the same two levels as top probabilities (the score is -log of it)
                "unidentified_level": _as_probability(self.threshold), "review_level": _as_probability(self.flag_threshold)}


def _as_probability(score: float | None) -> float | None:
    return None if score is None else round(math.exp(-score), 6)


def _level(ood: dict, key: str) -> float:
    try:
        t = float(ood[key])
    except (TypeError, ValueError):
        t = float("nan")
    if not (math.isfinite(t) and t >= 0):
        raise BundleError(f"the bundle's OOD {key} {ood[key]!r} is not a finite number >= 0; re-export the bundle")
    return t


def parse_ood_threshold(value) -> float:
    """A user's OOD threshold: a finite number >= 0 (UsageError otherwise)."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"OOD threshold {value!r} is not a number; give a number >= 0, 'auto' (the bundle's) "
                         "or 'off' (confidence only)") from None
    if not (math.isfinite(t) and t >= 0):
        raise UsageError(f"OOD threshold {value!r} must be a finite number >= 0 (the score is -log of the top "
                         "probability: 0.105 = confidence 0.9); or 'auto' / 'off'")
    return t


def parse_review_level(value) -> float:
    """A user's review level: a top probability in (0, 1] (UsageError otherwise)."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--review-level {value!r} is not a number; give a top probability between 0 and 1 "
                         "(e.g. 0.9: counted cells the model is less than 90% sure of are flagged)") from None
    if not (math.isfinite(p) and 0 < p <= 1):
        raise UsageError(f"--review-level {value!r} must be a probability above 0 and at most 1 (e.g. 0.9: counted "
                         "cells the model is less than 90% sure of are flagged)")
    return p


def parse_review_classes(value, classes: list[str]) -> frozenset[str]:
    """The classes every call of which goes to review, from 'erythroblast,ig': each a class name
    of the bundle (case, spaces and hyphens ignored) or the initials of a two-word one
    ('ig' = immature_granulocyte, as haematology reports write it). UsageError otherwise."""
    if value is None or (isinstance(value, (list, tuple, set, frozenset)) and not value):
        return frozenset()
    names = value.split(",") if isinstance(value, str) else list(value)
    key = lambda name: str(name).strip().lower().replace(" ", "_").replace("-", "_")  # noqa: E731
    by_key = {key(c): c for c in classes}
    initials = {}
    for c in classes:
        words = key(c).split("_")
        if len(words) > 1:
            initials.setdefault("".join(w[0] for w in words if w), []).append(c)
    out = set()
    for name in names:
        k = key(name)
        if not k:
            continue
        if k in by_key:
            out.add(by_key[k])
        elif len(initials.get(k, [])) == 1:
            out.add(initials[k][0])
        else:
            raise UsageError(f"--review-classes: {str(name).strip()!r} is not a class of this model; its classes are "
                             f"{', '.join(classes)} (or the initials of a two-word one, e.g. 'ig')")
    if not out:
        raise UsageError(f"--review-classes {value!r} names no class; name classes of this model: {', '.join(classes)}")
    return frozenset(out)


def is_platelet_clump(prob_row: np.ndarray, classes: list[str], side_rbc: float | None,
                      above: float = PLATELET_KIND_ABOVE, max_side_rbc: float = PLATELET_CLUMP_MAX_SIDE_RBC) -> bool:
    """A size-ambiguous detection (box side `side_rbc` red-cell diameters) that is a platelet clump."""
    if PLATELET not in classes or side_rbc is None or side_rbc > max_side_rbc:
        return False
    return float(prob_row[classes.index(PLATELET)]) >= above


def cell_ood_score(prob_row: np.ndarray) -> float:
    """One cell's OOD score (`confidence.ood_scores`)."""
    return float(ood_scores(np.asarray(prob_row, dtype=np.float32).reshape(1, -1))[0])


def unidentified_reason(prob_row: np.ndarray, threshold: float = UNIDENTIFIED_BELOW,
                        ood_threshold: float | None = None, ood_score_value: float | None = None) -> str:
    """Why a nucleated cell (not classified platelet) is unidentified: LOW_CONFIDENCE,
    OUT_OF_DISTRIBUTION, or "" (it keeps its class)."""
    if float(np.max(prob_row)) < threshold:
        return LOW_CONFIDENCE
    if ood_threshold is not None:
        s = cell_ood_score(prob_row) if ood_score_value is None else float(ood_score_value)
        if s > ood_threshold:
            return OUT_OF_DISTRIBUTION
    return ""


def is_unidentified(prob_row: np.ndarray, ood_score: float | None = None, threshold: float = UNIDENTIFIED_BELOW,
                    ood_threshold: float | None = None) -> bool:
    """The classifier is not sure enough (or the cell is unlike anything it was trained on)."""
    return bool(unidentified_reason(prob_row, threshold, ood_threshold, ood_score))


def not_classified() -> Decision:
    """The decision for a detection the run did not classify (`NOT_CLASSIFIED`)."""
    return Decision(NOT_CLASSIFIED, float("nan"), CUT_NOT_CLASSIFIED, False)


def decide(kind: str, prob_row: np.ndarray | None, classes: list[str], threshold: float = UNIDENTIFIED_BELOW,
           ood_score: float | None = None, review_below: float = REVIEW_BELOW,
           ood_threshold: float | None = None, ood_flag_threshold: float | None = None,
           on_red_cell: bool = False, review_classes: frozenset = frozenset(),
           platelet_confirm: float = PLATELET_CONFIRM_ABOVE) -> Decision:
    """The label a detection of `kind` ("wbc" = nucleated, "platelet") is counted as.

    `ood_threshold` None = confidence-only rule; `ood_flag_threshold`: above it (and not above
    `ood_threshold`) the cell keeps its class and is flagged; `ood_score` None = computed from
    `prob_row`. `on_red_cell`: a platelet candidate lying on a red cell (`segment.Detection`)
    is not counted, and flagged for review, even when the classifier confirms it;
    `platelet_confirm`: the platelet probability a candidate needs to be counted.
    `review_classes` (`parse_review_classes`): a counted cell of one of these classes is
    always flagged (a lab's review policy, e.g. every erythroblast and immature granulocyte)."""
    d = _decide(kind, prob_row, classes, threshold, ood_score, review_below, ood_threshold, ood_flag_threshold,
                on_red_cell, platelet_confirm)
    if d.counted and d.label in review_classes:
        policy = f"{d.label} calls are always reviewed (--review-classes)"
        return replace(d, flag=f"{d.flag}; {policy}" if d.flag else policy)
    return d


def _decide(kind, prob_row, classes, threshold, ood_score, review_below, ood_threshold, ood_flag_threshold,
            on_red_cell, platelet_confirm) -> Decision:
    if kind == PLATELET:
        if prob_row is None or PLATELET not in classes:
            p = float("nan")
            confirmed = True
        else:
            p = float(prob_row[classes.index(PLATELET)])
            confirmed = classes[int(np.argmax(prob_row))] == PLATELET and p >= platelet_confirm
        if not confirmed:
            return Decision(PLATELET, p, "platelet candidate not confirmed by the classifier", False)
        if on_red_cell:
            return Decision(PLATELET, p, ON_RED_CELL, False)
        return Decision(PLATELET, p, f"confidence {p:.2f} below {review_below}" if p < review_below else "", True)
    top = int(np.argmax(prob_row))
    conf = float(prob_row[top])
    score = cell_ood_score(prob_row) if ood_score is None else float(ood_score)
    if classes[top] == PLATELET:
        return Decision(UNIDENTIFIED, conf, "unidentified: nucleated cell classified as platelet", True,
                        AS_PLATELET, score)
    why = unidentified_reason(prob_row, threshold, ood_threshold, score)
    if why == LOW_CONFIDENCE:
        return Decision(UNIDENTIFIED, conf, f"unidentified: low confidence ({classes[top]} {conf:.2f} below "
                                            f"{threshold:g})", True, why, score)
    if why == OUT_OF_DISTRIBUTION:
        return Decision(UNIDENTIFIED, conf, f"unidentified: out of distribution (OOD score {score:.3f} above "
                                            f"{ood_threshold:g}; {classes[top]} {conf:.2f})", True, why, score)
    flags = [f"confidence {conf:.2f} below {review_below}"] if conf < review_below else []
    if ood_flag_threshold is not None and score > ood_flag_threshold:
        flags.append(f"unusual for the training data (OOD score {score:.3f} above {ood_flag_threshold:g})")
    return Decision(classes[top], conf, "; ".join(flags), True, "", score)
