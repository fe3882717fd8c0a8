"""Per-run domain check: does this microscope look like the one the model was trained on?

Two signals, both compared with the bundle's `domain` section (written at export from the
training and validation data, see `domain_section`):

* colour: the frames' background and red-cell colour (`preprocess.colour_anchors`, OpenCV
  8-bit Lab) against the training images' median, in units of their spread (a model adapted
  to another microscope also lists that microscope's colour under `colour.also`; the nearest
  reference counts);
* confidence: the run's mean per-cell OOD score (`confidence.ood_scores`) against what runs of
  the same number of in-distribution validation cells give (the limit a group of `group`
  validation cells exceeds only 1 % of the time).

`DomainMonitor` collects both during a run (colour on each of the first `every` frames, then on
every `every`-th: ~0.2 ms each) and
`report()` gives the block that goes into summary.json, with a warning line that says what
to do. numpy + OpenCV only.
"""
from __future__ import annotations

import numpy as np

from hemaedge.edge.confidence import ood_scores
from hemaedge.edge.preprocess import colour_anchors

COLOUR_Z_LIMIT = 4.0      # a run's median colour this many training spreads away is "unlike"
MIN_SPREAD = 2.0          # Lab units: training sets with nearly constant colour still allow some drift
DEFAULT_GROUP = 20        # cells per group for the OOD limit
MIN_CELLS = 10            # fewer cells than this: the OOD signal is not judged
ADVICE = ("results from this microscope may be wrong; check a few cells by eye and adapt the model to it "
          "with `hemaedge train adapt` (a few dozen labelled cells from this microscope: correct them with "
          "`hemaedge review RUN_DIR`; see docs/review.md)")


def _spread(values: np.ndarray) -> np.ndarray:
    mad = np.median(np.abs(values - np.median(values, axis=0)), axis=0)
    return np.maximum(1.4826 * mad, MIN_SPREAD)


def domain_section(train_images, val_probabilities: np.ndarray, group: int = DEFAULT_GROUP,
                   seed: int = 0, n_groups: int = 2000) -> dict:
    """The manifest's `domain` section: training colours and the OOD limit for a run's mean."""
    anchors = np.stack([colour_anchors(img) for img in train_images])  # (N, 2, 3)
    r = lambda a: [round(float(v), 3) for v in a]
    return {"colour": {"space": "opencv-lab8", "background": r(np.median(anchors[:, 0], axis=0)),
                       "cells": r(np.median(anchors[:, 1], axis=0)),
                       "background_spread": r(_spread(anchors[:, 0])), "cells_spread": r(_spread(anchors[:, 1])),
                       "images": int(len(anchors)), "z_limit": COLOUR_Z_LIMIT},
            "ood": ood_limit(ood_scores(val_probabilities), group, seed, n_groups)}


def ood_limit(scores: np.ndarray, group: int = DEFAULT_GROUP, seed: int = 0, n_groups: int = 2000) -> dict:
    """The `domain.ood` block from in-distribution OOD scores: the mean a run of `group` such cells
    exceeds only 1 % of the time (bootstrap groups)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    k = min(group, len(s))
    means = s[rng.integers(0, len(s), size=(n_groups, k))].mean(axis=1) if len(s) else np.zeros(1)
    return {"val_mean": round(float(s.mean()), 6) if len(s) else None, "group": int(k),
            "limit": round(float(np.quantile(means, 0.99)), 6), "limit_quantile": 0.99}


def _colour_z(run: np.ndarray, ref: dict) -> dict:
    """How many spreads a run's median (background, cells) colour is from a reference, per anchor."""
    z = {}
    for i, key in enumerate(("background", "cells")):
        zz = np.abs(run[i] - np.asarray(ref[key])) / np.asarray(ref[f"{key}_spread"])
        z[key] = round(float(zz.max()), 2)
    return z


class DomainMonitor:
    """Collects a run's colours and OOD scores; `report()` compares them with the bundle's `domain`."""

    def __init__(self, domain: dict | None, every: int = 10):
        self.domain = domain or {}
        self.every = max(1, int(every))
        self.frames = 0
        self.colours: list[np.ndarray] = []
        self.scores: list[float] = []

    def add_frame(self, image: np.ndarray) -> None:
        if self.frames < self.every or self.frames % self.every == 0:  # every early frame, then every k-th
            self.colours.append(colour_anchors(image))
        self.frames += 1

    def add_cells(self, probabilities: np.ndarray) -> None:
        self.scores.extend(float(v) for v in ood_scores(probabilities))

    def report(self) -> dict:
        """The summary's `domain` block: {"checked", "unlike_training", "reasons", "warning", ...}."""
        out = {"checked": bool(self.domain), "frames_sampled": len(self.colours), "cells": len(self.scores),
               "unlike_training": False, "reasons": []}
        if not self.domain:
            out["note"] = "the bundle has no domain section (exported before domain checks existed)"
            return out
        col = self.domain.get("colour") or {}
        if self.colours and col:
            run = np.median(np.stack(self.colours), axis=0)
            # the training slides, and any microscope the model was adapted to (`colour.also`):
            # a run is like the model's data when it is near one of them
            refs = [("the training slides'", col)] + [(f"the adapted-to microscope's ({r.get('from', '?')})", r)
                                                      for r in col.get("also") or []]
            zs = [_colour_z(run, ref) for _, ref in refs]
            best = min(range(len(refs)), key=lambda i: max(zs[i].values()))
            z = zs[best]
            out["colour"] = {"background": [round(float(v), 1) for v in run[0]],
                             "cells": [round(float(v), 1) for v in run[1]], "z": z, "nearest": refs[best][0]}
            limit = float(col.get("z_limit", COLOUR_Z_LIMIT))
            if max(z.values()) > limit:
                which = max(z, key=z.get)
                out["reasons"].append(f"{'background' if which == 'background' else 'red-cell'} colour is "
                                      f"{z[which]:.1f} training spreads from {refs[best][0]} (limit {limit:g})")
        ood = self.domain.get("ood") or {}
        if self.scores and ood.get("limit") is not None:
            mean = float(np.mean(self.scores))
            out["ood"] = {"mean": round(mean, 4), "val_mean": ood.get("val_mean"), "limit": ood["limit"]}
            if len(self.scores) >= MIN_CELLS and mean > float(ood["limit"]):
                out["reasons"].append(f"the model is unsure of these cells (mean OOD score {mean:.3f}, "
                                      f"validation {ood.get('val_mean')}, limit {ood['limit']})")
        out["unlike_training"] = bool(out["reasons"])
        if out["unlike_training"]:
            out["warning"] = "this microscope looks unlike the training data: " + "; ".join(out["reasons"]) + \
                             f". {ADVICE[0].upper()}{ADVICE[1:]}."
        return out


__all__ = ["DomainMonitor", "domain_section", "ood_limit", "COLOUR_Z_LIMIT", "ADVICE"]
