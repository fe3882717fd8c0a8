"""Test-time view averaging: a cell is classified from several views of its crop (flips and
rotations, which change nothing a hematologist would see) and the views' probabilities are
averaged. numpy only (runs on the device).

Views are applied to the prepared input tensor (after `prepare_batch`), so colour
normalisation, CLAHE and quantisation run once per cell, not once per view.
"""
from __future__ import annotations

import numpy as np

from hemaedge.edge.errors import BundleError, UsageError

# dihedral group of the square: view k = k quarter turns, then (k >= 4) a left-right mirror
DIHEDRAL = (0, 1, 2, 3, 4, 5, 6, 7)
FLIPS = (0, 2, 4, 6)  # identity, half turn, left-right mirror, top-bottom mirror
VIEW_SETS = {"off": (0,), "flips": FLIPS, "dihedral": DIHEDRAL}


def dihedral_view(image: np.ndarray, k: int, axes=(0, 1)) -> np.ndarray:
    """View `k` (0..7) of an image (H, W, ...) or, with axes=(1, 2), of a batch (N, H, W, ...)."""
    if not 0 <= k <= 7:
        raise ValueError(f"dihedral view {k} is not in 0..7")
    out = np.rot90(image, k % 4, axes=axes)
    if k >= 4:
        out = np.flip(out, axis=axes[1])
    return out


def check_views(name: str) -> tuple[int, ...]:
    """The views of a named set ('off', 'flips', 'dihedral'); UsageError otherwise."""
    try:
        return VIEW_SETS[str(name).strip().lower()]
    except KeyError:
        raise UsageError(f"test-time views {name!r} unknown; choose one of {', '.join(VIEW_SETS)}") from None


def bundle_views(manifest: dict | None, override=None, tracked: bool = False) -> tuple[str, tuple[int, ...]]:
    """(name, views) for a run: `override` ('off', 'flips', 'dihedral') or, when None/'auto',
    the bundle's `inference.views` (bundles without it: 'off', one view, as before).

    `tracked`: the cells are tracked across frames (a live feed, a video, `--same-slide`), and
    each track's class is already the mean over all its frames, which are views of the same cell
    too. There 'auto' means one view per frame: the views would cost x4 per frame, on every frame
    of a live feed, for what the track's own averaging gives. An explicit override still wins."""
    if override is None or str(override).strip().lower() == "auto":
        declared = ((manifest or {}).get("inference") or {}).get("views", "off")
        if str(declared).strip().lower() not in VIEW_SETS:
            raise BundleError(f"the bundle's inference.views {declared!r} is unknown to this version of hemaedge "
                              f"(it knows {', '.join(VIEW_SETS)}); update hemaedge or re-export the bundle")
        override = "off" if tracked else declared
    name = str(override).strip().lower()
    return name, check_views(name)


def predict_views(predict, batch: np.ndarray, views=(0,)) -> np.ndarray:
    """Mean probabilities over `views` of a prepared batch (N, S, S, C); `predict` maps a batch
    to (N, classes) probabilities. All views go through the model in one call."""
    views = tuple(views)
    if len(views) == 1 and views[0] == 0 or len(batch) == 0:
        return predict(batch)
    n = len(batch)
    stacked = np.empty((len(views) * n, *batch.shape[1:]), batch.dtype)
    for i, k in enumerate(views):  # each view copied once, straight into the model's batch
        stacked[i * n:(i + 1) * n] = dihedral_view(batch, k, axes=(1, 2))
    p = predict(stacked)
    return p.reshape(len(views), len(batch), -1).mean(axis=0)


__all__ = ["DIHEDRAL", "FLIPS", "VIEW_SETS", "dihedral_view", "check_views", "bundle_views", "predict_views"]
