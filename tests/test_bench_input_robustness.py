"""benchmarks/tools/input_robustness.py: the truth moves with the pixels (rescale, bars, crop,
rotation, eyepiece), and a small real run writes its table with every variant asked for."""
from __future__ import annotations

import json

import cv2
import numpy as np
from click.testing import CliRunner

from hemaedge.benchmarks.tools.input_robustness import (VARIANTS, Geometry, _fill_crop, _letterbox, _rotated,
                                                        _scaled, main)

BOX = (40, 30, 70, 50)


def _marked(h=120, w=160):
    """A grey frame with one white box: where the box lands in a variant is where its truth must."""
    img = np.full((h, w, 3), 128, np.uint8)
    x0, y0, x1, y1 = BOX
    img[y0:y1, x0:x1] = 255
    return img


def _white_box(img):
    ys, xs = np.nonzero(img.min(axis=2) > 200)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _decoded(data):
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_boxes_move_with_the_pixels():
    img = _marked()
    for out, geo in (_letterbox(img, 400, 200), _fill_crop(img, 100, 100)):
        assert np.allclose(_white_box(out), geo.box(BOX), atol=2)
    for make in (_rotated, _scaled(0.5), _scaled(2.0)):
        data, _, geo = make(None, img)
        assert np.allclose(_white_box(_decoded(data)), geo.box(BOX), atol=2)
    assert _decoded(_rotated(None, img)[0]).shape[:2] == (160, 120)
    assert Geometry(1.0, 0, 0, (160, 120), circle=(80, 60, 20)).box((0, 0, 10, 10)) is None  # outside the disc


def test_a_small_run_writes_every_variant_asked_for(tmp_path, bccd, pbc_raw_val):
    names = ["x0.5", "16-bit PNG of 12-bit data", "folder with broken files"]
    res = CliRunner().invoke(main, ["--data", str(bccd), "--pbc", str(pbc_raw_val), "--bccd-frames", "2",
                                    "--pbc-fields", "2", "--threads", "1", "--only", ",".join(names),
                                    "--out", str(tmp_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "input_robustness.json").read_text())
    rows = {x["variant"]: x for x in r["rows"]}
    assert list(rows) == ["as-is", *names] and {v.name for v in VARIANTS} >= set(rows)
    assert all(x["read"] == x["frames"] == 4 and not x["crashes"] for x in rows.values())
    assert rows["folder with broken files"]["skipped"] == 6
    assert rows["16-bit PNG of 12-bit data"]["input_warnings"] and rows["as-is"]["ruler_ratio_median"] == 1.0
    assert "| x0.5 |" in (tmp_path / "input_robustness.md").read_text()
