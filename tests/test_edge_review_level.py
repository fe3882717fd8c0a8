"""How much a run flags for review: `edge run --review-level P` (the review level as a top
probability) and `--review-classes` (every call of those classes reviewed), on the sample frames
with the packaged default bundle (edge/identify.py `OodRule.from_bundle`, `decide`)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hemaedge.cli import main
from hemaedge.edge.errors import UsageError
from hemaedge.edge.identify import OodRule, decide, parse_review_classes, parse_review_level

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
DEFAULT_MANIFEST = json.loads((ROOT / "src" / "hemaedge" / "models" / "default" / "manifest.json").read_text())
CLASSES = DEFAULT_MANIFEST["classes"]


def _run(out: Path, *options: str):
    res = CliRunner().invoke(main, ["edge", "run", "--source", str(SAMPLES), "--out", str(out), "-q", *options])
    assert res.exit_code == 0, res.output
    cells = list(csv.DictReader((out / "cells.csv").open()))
    return cells, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The sample frames (BCCD + PBC) run with the default settings and with each option."""
    tmp = tmp_path_factory.mktemp("review-level")
    bundle_level = math.exp(-DEFAULT_MANIFEST["ood"]["threshold"])
    return {name: _run(tmp / name, *opts) for name, opts in {
        "default": (),
        "bundle-level": ("--review-level", repr(bundle_level)),
        "fewer": ("--review-level", "0.65"),
        "more": ("--review-level", "0.995"),
        "classes": ("--review-classes", "erythroblast,ig"),
    }.items()}


def _flagged(cells) -> set:
    return {(c["frame"], c["cell"]) for c in cells if c["review"] == "1"}


def test_defaults_are_the_bundles_review_level_and_no_class_policy(runs):
    cells, summary = runs["default"]
    ood = summary["identify"]["ood"]
    assert ood["flag_threshold"] == DEFAULT_MANIFEST["ood"]["threshold"] and ood["flag_source"] == "bundle"
    assert ood["review_level"] == pytest.approx(math.exp(-DEFAULT_MANIFEST["ood"]["threshold"]), abs=1e-6)
    assert summary["identify"]["review_classes"] == []
    # the platelet levels a run applies are in its summary (identify.PLATELET_CONFIRM_ABOVE, _KIND_ABOVE)
    from hemaedge.edge.identify import PLATELET_CONFIRM_ABOVE, PLATELET_KIND_ABOVE
    assert (summary["identify"]["platelet_confirm_above"], summary["identify"]["platelet_kind_above"]) == \
        (PLATELET_CONFIRM_ABOVE, PLATELET_KIND_ABOVE)
    # giving the bundle's own level explicitly changes nothing in what is counted or flagged
    same, same_summary = runs["bundle-level"]
    assert [(c["class"], c["review"], c["counted"], c["flag"]) for c in same] == \
        [(c["class"], c["review"], c["counted"], c["flag"]) for c in cells]
    assert same_summary["identify"]["ood"]["flag_source"] == "user"
    assert same_summary["differential"] == summary["differential"]


def test_the_review_level_moves_the_flags_in_the_expected_direction(runs):
    base = _flagged(runs["default"][0])
    fewer, more = _flagged(runs["fewer"][0]), _flagged(runs["more"][0])
    assert fewer < base < more  # strictly: the sample frames hold cells between each pair of levels
    for name, level in (("fewer", 0.65), ("more", 0.995)):
        cells, summary = runs[name]
        assert summary["identify"]["ood"]["review_level"] == level
        for c in cells:  # a counted white cell is flagged exactly when it is less sure than the level
            if c["kind"] == "wbc" and c["class"] != "unidentified" and float(c["confidence"]) >= 0.6:
                assert (c["review"] == "1") == (float(c["confidence"]) < level), c
    # moving the review level flags cells, it does not change what is counted
    assert [(c["class"], c["counted"]) for c in runs["more"][0]] == [(c["class"], c["counted"])
                                                                     for c in runs["default"][0]]


def test_a_review_class_policy_flags_every_cell_of_those_classes_and_nothing_else(runs):
    cells, summary = runs["classes"]
    assert summary["identify"]["review_classes"] == ["erythroblast", "immature_granulocyte"]
    ery = [c for c in cells if c["class"] == "erythroblast"]
    assert ery, "the sample frames hold an erythroblast call"
    default = {(c["frame"], c["cell"]): c for c in runs["default"][0]}
    for c in cells:
        before = default[(c["frame"], c["cell"])]
        assert c["class"] == before["class"] and c["counted"] == before["counted"]
        if c["class"] in ("erythroblast", "immature_granulocyte"):
            assert c["review"] == "1" and "always reviewed (--review-classes)" in c["flag"]
        else:
            assert (c["review"], c["flag"]) == (before["review"], before["flag"])
    assert summary["flagged_for_review"] > runs["default"][1]["flagged_for_review"]


@pytest.mark.parametrize("options, needle", [
    (("--review-level", "1.5"), "at most 1"),
    (("--review-level", "0"), "above 0"),
    (("--review-level", "nan"), "probability"),
    (("--review-level", "high"), "not a number"),
    # the bundle's OOD unidentified level, as a top probability
    (("--review-level", "0.3"),
     f"below the unidentified level {math.exp(-DEFAULT_MANIFEST['ood']['unidentified_threshold']):.3f}"),
    (("--review-level", "0.3", "--ood-threshold", "off", "--unidentified-below", "0.5"),
     "below the unidentified level 0.5"),
    (("--review-classes", "blast"), "'blast' is not a class of this model"),
    (("--review-classes", " , "), "names no class"),
])
def test_bad_review_options_give_one_error_line_and_exit_2(options, needle, tmp_path):
    res = CliRunner().invoke(main, ["edge", "run", "--source", str(SAMPLES / "bccd"), "--out", str(tmp_path / "r"),
                                    "-q", *options])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_review_class_names_are_the_bundles_own_or_a_two_word_classs_initials():
    assert parse_review_classes("erythroblast,ig", CLASSES) == {"erythroblast", "immature_granulocyte"}
    assert parse_review_classes(" Immature granulocyte , IG", CLASSES) == {"immature_granulocyte"}
    assert parse_review_classes(None, CLASSES) == frozenset()
    with pytest.raises(UsageError, match="its classes are basophil, eosinophil"):
        parse_review_classes("erythroblast,nrbc", CLASSES)
    # initials that two classes share name neither
    with pytest.raises(UsageError, match="'ab' is not a class"):
        parse_review_classes("ab", ["a_b", "another_bit"])


def test_review_level_with_a_user_ood_threshold_and_without_an_ood_rule():
    rule = OodRule.from_bundle(DEFAULT_MANIFEST, 0.9, review_level=0.95)
    assert rule.threshold == 0.9 and rule.flag_threshold == pytest.approx(-math.log(0.95), abs=1e-6)
    assert "review level 0.95 given by the user" in rule.note and "bundle's review level" not in rule.note
    with pytest.raises(UsageError, match="below the unidentified level"):
        OodRule.from_bundle(DEFAULT_MANIFEST, 0.9, review_level=0.3)  # exp(-0.9) = 0.41
    off = OodRule.from_bundle(DEFAULT_MANIFEST, "off", review_level=0.8)  # confidence-only, own review tier
    assert off.threshold is None and off.flag_source == "user"
    p = np.array([0.75, 0.25] + [0.0] * 6)
    assert decide("wbc", p, CLASSES, ood_threshold=off.threshold, ood_flag_threshold=off.flag_threshold).flag
    assert not decide("wbc", p, CLASSES, ood_threshold=None, ood_flag_threshold=None).flag
    assert OodRule.from_bundle({}, None).flag_source == "none"
    assert parse_review_level("0.9") == 0.9


def test_annotated_frames_mark_the_cells_the_run_flagged(tmp_path):
    """Red boxes follow the run's review flags (a class policy shows), not a fixed confidence."""
    from hemaedge.edge.annotate import _REVIEW, draw
    from hemaedge.edge.preprocess import read_image_rgb

    out = tmp_path / "r"
    cells, _ = _run(out, "--review-classes", "erythroblast", "--annotate", str(tmp_path / "ann"))
    assert len(list((tmp_path / "ann").glob("*.jpg"))) == len({c["frame"] for c in cells})
    ery = [c for c in cells if c["class"] == "erythroblast"][0]
    assert float(ery["confidence"]) > 0.6 and ery["review"] == "1"  # flagged by the policy only

    class Result:  # the fields draw reads
        def __init__(self, flag):
            box = tuple(int(ery[k]) for k in ("x0", "y0", "x1", "y1"))
            self.detections = [type("D", (), {"box": box, "kind": "wbc"})()]
            self.labels, self.confidences, self.cell_flags = ["erythroblast"], [float(ery["confidence"])], [flag]

    image = read_image_rgb(SAMPLES / ery["name"])
    x0, y0 = int(ery["x0"]), int(ery["y0"])
    assert tuple(draw(image, Result("erythroblast calls are always reviewed"), 0.6)[y0 + 5, x0]) == _REVIEW
    assert tuple(draw(image, Result(""), 0.6)[y0 + 5, x0]) != _REVIEW
