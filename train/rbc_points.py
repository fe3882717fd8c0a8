"""Chula's labelled red-cell points matched to what the device's red-cell code finds on each frame:
the cells the fitted size layer (`hemaedge export rbc-layer`) and the end-to-end tables score."""
from __future__ import annotations

from pathlib import Path

from hemaedge.edge.preprocess import read_image_rgb
from hemaedge.train.rbc_crops import CHULA_TYPES, chula_frames


def matched_points(bundle, backend, chula: Path, split="test", scale="auto", layer=True):
    """Per labelled point of the split's frames, through the device's own red-cell code
    (RedCellClassifier: detect, cut, one batch) with a run's ruler and the device's `--rbc-scale`:
    (label index, the frame's RedCellResult, index of the detection whose box holds the point
    (nearest centre), or None when no detection holds it, the RGB frame). Points of classes the bundle lacks are skipped.
    `layer=False`: the model's own probabilities, without the bundle's size layer (fitting it)."""
    from hemaedge.edge.rbc_morphology import RedCellClassifier
    from hemaedge.edge.ruler import Ruler
    from hemaedge.edge.segment import centre_in

    index = {c: i for i, c in enumerate(bundle.classes)}
    device = RedCellClassifier(bundle, backend, scale=scale, layer=layer)
    ruler = Ruler(same_slide=False)  # as `edge run` on an image folder: every frame its own field
    for f in chula_frames(chula, split):
        img = read_image_rgb(f.image)
        res = device.process(img, ruler.read(img).diameter)
        for x, yy, t in f.points:
            if CHULA_TYPES[t] not in index:
                continue
            holding = [k for k, c in enumerate(res.cells) if centre_in(c.box, (x, yy))]
            k = min(holding, key=lambda k: (res.cells[k].centre[0] - x) ** 2 + (res.cells[k].centre[1] - yy) ** 2) \
                if holding else None
            yield index[CHULA_TYPES[t]], res, k, img
