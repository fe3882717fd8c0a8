"""Confidence that means what it says: temperature in the manifest, ECE, the per-cell OOD score
and the per-run domain check, on real data with the packaged default bundle."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from hemaedge.edge.confidence import ood_scores, ood_section
from hemaedge.edge.domain import DomainMonitor, domain_section
from hemaedge.edge.preprocess import output_probabilities, prepare_batch, read_image_rgb

DEFAULT = Path(__file__).resolve().parents[1] / "src" / "hemaedge" / "models" / "default"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_temperature_in_the_output_section_rescales_but_keeps_the_answer():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 8)).astype(np.float32) * 3
    p = output_probabilities(z, {"kind": "logits"})
    hot = output_probabilities(z, {"kind": "logits", "temperature": 2.0})
    np.testing.assert_allclose(hot, output_probabilities(z / 2, {"kind": "logits"}), rtol=1e-5)
    # for probability outputs: softmax(log p / T), the same thing
    np.testing.assert_allclose(output_probabilities(p, {"kind": "probabilities", "temperature": 2.0}), hot,
                               rtol=1e-4, atol=1e-6)
    assert (hot.argmax(1) == p.argmax(1)).all() and hot.max(1).mean() < p.max(1).mean()
    assert output_probabilities(p, {"kind": "probabilities"}) is not None  # no temperature: unchanged
    np.testing.assert_array_equal(output_probabilities(p, {"kind": "probabilities"}), p)


def test_fitted_temperature_undoes_known_overconfidence():
    from hemaedge.train.evaluate import apply_temperature, expected_calibration_error, fit_temperature

    rng = np.random.default_rng(1)
    z = rng.normal(size=(4000, 8)) * 2.5
    p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(8, p=pi) for pi in p_true])  # labels drawn from calibrated probabilities
    over = output_probabilities(z.astype(np.float32) * 3, {"kind": "logits"})  # 3x too confident
    t = fit_temperature(y, over)
    assert t == pytest.approx(3.0, rel=0.1)
    assert expected_calibration_error(y, apply_temperature(over, t)) < 0.03 < expected_calibration_error(y, over)


@pytest.fixture(scope="module")
def default_val(bloodmnist128):
    """The packaged default bundle's probabilities on a small real slice of BloodMNIST-128 val."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle

    b = load_bundle(DEFAULT)
    be = load_backend(b, threads=2)
    files, ys = [], []
    for i, c in enumerate(b.classes):
        f = sorted((bloodmnist128 / "val" / c).glob("*.jpg"))[:12]
        files += f
        ys += [i] * len(f)
    images = [read_image_rgb(f) for f in files]
    return b, be, images, be.predict(prepare_batch(images, b.contract)), np.array(ys)


def test_ood_threshold_and_unidentified_on_real_validation_cells(default_val):
    _, _, _, p, y = default_val
    sec = ood_section(p, y)
    assert sec["score"] == "neg-log-max-prob" and 0 <= sec["mean"] <= sec["threshold"]
    right = p.argmax(1) == y
    flagged = ood_scores(p) > sec["threshold"]
    assert 0.0 < flagged[right].mean() <= 0.1  # ~5 % of confident in-distribution answers by construction
    assert flagged[~right].mean() > flagged[right].mean()  # wrong answers are flagged more often
    np.testing.assert_allclose(ood_scores(p), -np.log(p.max(1)), rtol=1e-5)


def test_domain_check_tells_pbc_from_bccd(default_val, pbc_raw_val, bccd):
    _, _, images, p, _ = default_val
    dom = domain_section(images, p)
    assert json.loads(json.dumps(dom)) == dom  # goes into a manifest as it is
    same = DomainMonitor(dom, every=1)
    for f in sorted(pbc_raw_val.glob("*.jpg"))[:10]:  # full PBC fields: the training microscope
        same.add_frame(read_image_rgb(f))
    assert same.report()["unlike_training"] is False
    other = DomainMonitor(dom, every=1)
    for f in sorted((bccd / "JPEGImages").glob("*.jpg"))[:10]:  # another microscope
        other.add_frame(read_image_rgb(f))
    rep = other.report()
    assert rep["unlike_training"] is True and "hemaedge train adapt" in rep["warning"]
    assert rep["colour"]["z"]["background"] > 4
    assert DomainMonitor(None).report() == {"checked": False, "frames_sampled": 0, "cells": 0,
                                            "unlike_training": False, "reasons": [],
                                            "note": "the bundle has no domain section (exported before "
                                                    "domain checks existed)"}


def test_an_adapted_models_microscope_is_a_colour_reference_too(default_val, pbc_raw_val, bccd):
    """Bug: after `train adapt` on BCCD, runs on BCCD still said "unlike the training data" by
    colour (the check knew only the training slides). `adapted_colours` adds the run's measured
    colour as a reference (`colour.also`); the old microscope stays one."""
    from hemaedge.train.adapt import adapted_colours

    _, _, images, p, _ = default_val
    dom = domain_section(images, p)
    bccd_frames = [read_image_rgb(f) for f in sorted((bccd / "JPEGImages").glob("*.jpg"))[:10]]

    def colour_only(domain, frames):
        m = DomainMonitor({"colour": domain["colour"]}, every=1)
        for f in frames:
            m.add_frame(f)
        return m.report()

    before = colour_only(dom, bccd_frames)
    assert before["unlike_training"] is True
    run_colour = before["colour"]  # what summary.json of a BCCD run records
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "summary.json").write_text(json.dumps({"domain": {"colour": run_colour}}))
        adapted = {**dom, "colour": adapted_colours([{"kind": "run", "path": d}, {"kind": "image-folder",
                                                                                  "path": d}], dom["colour"])}
    assert len(adapted["colour"]["also"]) == 1  # the tree adds nothing
    after = colour_only(adapted, bccd_frames)
    assert after["unlike_training"] is False and "adapted-to" in after["colour"]["nearest"]
    pbc = colour_only(adapted, [read_image_rgb(f) for f in sorted(pbc_raw_val.glob("*.jpg"))[:10]])
    assert pbc["unlike_training"] is False and pbc["colour"]["nearest"] == "the training slides'"


def test_the_run_summary_carries_the_domain_check(default_val, bccd, tmp_path):
    """End to end: a bundle with ood/domain sections written by the export writer; an edge run on
    BCCD frames warns in summary.json that the microscope is unlike the training data."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier, run
    from hemaedge.edge.recorder import Recorder
    from hemaedge.edge.sources import open_source
    from hemaedge.export.bundle_writer import confidence_sections, write_export_bundle

    b, _, images, p, y = default_val
    sidecar = {"output": {"temperature": 0.7}, "ood": ood_section(p, y), "domain": domain_section(images, p)}
    output, sections = confidence_sections(sidecar, b.manifest["output"])
    out = write_export_bundle(tmp_path / "bundle", b.model_path, model_format=b.manifest["model"]["format"],
                              classes=b.classes, contract=b.contract, output=output, source={}, settings={},
                              manifest_extra=sections)
    nb = load_bundle(out)
    assert nb.manifest["output"]["temperature"] == 0.7 and nb.manifest["ood"] == sidecar["ood"]
    frames = tmp_path / "frames"
    frames.mkdir()
    for f in sorted((bccd / "JPEGImages").glob("*.jpg"))[:4]:
        shutil.copy(f, frames / f.name)
    clf = CellClassifier(nb, load_backend(nb, threads=2))
    summary = run(open_source(str(frames)), clf, Recorder(tmp_path / "run", nb.classes))
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["domain"]["unlike_training"] is True and "train adapt" in saved["domain"]["warning"]
    assert summary["domain"] == saved["domain"]
    # the bundle's two OOD levels drive "unidentified" and "flagged", and the summary says which rule ran
    thr, flag = sidecar["ood"]["unidentified_threshold"], sidecar["ood"]["threshold"]
    assert saved["identify"]["ood"] == {"score": "neg-log-max-prob", "threshold": thr, "flag_threshold": flag,
                                        "source": "bundle", "note": saved["identify"]["ood"]["note"],
                                        "flag_source": "bundle", "unidentified_level": round(math.exp(-thr), 6),
                                        "review_level": round(math.exp(-flag), 6)}
    reasons = saved["differential"]["unidentified_reasons"]
    assert sum(reasons.values()) == saved["differential"]["unidentified"]
    with open(tmp_path / "run" / "cells.csv", newline="") as fh:
        wbc = [r for r in csv.DictReader(fh) if r["kind"] == "wbc" and r["counted"] == "1"]
    kept = [r for r in wbc if r["class"] != "unidentified"]
    ood_rows = [r for r in wbc if r["class"] == "unidentified" and "out of distribution" in r["flag"]]
    assert wbc and kept + ood_rows  # nucleated cells were judged
    assert all(-np.log(float(r["confidence"])) <= thr + 1e-4 for r in kept)  # none above the strict level kept its class
    # kept cells above the review level are counted in their class and flagged with the reason
    assert all("unusual for the training data" in r["flag"] for r in kept if -np.log(float(r["confidence"])) > flag + 1e-4)
    assert all(-np.log(float(r["confidence"])) > thr - 1e-4 and "OOD score" in r["flag"] for r in ood_rows)
    assert len(ood_rows) == reasons.get("out of distribution", 0)


# ----------------------------------------------------------------------------- the OOD rule (edge/identify.py)


def test_ood_score_of_a_real_bundle_is_higher_on_bccd_cells_than_on_training_val(default_val, bccd):
    """The packaged default's score on the white cells of 12 BCCD val frames (another microscope)
    against 96 BloodMNIST val crops (the training microscope)."""
    from hemaedge.benchmarks.tools.bccd_wbc import frames as bccd_frames
    from hemaedge.edge.pipeline import CellClassifier

    b, be, _, p_val, _ = default_val
    clf = CellClassifier(b, be)
    bccd_scores = []
    for r in bccd_frames(bccd, "val")[:12]:
        res = clf.process(read_image_rgb(bccd / "JPEGImages" / f"{r['frame']}.jpg"))
        bccd_scores += [d.ood_score for det, d in zip(res.detections, res.decisions) if det.kind == "wbc"]
    assert len(bccd_scores) >= 10 and np.isfinite(bccd_scores).all()  # recorded with every decision
    val_scores = ood_scores(p_val)
    assert np.mean(bccd_scores) > np.mean(val_scores) and np.median(bccd_scores) > 2 * np.median(val_scores)


@pytest.fixture(scope="module")
def bundle_without_ood(tmp_path_factory):
    """The packaged default as a bundle exported before OOD statistics existed (no `ood` section)."""
    root = tmp_path_factory.mktemp("no-ood") / "bundle"
    shutil.copytree(DEFAULT, root)
    m = json.loads((root / "manifest.json").read_text())
    m.pop("ood", None)
    (root / "manifest.json").write_text(json.dumps(m, indent=2))
    return root


def test_a_bundle_without_an_ood_section_keeps_the_confidence_only_rule(bundle_without_ood):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier

    b = load_bundle(bundle_without_ood)
    assert "ood" not in b.manifest
    be = load_backend(b, threads=1)
    clf = CellClassifier(b, be)
    assert clf.ood_rule.threshold is None and clf.ood_rule.source == "none"
    assert "confidence-only" in clf.identify_rule()["ood"]["note"]
    sure_but_odd = np.array([0.05, 0, 0, 0, 0.8, 0.15, 0, 0], np.float32)  # 0.8: OOD score 0.22
    assert clf.decide("wbc", sure_but_odd).label == "lymphocyte"
    res = clf.process(read_image_rgb(SAMPLES / "bccd" / "BloodImage_00011.jpg"))  # a real frame runs
    assert res.detections and all(d.reason != "out of distribution" for d in res.decisions)
    with_rule = CellClassifier(b, be, ood_threshold=0.15)  # the user's threshold
    d = with_rule.decide("wbc", sure_but_odd)
    assert (d.label, d.reason, with_rule.ood_rule.source) == ("unidentified", "out of distribution", "user")
    assert d.ood_score == pytest.approx(-np.log(0.8), rel=1e-5)


def test_the_packaged_default_carries_a_calibrated_ood_threshold(default_val):
    b = default_val[0]
    from hemaedge.edge.pipeline import CellClassifier

    clf = CellClassifier(b, default_val[1])
    ood = b.manifest.get("ood")
    if not ood:
        pytest.skip("the packaged default predates OOD statistics")
    assert clf.ood_rule.source == "bundle" and clf.ood_rule.flag_threshold == ood["threshold"] > 0
    assert clf.ood_rule.threshold == ood["unidentified_threshold"] > ood["threshold"]
    assert ood["quantile"] == 0.95 and ood["n"] > 1000  # chosen on the whole BloodMNIST val split


def test_the_bundle_threshold_is_used_and_can_be_overridden_or_switched_off():
    from hemaedge.edge.identify import OodRule, decide

    manifest = {"ood": {"score": "neg-log-max-prob", "quantile": 0.95, "threshold": 0.136}}
    rule = OodRule.from_bundle(manifest)
    assert (rule.threshold, rule.source) == (0.136, "bundle") and "95%" in rule.note
    assert OodRule.from_bundle(manifest, "auto").threshold == 0.136
    assert OodRule.from_bundle(manifest, 0.5).threshold == 0.5
    assert OodRule.from_bundle(manifest, "off").threshold is None
    classes = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte",
               "neutrophil", "platelet"]
    p = np.array([0, 0, 0, 0, 0.85, 0.15, 0, 0], np.float32)  # score 0.163
    assert decide("wbc", p, classes, ood_threshold=rule.threshold).reason == "out of distribution"
    assert decide("wbc", p, classes, ood_threshold=None).label == "lymphocyte"
    low = np.array([0.3, 0.3, 0, 0, 0.35, 0.05, 0, 0], np.float32)
    assert decide("wbc", low, classes, ood_threshold=rule.threshold).reason == "low confidence"
    plt = np.array([0, 0, 0, 0, 0.1, 0, 0, 0.9], np.float32)
    assert decide("wbc", plt, classes, ood_threshold=rule.threshold).reason == "classified as platelet"
    # platelet candidates are not judged by the OOD rule: they can only be platelets anyway
    assert decide("platelet", plt, classes, ood_threshold=0.0).label == "platelet"


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "abc", "", None])
def test_ood_threshold_values_are_validated(value):
    from hemaedge.edge.errors import UsageError
    from hemaedge.edge.identify import parse_ood_threshold

    with pytest.raises(UsageError, match="OOD threshold"):
        parse_ood_threshold(value)


@pytest.mark.parametrize("ood, needle", [({"score": "energy", "threshold": 3.0}, "unknown"),
                                         ({"score": "neg-log-max-prob", "threshold": -1}, "finite number"),
                                         ({"score": "neg-log-max-prob", "threshold": float("nan")}, "finite number")])
def test_a_bundle_with_an_unusable_ood_section_is_refused(ood, needle):
    from hemaedge.edge.errors import BundleError
    from hemaedge.edge.identify import OodRule

    with pytest.raises(BundleError, match=needle):
        OodRule.from_bundle({"ood": ood})


@pytest.mark.parametrize("value", ["-1", "nan", "high"])
def test_edge_run_refuses_a_bad_ood_threshold_with_one_line(value, tmp_path):
    from click.testing import CliRunner

    from hemaedge.cli import main

    res = CliRunner().invoke(main, ["edge", "run", "--source", str(SAMPLES / "bccd"), "--out", str(tmp_path / "r"),
                                    "--ood-threshold", value, "-q"])
    assert res.exit_code == 2 and "--ood-threshold" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_edge_run_with_an_ood_threshold_says_why_cells_are_unidentified(tmp_path):
    from click.testing import CliRunner

    from hemaedge.cli import main

    res = CliRunner().invoke(main, ["edge", "run", "--source", str(SAMPLES / "bccd"), "--out", str(tmp_path / "r"),
                                    "--ood-threshold", "0.05", "-q"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["identify"]["ood"]["source"] == "user" and saved["identify"]["ood"]["threshold"] == 0.05
    assert saved["differential"]["unidentified_reasons"].get("out of distribution", 0) >= 1
    assert "OOD score > 0.05 (user)" in res.output


def test_edge_run_with_a_bundle_without_ood_statistics_says_it_is_confidence_only(bundle_without_ood, tmp_path):
    from click.testing import CliRunner

    from hemaedge.cli import main

    res = CliRunner().invoke(main, ["edge", "run", "--bundle", str(bundle_without_ood), "--source",
                                    str(SAMPLES / "bccd" / "BloodImage_00011.jpg"), "--out", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 0, res.output
    rule = json.loads((tmp_path / "r" / "summary.json").read_text())["identify"]
    assert rule["ood"]["threshold"] is None and rule["ood"]["source"] == "none"
    assert "no OOD rule (the bundle has no OOD statistics" in res.output


CLASSES = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte",
           "neutrophil", "platelet"]
TWO_TIERS = {"score": "neg-log-max-prob", "quantile": 0.95, "threshold": 0.065,
             "unidentified_quantile": 0.995, "unidentified_threshold": 0.575}


def test_two_tiers_flag_an_unusual_cell_but_still_count_it_and_leave_out_only_the_strangest():
    from hemaedge.edge.identify import OodRule, decide

    rule = OodRule.from_bundle({"ood": TWO_TIERS})
    assert (rule.threshold, rule.flag_threshold, rule.source) == (0.575, 0.065, "bundle")
    assert "two-tier" in rule.note and "99.5%" in rule.note and "95%" in rule.note
    kw = {"ood_threshold": rule.threshold, "ood_flag_threshold": rule.flag_threshold}
    sure = np.array([0, 0, 0, 0, 0.97, 0.03, 0, 0], np.float32)  # score 0.030: below both levels
    unusual = np.array([0, 0, 0, 0, 0.8, 0.2, 0, 0], np.float32)  # 0.223: review tier
    strange = np.array([0.1, 0, 0, 0, 0.5, 0.4, 0, 0], np.float32)  # 0.693: unidentified tier
    d = decide("wbc", sure, CLASSES, **kw)
    assert (d.label, d.flag, d.counted) == ("lymphocyte", "", True)
    d = decide("wbc", unusual, CLASSES, **kw)
    assert (d.label, d.counted, d.reason) == ("lymphocyte", True, "") and "unusual for the training data" in d.flag
    d = decide("wbc", strange, CLASSES, **kw)
    assert (d.label, d.reason) == ("unidentified", "out of distribution")
    # without the review tier the same unusual cell passes unflagged (0.8 is above REVIEW_BELOW)
    assert decide("wbc", unusual, CLASSES, ood_threshold=0.575).flag == ""


def test_an_old_one_tier_bundle_keeps_its_rule_and_says_so_once_in_the_log(caplog, default_val):
    import logging

    from hemaedge.edge.identify import OodRule, decide
    from hemaedge.edge.pipeline import CellClassifier

    old = {"score": "neg-log-max-prob", "quantile": 0.95, "threshold": 0.065}
    rule = OodRule.from_bundle({"ood": old})
    assert (rule.threshold, rule.flag_threshold) == (0.065, None) and "one-tier" in rule.note
    unusual = np.array([0, 0, 0, 0, 0.8, 0.2, 0, 0], np.float32)
    assert decide("wbc", unusual, CLASSES, ood_threshold=rule.threshold).reason == "out of distribution"
    b, be = default_val[0], default_val[1]
    one_tier = type("M", (), {"classes": b.classes, "contract": b.contract, "manifest": {**b.manifest, "ood": old}})
    with caplog.at_level(logging.INFO, logger="hemaedge.edge.pipeline"):
        CellClassifier(one_tier, be)
    said = [r for r in caplog.records if "one-tier" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING


def test_a_user_threshold_keeps_the_bundles_review_level_below_it():
    from hemaedge.edge.identify import OodRule

    assert OodRule.from_bundle({"ood": TWO_TIERS}, 0.3).flag_threshold == 0.065
    assert OodRule.from_bundle({"ood": TWO_TIERS}, 0.05).flag_threshold is None  # nothing between the two
    assert OodRule.from_bundle({"ood": TWO_TIERS}, "off").flag_threshold is None


def test_inverted_ood_levels_are_refused():
    from hemaedge.edge.errors import BundleError
    from hemaedge.edge.identify import OodRule

    with pytest.raises(BundleError, match="inverted"):
        OodRule.from_bundle({"ood": {**TWO_TIERS, "unidentified_threshold": 0.01}})


def test_ood_section_sets_the_strict_level_above_the_review_level_on_real_cells(default_val):
    _, _, _, p, y = default_val
    sec = ood_section(p, y)
    assert sec["unidentified_quantile"] == 0.995 and sec["unidentified_threshold"] >= sec["threshold"]
    right = p.argmax(1) == y
    assert np.mean(ood_scores(p)[right] > sec["unidentified_threshold"]) <= 0.02
    assert "unidentified_threshold" not in ood_section(p, y, unidentified_quantile=None)
    with pytest.raises(ValueError):
        ood_section(p, y, quantile=0.95, unidentified_quantile=0.9)


def test_the_packaged_default_has_two_tiers_calibrated_on_its_own_val_outputs(default_val):
    from hemaedge.edge.pipeline import CellClassifier

    b = default_val[0]
    ood = b.manifest["ood"]
    clf = CellClassifier(b, default_val[1])
    assert clf.ood_rule.threshold == ood["unidentified_threshold"] and clf.ood_rule.flag_threshold == ood["threshold"]
    assert ood["n"] == 1712 and "own outputs" in ood["calibrated_on"]


def test_ood_calibrate_writes_both_levels_and_the_views_into_a_real_bundle(bloodmnist128, tmp_path):
    from click.testing import CliRunner

    from hemaedge.benchmarks.tools.ood_calibrate import main
    from hemaedge.edge.bundle import load_bundle, verify_bundle
    from hemaedge.edge.pipeline import CellClassifier

    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT, root)
    val = tmp_path / "bm" / "val"
    for c in load_bundle(root).classes:  # a small real slice of val, the tool's only input
        (val / c).mkdir(parents=True)
        for f in sorted((bloodmnist128 / "val" / c).glob("*.jpg"))[:6]:
            shutil.copy(f, val / c / f.name)
    res = CliRunner().invoke(main, ["--bundle", str(root), "--bloodmnist128", str(tmp_path / "bm"), "--views", "flips",
                                    "--write", "--name", "t", "--out", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    b = load_bundle(root)
    assert verify_bundle(root) == []  # the model file and its checksum are untouched
    ood = b.manifest["ood"]
    assert ood["n"] == 48 and ood["views"] == "flips" and ood["unidentified_threshold"] >= ood["threshold"] > 0
    assert b.manifest["inference"] == {"views": "flips"} and b.manifest["domain"]["ood"]["group"] == 20
    clf = CellClassifier(b, None)
    assert clf.views_name == "flips" and clf.ood_rule.flag_threshold == ood["threshold"]
    assert (tmp_path / "res" / "ood_calibrate_t.md").is_file()
