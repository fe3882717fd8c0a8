"""bundle_calibration reads PNG trees too (the red-cell crops of issue 19 item 3 are .png; it used to glob
only *.jpg and stopped with 'need at least one array to concatenate')."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_split_probs_reads_png_crops(tmp_path):
    from hemaedge.benchmarks.tools.bundle_calibration import split_probs
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle

    bundle = load_bundle(REPO / "src/hemaedge/models/rbc")
    rng = np.random.default_rng(0)
    for c, n in (("normal", 3), ("macrocyte", 2)):
        d = tmp_path / "val" / c
        d.mkdir(parents=True)
        for k in range(n):
            cv2.imwrite(str(d / f"{k}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    p, y = split_probs(bundle, load_backend(bundle, threads=1), tmp_path, "val")
    assert p.shape == (5, len(bundle.classes)) and sorted(y.tolist()) == sorted(
        [bundle.classes.index("normal")] * 3 + [bundle.classes.index("macrocyte")] * 2)
