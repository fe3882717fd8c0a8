"""`hemaedge edge run --save-crops`: one crop (the pixels the model saw) and one context view per
cell, named by frame and cell, written atomically; a crop that cannot be written is counted."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from review_helpers import edge_run, sample_run_master  # noqa: F401  (fixture)
from hemaedge.edge.crops import CONTEXT_DIR, CROPS_DIR, CropSaver, crop_name
from hemaedge.edge.preprocess import read_image_rgb


def read_cells(run):
    with open(run / "cells.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_cell_has_its_crop_and_context(sample_run_master):
    run = sample_run_master
    cells = read_cells(run)
    assert len(cells) >= 10
    names = {crop_name(c["frame"], c["cell"]) for c in cells}
    assert {p.name for p in (run / CROPS_DIR).iterdir()} == names
    assert {p.name for p in (run / CONTEXT_DIR).iterdir()} == names
    summary = json.loads((run / "summary.json").read_text())
    assert summary["crops"]["saved"] == len(cells) and summary["crops"]["failed"] == 0
    for name in names:
        crop = read_image_rgb(run / CROPS_DIR / name)
        assert crop.shape == (128, 128, 3)  # the default bundle's input side
        assert read_image_rgb(run / CONTEXT_DIR / name).shape[0] > 128


def test_saved_crop_gives_the_class_the_run_recorded(sample_run_master):
    """The crop is exactly what the model saw: classifying it again gives the same class and confidence."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.preprocess import prepare_batch
    from hemaedge.edge.tta import bundle_views, predict_views

    mdl = load_model(None, None, None, None, "probabilities")
    backend = load_backend(mdl, threads=1)
    cells = read_cells(sample_run_master)
    crops = [read_image_rgb(sample_run_master / CROPS_DIR / crop_name(c["frame"], c["cell"])) for c in cells]
    # ... through the same test-time views the run used (the bundle's `inference.views`)
    probs = predict_views(backend.predict, prepare_batch(crops, mdl.contract), bundle_views(mdl.manifest)[1])
    # Cells the counting rules relabelled (unidentified, unconfirmed platelet...) carry a flag;
    # every other cell's class and confidence are the model's, from exactly these pixels.
    plain = [(c, p) for c, p in zip(cells, probs)
             if c["kind"] == "wbc" and not c.get("flag") and c["class"] != "unidentified"]
    assert len(plain) >= 4
    for c, p in plain:
        assert mdl.classes[int(p.argmax())] == c["class"]
        assert abs(float(p.max()) - float(c["confidence"])) < 2e-3


def test_flagged_mode_saves_only_flagged_cells(tmp_path):
    run = edge_run(tmp_path / "run", "--save-crops", "flagged")
    cells = read_cells(run)
    flagged = {crop_name(c["frame"], c["cell"]) for c in cells if c["review"] == "1"}
    assert flagged and len(flagged) < len(cells)
    assert {p.name for p in (run / CROPS_DIR).iterdir()} == flagged


def test_no_crops_without_the_option(tmp_path):
    run = edge_run(tmp_path / "run", "--max-frames", "2")
    assert not (run / CROPS_DIR).exists() and "crops" not in json.loads((run / "summary.json").read_text())


class _Frame:
    def __init__(self, image, index=3):
        self.image, self.index, self.name = image, index, "x.png"


class _Det:
    def __init__(self, crop):
        self.crop = crop


def test_a_crop_that_cannot_be_written_is_counted_not_fatal(tmp_path, monkeypatch):
    import hemaedge.edge.crops as crops_mod

    frame = _Frame(np.full((100, 120, 3), 180, np.uint8))
    dets = [_Det((30, 30, 40)), _Det((90, 70, 40)), _Det((5, 95, 30))]  # the last runs off the frame
    real = crops_mod.atomic_write_bytes
    calls = {"n": 0}

    def flaky(path, data, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(crops_mod, "atomic_write_bytes", flaky)
    saver = CropSaver(tmp_path, 32, "all")
    assert saver.save(frame, dets, [0.9, 0.3, 0.8]) == 2
    assert saver.failed == 1 and "No space left" in saver.errors[0]
    assert sorted(p.name for p in (tmp_path / CROPS_DIR).iterdir()) == [crop_name(3, 1), crop_name(3, 2)]
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no half-written leftovers


def test_flagged_threshold_and_bad_mode(tmp_path):
    saver = CropSaver(tmp_path, 16, "flagged", review_threshold=0.5)
    frame = _Frame(np.zeros((40, 40, 3), np.uint8), index=0)
    assert saver.save(frame, [_Det((20, 20, 10)), _Det((10, 10, 10))], [0.49, 0.5]) == 1
    assert [p.name for p in (tmp_path / CROPS_DIR).iterdir()] == [crop_name(0, 0)]
    from hemaedge.edge.errors import UsageError

    with pytest.raises(UsageError):
        CropSaver(tmp_path, 16, "some")


def test_crops_with_append_are_refused(sample_run_master, tmp_path):
    from click.testing import CliRunner

    from hemaedge.cli import main
    from review_helpers import SAMPLES

    res = CliRunner().invoke(main, ["edge", "run", "--source", str(SAMPLES), "--out", str(tmp_path / "r"),
                                    "--append", "--save-crops", "all", "-q"])
    assert res.exit_code == 2 and "--append" in res.output and not (tmp_path / "r" / CROPS_DIR).exists()


def test_an_existing_crop_is_never_replaced(tmp_path):
    saver = CropSaver(tmp_path, 16, "all")
    frame = _Frame(np.zeros((40, 40, 3), np.uint8), index=0)
    (tmp_path / CROPS_DIR / crop_name(0, 0)).write_bytes(b"earlier")
    assert saver.save(frame, [_Det((20, 20, 10))], [0.9]) == 0
    assert saver.failed == 1 and (tmp_path / CROPS_DIR / crop_name(0, 0)).read_bytes() == b"earlier"
