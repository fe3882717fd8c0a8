"""The count in the form a lab reports it: a white-cell differential per 100 WBC with 95%
intervals, nucleated red cells per 100 WBC, platelets apart, unidentified and flagged cells,
fields, and progress towards the target count.

Intervals are exact binomial (Clopper-Pearson) 95% intervals: the ones Rümke's table tabulates
for 100- and 200-cell differentials. They use the beta quantile, computed here in pure Python
(the regularised incomplete beta by its continued fraction, inverted by bisection) because
the edge extra has no scipy.
"""
from __future__ import annotations

import functools
import math

from hemaedge.edge.identify import ERYTHROBLAST, PLATELET, UNIDENTIFIED

# The white-cell classes of a manual differential, in the order labs print them; a model's
# other classes (not platelet, not erythroblast) follow them as white-cell classes.
WBC_ORDER = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "immature_granulocyte"]


# ----------------------------------------------------------------------------- exact binomial interval


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b), by bisection on the CDF (to 1e-12)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


@functools.lru_cache(maxsize=4096)
def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials, as fractions (0..1). Remembered: the
    pure-Python beta quantile takes milliseconds, and the review page asks for the same
    intervals again on every load and correction."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"{k} of {n}: the count must be between 0 and the total")
    alpha = 1.0 - confidence
    lower = 0.0 if k == 0 else beta_ppf(alpha / 2, k, n - k + 1)
    upper = 1.0 if k == n else beta_ppf(1 - alpha / 2, k + 1, n - k)
    return lower, upper


# ----------------------------------------------------------------------------- the count


class Differential:
    """Counts cells (each physical cell once: a detection of an independent field, or a track
    of a live feed) into the report a hematologist signs."""

    def __init__(self, classes: list[str], target_wbc: int | None = None):
        others = [c for c in classes if c not in WBC_ORDER and c not in (PLATELET, ERYTHROBLAST)]
        self.wbc_classes = [c for c in WBC_ORDER if c in classes] + others
        self.classes = list(classes)
        self.target_wbc = target_wbc
        self.counts = {c: 0 for c in self.wbc_classes}
        self.nrbc = 0
        self.platelets = 0
        self.platelets_unconfirmed = 0
        self.unidentified = 0
        self.unidentified_reasons: dict[str, int] = {}  # identify.REASONS -> cells
        self.flagged = 0
        self.flagged_by_label: dict[str, int] = {}
        self.fields = 0
        self.fields_not_classified: dict[str, int] = {}
        # cells cut by the frame edge, recorded but not counted: by the kind the count gives them
        self.cut_not_counted = {"nucleated": 0, "platelets": 0}

    def add(self, label: str, counted: bool = True, flagged: bool = False, reason: str = "") -> None:
        if flagged:
            self.flagged += 1
            self.flagged_by_label[label] = self.flagged_by_label.get(label, 0) + 1
        if label == PLATELET:
            if counted:
                self.platelets += 1
            else:
                self.platelets_unconfirmed += 1
        elif not counted:
            return
        elif label == ERYTHROBLAST:
            self.nrbc += 1
        elif label == UNIDENTIFIED:
            self.unidentified += 1
            why = reason or "not given"
            self.unidentified_reasons[why] = self.unidentified_reasons.get(why, 0) + 1
        else:
            self.counts[label] = self.counts.get(label, 0) + 1
            if label not in self.wbc_classes:
                self.wbc_classes.append(label)

    def add_cut(self, kind: str) -> None:
        """A cell cut by the frame edge (of `kind`, "wbc" or "platelet"): recorded, not counted."""
        self.cut_not_counted["platelets" if kind == PLATELET else "nucleated"] += 1

    def add_field(self, unusable_reason: str | None = None) -> None:
        """One field (frame) looked at; `unusable_reason` when it could not be classified."""
        if unusable_reason:
            self.fields_not_classified[unusable_reason] = self.fields_not_classified.get(unusable_reason, 0) + 1
        else:
            self.fields += 1

    @property
    def wbc_classified(self) -> int:
        return sum(self.counts.values())

    @property
    def white_cells_counted(self) -> int:
        """White cells toward the target: classified ones and unidentified ones (to be reviewed)."""
        return self.wbc_classified + self.unidentified

    @property
    def target_reached(self) -> bool:
        return self.target_wbc is not None and self.white_cells_counted >= self.target_wbc

    def rows(self) -> list[dict]:
        """counts.csv: one row per reported quantity."""
        n = self.wbc_classified
        out = []
        for c in self.wbc_classes:
            k = self.counts.get(c, 0)
            lo, hi = clopper_pearson(k, n) if n else (None, None)
            out.append({"section": "wbc differential", "class": c, "count": k,
                        "value": round(100.0 * k / n, 1) if n else None, "unit": "% of classified WBC",
                        "ci95_low": round(100 * lo, 1) if lo is not None else None,
                        "ci95_high": round(100 * hi, 1) if hi is not None else None,
                        "flagged": self.flagged_by_label.get(c, 0)})
        out.append({"section": "wbc differential", "class": "total classified WBC", "count": n, "value": None,
                    "unit": "cells", "ci95_low": None, "ci95_high": None, "flagged": None})
        out.append({"section": "nucleated red cells", "class": ERYTHROBLAST, "count": self.nrbc,
                    "value": round(100.0 * self.nrbc / n, 1) if n else None, "unit": "per 100 WBC",
                    "ci95_low": None, "ci95_high": None, "flagged": self.flagged_by_label.get(ERYTHROBLAST, 0)})
        out.append({"section": "review", "class": UNIDENTIFIED, "count": self.unidentified, "value": None,
                    "unit": "cells (not in the differential until reviewed)", "ci95_low": None, "ci95_high": None,
                    "flagged": self.flagged_by_label.get(UNIDENTIFIED, 0)})
        out.append({"section": "platelets", "class": PLATELET, "count": self.platelets,
                    "value": round(self.platelets / self.fields, 2) if self.fields else None, "unit": "per field",
                    "ci95_low": None, "ci95_high": None, "flagged": None})
        out.append({"section": "platelets", "class": "platelet candidates not confirmed",
                    "count": self.platelets_unconfirmed, "value": None, "unit": "candidates (flagged)",
                    "ci95_low": None, "ci95_high": None, "flagged": self.platelets_unconfirmed})
        out.append({"section": "review", "class": "flagged for review", "count": self.flagged, "value": None,
                    "unit": "cells", "ci95_low": None, "ci95_high": None, "flagged": self.flagged})
        out.append({"section": "fields", "class": "fields counted", "count": self.fields, "value": None,
                    "unit": "fields", "ci95_low": None, "ci95_high": None, "flagged": None})
        if self.target_wbc:
            out.append({"section": "target", "class": "white cells counted", "count": self.white_cells_counted,
                        "value": round(100.0 * self.white_cells_counted / self.target_wbc, 1),
                        "unit": f"% of target {self.target_wbc}", "ci95_low": None, "ci95_high": None, "flagged": None})
        return out

    def summary(self) -> dict:
        n = self.wbc_classified
        wbc = []
        for c in self.wbc_classes:
            k = self.counts.get(c, 0)
            lo, hi = clopper_pearson(k, n) if n else (None, None)
            wbc.append({"class": c, "count": k, "percent": round(100.0 * k / n, 1) if n else None,
                        "ci95_percent": [round(100 * lo, 1), round(100 * hi, 1)] if n else None,
                        "flagged": self.flagged_by_label.get(c, 0)})
        return {
            "white_cells_classified": n,
            "wbc_differential": wbc,
            "nrbc": {"count": self.nrbc, "per_100_wbc": round(100.0 * self.nrbc / n, 1) if n else None},
            "platelets": {"count": self.platelets, "per_field": round(self.platelets / self.fields, 2) if self.fields else None,
                          "candidates_not_confirmed": self.platelets_unconfirmed},
            "unidentified": self.unidentified,
            "unidentified_reasons": dict(self.unidentified_reasons),
            "flagged_for_review": self.flagged,
            "fields": self.fields,
            "fields_not_classified": dict(self.fields_not_classified),
            "nucleated_cut_by_frame_edge_not_counted": self.cut_not_counted["nucleated"],
            "platelets_cut_by_frame_edge_not_counted": self.cut_not_counted["platelets"],
            "target": {"white_cells": self.target_wbc, "counted": self.white_cells_counted,
                       "reached": self.target_reached,
                       "percent": round(100.0 * self.white_cells_counted / self.target_wbc, 1)} if self.target_wbc else None,
            "interval": "exact binomial (Clopper-Pearson) 95%, as tabulated by Rümke",
            "denominator": "white cells classified into a class (unidentified cells are reviewed first)",
        }


def format_differential(d: dict) -> str:
    """The differential of a summary (`Differential.summary()`) as the terminal table."""
    n = d["white_cells_classified"]
    lines = [f"differential count ({d.get('counting', '')}; {d['fields']} fields):",
             f"  {'white cells':<24}{'count':>7}{'% WBC':>8}{'95% interval':>16}{'flagged':>9}"]
    for r in d["wbc_differential"]:
        pct = f"{r['percent']:.1f}" if r["percent"] is not None else "-"
        ci = f"{r['ci95_percent'][0]:.1f}-{r['ci95_percent'][1]:.1f}" if r["ci95_percent"] else "-"
        lines.append(f"  {r['class']:<24}{r['count']:>7}{pct:>8}{ci:>16}{r['flagged']:>9}")
    lines.append(f"  {'total classified':<24}{n:>7}")
    nr = d["nrbc"]
    lines.append(f"  nucleated red cells {nr['count']} ({nr['per_100_wbc'] if nr['per_100_wbc'] is not None else '-'} per 100 WBC); "
                 f"platelets {d['platelets']['count']} ({d['platelets']['per_field'] if d['platelets']['per_field'] is not None else '-'}"
                 f" per field; {d['platelets']['candidates_not_confirmed']} candidates not confirmed)")
    why = d.get("unidentified_reasons") or {}
    why_txt = f" ({', '.join(f'{k} {v}' for k, v in why.items())})" if why else ""
    lines.append(f"  unidentified {d['unidentified']}{why_txt}; flagged for review {d['flagged_for_review']}; "
                 f"cut by the frame edge, not counted: {d['nucleated_cut_by_frame_edge_not_counted']} nucleated, "
                 f"{d.get('platelets_cut_by_frame_edge_not_counted', 0)} platelets")
    if d["fields_not_classified"]:
        lines.append("  fields not classified: " + ", ".join(f"{k} {v}" for k, v in d["fields_not_classified"].items()))
    t = d.get("target")
    if t:
        lines.append(f"  target {t['white_cells']} white cells: {t['counted']} counted ({t['percent']}%), "
                     + ("reached" if t["reached"] else "NOT reached"))
    return "\n".join(lines)
