"""The simulated reviewer of the BCCD adaptation measurement (train/adapt_bccd.py) on real BCCD
annotations: which detection is the annotated white cell, whatever kind the device gave it."""
from __future__ import annotations

import csv

import numpy as np

from review_helpers import sample_run_master  # noqa: F401  (fixture)
from hemaedge.train.adapt_bccd import match_white_cells, single_label_frames

FIELDS = ["frame", "name", "cell", "kind", "x0", "y0", "x1", "y1", "class", "confidence"]


def write_cells(run, rows):
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "cells.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)


def test_a_white_cell_the_model_called_a_platelet_is_still_the_annotated_cell(bccd, tmp_path):
    from hemaedge.benchmarks.tools.segmentation_bccd import read_voc

    labels = single_label_frames(bccd, "test")
    f1, f2 = sorted(labels)[:2]
    x0, y0, x1, y1 = read_voc(bccd / "Annotations" / f"{f1}.xml")["WBC"][0]
    rows = [  # frame 0: the white cell detected as kind "platelet" (the device's mistake), and a real platelet
        {"frame": 0, "name": f"{f1}.jpg", "cell": 0, "kind": "platelet", "x0": x0 + 4, "y0": y0 + 3, "x1": x1 - 2,
         "y1": y1, "class": "platelet", "confidence": 0.9},
        {"frame": 0, "name": f"{f1}.jpg", "cell": 1, "kind": "platelet", "x0": 0, "y0": 0, "x1": 20, "y1": 20,
         "class": "platelet", "confidence": 0.9},
        # frame 1: nothing near its white cell
        {"frame": 1, "name": f"{f2}.jpg", "cell": 0, "kind": "wbc", "x0": 0, "y0": 0, "x1": 10, "y1": 10,
         "class": "neutrophil", "confidence": 0.9},
    ]
    write_cells(tmp_path / "run", rows)
    found = match_white_cells(tmp_path / "run", {f1: labels[f1], f2: labels[f2]}, bccd)
    assert found[f1] == ("0:0", "platelet")  # matched (and a wrong answer), not left out
    assert found[f2] is None


def test_top_class_on_saved_crops_is_the_devices_answer_where_no_rule_overrode_it(sample_run_master):
    """The end-to-end table's 'top class' column: the bundle re-run on the crops the run saved.
    Where the device's own answer was a nucleated class (not unidentified, not a platelet), the
    top class on the saved crop must be that answer: the crops are the pixels the model saw."""
    from hemaedge.review.rundata import RunReview
    from hemaedge.train.adapt_bccd import top_classes

    cells = [c for c in RunReview.open(sample_run_master).cells if c.crop]
    top = top_classes(None, sample_run_master, {c.key for c in cells})  # None: the packaged default
    assert set(top) == {c.key for c in cells}
    plain = [c for c in cells if c.kind == "wbc" and c.model_class not in ("unidentified", "platelet")]
    assert plain, "the sample run should have nucleated cells the device named"
    assert [top[c.key] for c in plain] == [c.model_class for c in plain]


def test_recipe_summary_is_mean_and_sd_over_splits_per_recipe():
    from hemaedge.benchmarks.tools.adapt_recipes import parse_recipe, summary

    assert parse_recipe("h:fit=head,distill=0.5,blocks=0") == ("h", {"fit": "head", "distill": 0.5, "blocks": 0})
    rows = [{"recipe": r, "split": s, "settings": {}, "dev_before": 0.5, "dev_after": a, "pbc_before": 0.97,
             "pbc_after": p, "wall_s": 10.0}
            for r, s, a, p in (("a", 0, 0.70, 0.96), ("a", 1, 0.80, 0.97), ("b", 0, 0.75, 0.965))]
    a, b = summary(rows)
    assert a["recipe"] == "a" and a["splits"] == [0, 1] and np.isclose(a["dev_mean"], 0.75)
    assert np.isclose(a["dev_sd"], np.std([0.70, 0.80], ddof=1)) and np.isclose(a["gain_mean"], 0.25)
    assert np.isclose(a["pbc_pt_mean"], -0.5) and np.isclose(a["pbc_pt_sd"], np.std([-1.0, 0.0], ddof=1))
    assert b["splits"] == [0] and b["dev_sd"] is None


def test_error_analysis_tells_a_crop_off_the_cell_and_one_running_off_the_frame(bccd, tmp_path):
    """adapt_errors' crop description: a detection on the annotated white cell is a good crop, one
    beside it is 'off'; a crop square reaching past the frame's edge reports its replicated share."""
    from hemaedge.benchmarks.tools.adapt_errors import crop_key, crop_quality, padded_share
    from hemaedge.benchmarks.tools.segmentation_bccd import read_voc

    assert crop_key("f000012_c0003.png") == (12, 3)
    assert abs(padded_share((0, 0, 20, 20), 100, 640, 480) - 0.64) < 1e-9  # centred on (10, 10): 60 x 60 inside
    assert padded_share((200, 200, 300, 300), 100, 640, 480) == 0.0
    f = sorted(single_label_frames(bccd, "train"))[0]
    x0, y0, x1, y1 = read_voc(bccd / "Annotations" / f"{f}.xml")["WBC"][0]
    rows = [{"frame": 0, "name": f"{f}.jpg", "cell": 0, "kind": "wbc", "x0": x0, "y0": y0, "x1": x1, "y1": y1,
             "crop_side": 2 * (x1 - x0), "class": "neutrophil"},
            {"frame": 0, "name": f"{f}.jpg", "cell": 1, "kind": "wbc", "x0": x0 + (x1 - x0) // 2, "y0": y0,
             "x1": x1 + (x1 - x0), "y1": y1, "crop_side": 2 * (x1 - x0), "class": "neutrophil"}]
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "cells.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    q = crop_quality(run, bccd)
    assert q[(0, 0)]["iou"] == 1.0 and not q[(0, 0)]["crop_off"] and q[(0, 0)]["other_detections_on_cell"] == 1
    assert q[(0, 1)]["crop_off"] and q[(0, 1)]["iou"] < 0.5
    assert all(0 <= q[k]["padded"] < 1 for k in q)


def test_top_class_averages_the_bundles_views_as_the_device_did(bccd, tmp_path):
    """Bug fixed 2026-12-02: the 'top class' column ran one view while `edge run` with the packaged
    default averages its flips, so on these two BCCD train frames it named another class (basophil,
    erythroblast) than the device's own answer."""
    from hemaedge.review.rundata import RunReview
    from hemaedge.train.adapt_bccd import edge_run, top_classes

    run = edge_run({"BloodImage_00158": "", "BloodImage_00191": ""}, bccd, tmp_path, "run-train")
    cells = [c for c in RunReview.open(run).cells if c.crop and c.kind == "wbc"
             and c.model_class not in ("unidentified", "platelet")]
    assert len(cells) >= 2
    top = top_classes(None, run, {c.key for c in cells})
    assert [top[c.key] for c in cells] == [c.model_class for c in cells]


def test_the_benchmark_tools_read_a_bundle_base_without_its_keras_source(bloodmnist128):
    """adapt_recipes / adapt_errors took the base's classes and answers from its Keras file, which the
    packaged default does not ship: a bundle base is read from its manifest and run by the device's back
    end (its answers averaged over the views as `edge run` does)."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.defaults import packaged_default_bundle
    from hemaedge.edge.preprocess import prepare_batch, read_image_rgb, resize
    from hemaedge.edge.tta import FLIPS, dihedral_view
    from hemaedge.train.adapt_bccd import base_classes, model_answers

    b = load_bundle(packaged_default_bundle())
    assert base_classes(packaged_default_bundle()) == b.classes
    files = sorted((bloodmnist128 / "val" / "monocyte").glob("*.jpg"))[:3]
    images = np.stack([resize(read_image_rgb(f), 128) for f in files])
    p = model_answers(packaged_default_bundle(), images, FLIPS)
    x = prepare_batch(images, b.contract)
    one = load_backend(b, threads=1).predict
    want = np.mean([one(np.ascontiguousarray(dihedral_view(x, k, axes=(1, 2)))) for k in FLIPS], axis=0)
    assert p.shape == (3, 8) and np.allclose(p, want, atol=1e-5)
