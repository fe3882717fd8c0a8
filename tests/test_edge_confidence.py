"""Confidence that means what it says: temperature in the manifest, ECE, the per-cell OOD score
and the per-run domain check, on real data with the packaged default bundle."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hemaedge.edge.confidence import ood_scores, ood_section, unidentified
from hemaedge.edge.domain import DomainMonitor, domain_section
from hemaedge.edge.preprocess import output_probabilities, prepare_batch, read_image_rgb

DEFAULT = Path(__file__).resolve().parents[1] / "src" / "hemaedge" / "models" / "default"


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
    flagged = unidentified(p, sec)
    assert 0.0 < flagged[right].mean() <= 0.1  # ~5 % of confident in-distribution answers by construction
    assert flagged[~right].mean() > flagged[right].mean()  # wrong answers are flagged more often
    assert not unidentified(p, None).any()
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
