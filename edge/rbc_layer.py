"""The red-cell bundle's size layer: a multinomial logistic layer over the model's answer and the
cell's size relative to its field (issue 15).

A crop cut at a fixed side keeps a cell's size only in units of that side. Micro-, macro- and
spherocytes are defined by size against the smear's normal red cells, so the layer gives the
classifier the ruler: each cell's area and long side relative to the median whole red cell of its
frame (and its area against the training magnification's red cell). It is fitted on the host
(scikit-learn, `hemaedge export rbc-layer`) on held-out Chula frames through the device path and
travels as plain numbers in the manifest's `red_cells.layer` section (standardisation folded into
the weights); nothing is unpickled on the device. Bundles without the section run the model alone.

Inputs, in this order: log of the model's 12 (class) probabilities, then `layer.features`, names from
FEATURES.
"""
from __future__ import annotations

import numpy as np

from hemaedge.edge.errors import BundleError

# name -> what it measures (all natural logs of ratios, so 0 = like the field's median cell)
FEATURES = {
    "relative_area": "log(cell area / median area of the frame's whole detected red cells)",
    "relative_length": "log(cell box long side / median long side of the frame's whole detected red cells)",
    "absolute_area": "log(cell area / area of a red cell of the bundle's training diameter)",
    # hypochromic cells are paler than the field's normal cells, most of all in the centre
    "relative_centre_light": "log(green light in the cell's central square (0.35 radius) / the frame's median cell's)",
    "relative_cell_light": "log(green light in the cell's inner square (0.6 radius) / the frame's median cell's)",
}
# probabilities are clipped here before the log: the int8 output has a floor of one quantum
LOG_FLOOR = 1e-6


def _light(image: np.ndarray | None, cells, fraction: float) -> np.ndarray:
    """Mean green value (RGB frame) of a square of half-side `fraction` radii at each cell's centre."""
    if image is None:
        return np.ones(len(cells))
    green = image[..., 1] if image.ndim == 3 else image
    h, w = green.shape[:2]
    out = np.empty(len(cells))
    for i, c in enumerate(cells):
        half = max(1, int(round(fraction * c.diameter / 2)))
        x, y = int(round(c.centre[0])), int(round(c.centre[1]))
        patch = green[max(0, y - half):min(h, y + half + 1), max(0, x - half):min(w, x + half + 1)]
        out[i] = float(patch.mean()) + 1.0 if patch.size else 1.0
    return out


def size_features(cells, reference_diameter: float | None, names, image: np.ndarray | None = None) -> np.ndarray:
    """(cells, len(names)) features of `cells` (edge.rbc.RedCell of one frame; `image` the RGB frame
    they were found on, for the light features). The ruler is the frame's median whole (not
    border-cut) cell; a frame of border cells only uses all of them. Border-cut cells get 0 (the
    field's median cell: no size evidence either way)."""
    names = list(names)
    if not cells:
        return np.zeros((0, len(names)))
    area = np.array([max(1, c.area) for c in cells], float)
    length = np.array([max(1, c.box[2] - c.box[0], c.box[3] - c.box[1]) for c in cells], float)
    whole = np.array([not c.edge for c in cells], bool)
    ruler = whole if whole.any() else np.ones(len(cells), bool)
    def _relative(v):  # against the frame's median whole cell
        return np.log(v / np.median(v[ruler]))

    cols = {"relative_area": lambda: _relative(area),
            "relative_length": lambda: _relative(length),
            "absolute_area": lambda: np.log(area / (np.pi * (reference_diameter / 2) ** 2)) if reference_diameter
            else np.zeros(len(cells)),
            "relative_centre_light": lambda: _relative(_light(image, cells, 0.35)),
            "relative_cell_light": lambda: _relative(_light(image, cells, 0.6))}
    out = np.stack([cols[n]() for n in names], axis=1)
    # a cell cut by the frame border shows only part of its area: its size is unknown, not small
    # (left in, the layer called cut cells schistocytes: Chula val 4.5 -> 6.4% of all detected cells)
    out[~whole] = 0.0
    return out


def layer_inputs(probabilities: np.ndarray, cells, reference_diameter: float | None, names,
                 image: np.ndarray | None = None) -> np.ndarray:
    """[log-probabilities, size features] per cell: the layer's input (fitting and device alike)."""
    logp = np.log(np.clip(np.asarray(probabilities, float), LOG_FLOOR, 1.0))
    return np.hstack([logp, size_features(cells, reference_diameter, names, image)])


class SizeLayer:
    """The manifest's `red_cells.layer`: probabilities = softmax(inputs @ coef.T + intercept)."""

    def __init__(self, section: dict, classes, where: str = "the red-cell bundle"):
        try:
            self.features = list(section["features"])
            self.coef = np.asarray(section["coef"], float)
            self.intercept = np.asarray(section["intercept"], float)
            layer_classes = list(section["classes"])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{where}: red_cells.layer is malformed ({e}); export the layer again "
                              "(hemaedge export rbc-layer)") from e
        k = len(classes)
        unknown = [n for n in self.features if n not in FEATURES]
        if unknown or layer_classes != list(classes) or self.coef.shape != (k, k + len(self.features)) \
                or self.intercept.shape != (k,) or not np.isfinite(self.coef).all() \
                or not np.isfinite(self.intercept).all():
            raise BundleError(f"{where}: red_cells.layer does not fit the model (classes, shape or unknown "
                              f"features {unknown}); export the layer again (hemaedge export rbc-layer)")

    @classmethod
    def from_manifest(cls, model) -> SizeLayer | None:
        manifest = getattr(model, "manifest", None) or {}
        section = (manifest.get("red_cells") or {}).get("layer") if isinstance(manifest, dict) else None
        if not section:
            return None
        return cls(section, list(model.classes), str(getattr(model, "root", "the red-cell bundle")))

    def apply(self, probabilities: np.ndarray, cells, reference_diameter: float | None,
              image: np.ndarray | None = None) -> np.ndarray:
        return self.from_inputs(layer_inputs(probabilities, cells, reference_diameter, self.features, image))

    def from_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities from `layer_inputs` rows."""
        z = np.asarray(inputs, float) @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
