"""The edge benchmark commands run on real data slices and write their result files."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from edge_helpers import make_bundle, make_onnx
from hemaedge.benchmarks.tools import pbc_end_to_end, segmentation_bccd

BLOODMNIST = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte",
              "neutrophil", "platelet"]


def test_segmentation_bccd_command(bccd, tmp_path):
    res = CliRunner().invoke(segmentation_bccd.main, ["--data", str(bccd), "--split", "test", "--first", "6",
                                                      "--method", "stain", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "segmentation_bccd.json").read_text())
    run = r["runs"][0]
    assert run["frames"] == 6 and run["wbc"]["gt"] >= 6 and run["wbc"]["recall_iou"] >= 0.8
    md = (tmp_path / "segmentation_bccd.md").read_text()
    assert "| stain | red-cell diameters | test | 6 | wbc |" in md and "| stain | frame fractions | test | 6 | wbc |" in md


def test_segmentation_bccd_counts_what_the_whole_pipeline_counts(bccd, tmp_path):
    """--bundle: the same frames counted by the pipeline with the packaged default (platelets the
    classifier confirmed; every nucleated detection), every cell and whole cells, beside the segmenter."""
    from pathlib import Path

    default = Path(__file__).resolve().parents[1] / "src" / "hemaedge" / "models" / "default"
    res = CliRunner().invoke(segmentation_bccd.main, ["--data", str(bccd), "--split", "val", "--first", "5",
                                                      "--method", "stain", "--bundle", str(default),
                                                      "--threads", "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "segmentation_bccd.json").read_text())
    (pipe,) = r["pipeline"]
    seg = next(x for x in r["runs"] if x["split"] == "val" and x["sizes"] == "red-cell diameters")
    assert pipe["frames"] == seg["frames"] == 5 and pipe["identify"]["views"]
    every, whole = pipe["platelet_every"], pipe["platelet_whole"]
    assert every["gt"] == seg["platelet"]["gt"] and whole["gt"] <= every["gt"]
    assert every["pred"] <= seg["platelet"]["pred"] + 1  # the classifier confirms or drops candidates (+ a clump)
    assert pipe["wbc_every"]["recall"] >= 0.8
    for k in ("platelet_every", "platelet_whole", "wbc_every", "wbc_whole"):  # the looser rule beside IoU >= 0.5
        assert pipe[k]["tp_iou30"] >= pipe[k]["tp"] and pipe[k]["recall_iou30"] >= pipe[k]["recall"], k
    md = (tmp_path / "segmentation_bccd.md").read_text()
    assert "What the user gets" in md and "| val | 5 | platelet | every |" in md and "recall IoU≥0.3" in md


def test_a_platelet_boxed_at_another_size_matches_at_iou_03_only(bccd):
    """BCCD train 00079: the whole pipeline counts the VOC platelet with a box drawn around its pale
    rim (IoU 0.32): a miss and a false alarm at IoU >= 0.5, a hit at >= 0.3. One-to-one either way:
    a second detection on the same platelet stays a false alarm."""
    gt = segmentation_bccd.read_voc(bccd / "Annotations" / "BloodImage_00079.xml")
    voc = (532, 298, 558, 325)
    assert voc in gt["Platelets"]
    counted = (524, 276, 568, 326)  # what the pipeline counted there (2026-12-02)
    assert segmentation_bccd.match([counted], [voc], "iou") == 0
    assert segmentation_bccd.match([counted], [voc], "iou30") == 1
    assert segmentation_bccd.matches([counted, voc], [voc], "iou30") == {1: 0}  # the better overlap wins


def test_pbc_end_to_end_with_a_bundle(pbc_raw_val, bloodmnist128, tmp_path):
    """An 8-class linear model on mean colour: accuracy is low but must be measured on both sides."""
    rng = np.random.default_rng(1)
    weights = (rng.normal(0, 0.05, (3, 8)).astype(np.float32), np.zeros(8, np.float32))
    model = make_onnx(tmp_path / "m.onnx", 128, weights=weights)
    bundle = make_bundle(tmp_path, model, "onnx", 128, classes=BLOODMNIST, name="b8")
    res = CliRunner().invoke(pbc_end_to_end.main, ["--data", str(pbc_raw_val), "--bloodmnist-val",
                                                   str(bloodmnist128 / "val"), "--bundle", str(bundle),
                                                   "--spread", "16", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "pbc_end_to_end.json").read_text())
    assert r["fields"] == 16 and r["found"] >= 15
    assert r["precropped"]["images"] == 16  # the same 16 cells, as BloodMNIST cropped them
    for key in ("end_to_end_accuracy_rbc", "end_to_end_accuracy_cell", "end_to_end_accuracy_fixed"):
        assert 0 <= r[key] <= 1
    assert "pre-cropped BloodMNIST" in (tmp_path / "pbc_end_to_end.md").read_text()
