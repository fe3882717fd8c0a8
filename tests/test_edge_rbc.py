"""Red cells: detection on real Chula RBC-12 / BCCD frames, the crops data set, the morphology
tally, and `hemaedge edge run --rbc/--count-red-cells` end to end with a tiny real bundle."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_helpers import make_bundle, make_onnx
from hemaedge.cli import main
from hemaedge.edge.preprocess import read_image_rgb
from hemaedge.edge.rbc import RbcParams, detect_red_cells
from hemaedge.edge.rbc_morphology import RedCellResult, RedCellTally, percent_interval

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def chula(shared_data) -> Path:
    root = shared_data / "chula_rbc12"
    if not root.is_dir():
        pytest.skip("chula_rbc12 not in the shared data")
    return root


@pytest.fixture(scope="module")
def chula_small(chula, tmp_path_factory) -> Path:
    """Ten real frames in the Chula layout (a copy, so the crops tool can be run on it quickly)."""
    root = tmp_path_factory.mktemp("chula") / "chula"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for lab in sorted((chula / "labels").glob("*.txt"))[:10]:
        shutil.copy(lab, root / "labels" / lab.name)
        shutil.copy(chula / "images" / f"{lab.stem}.jpg", root / "images" / f"{lab.stem}.jpg")
    return root


def _points(path: Path):
    return [tuple(int(v) for v in line.split()) for line in path.read_text().splitlines() if line.strip()]


def test_detects_the_labelled_red_cells_of_real_chula_frames(chula_small):
    found = total = 0
    for lab in sorted((chula_small / "labels").glob("*.txt"))[:4]:
        image = read_image_rgb(chula_small / "images" / f"{lab.stem}.jpg")
        cells, d = detect_red_cells(image)
        assert 30 < d < 60  # Chula at 1000x: a red cell is ~40 px
        pts = _points(lab)
        found += sum(any(c.box[0] <= x <= c.box[2] and c.box[1] <= y <= c.box[3] for c in cells) for x, y, _ in pts)
        total += len(pts)
        for c in cells:
            assert c.kind == "rbc" and c.box[2] > c.box[0] and c.box[3] > c.box[1] and c.area > 0
            assert 0.2 * d < c.diameter < 3 * d
    assert found / total > 0.93


def _two_touching_discs(d=40):
    img = np.full((200, 240, 3), (200, 205, 215), np.uint8)  # pale blue-grey glass
    for cx, cy in ((80, 100), (80 + int(0.85 * d), 100), (180, 60), (40, 40), (190, 160), (120, 170)):
        cv2.circle(img, (cx, cy), d // 2, (190, 120, 150), -1)  # pink-purple red cells
    return img


def test_watershed_splits_touching_cells_that_components_leave_joined():
    img = _two_touching_discs()
    ws, _ = detect_red_cells(img, 40.0, RbcParams(method="watershed"))
    comp, _ = detect_red_cells(img, 40.0, RbcParams(method="components"))
    assert len(ws) == 6
    assert len(comp) == 5


def test_a_large_lone_cell_stays_one_cell_with_its_whole_area():
    # a macrocyte-sized disc (1.4 red-cell diameters, ~2 cell areas) has one distance peak: one cell,
    # not split, and measured like a lone normal cell (whole blob), beside a normal one
    img = np.full((200, 240, 3), (200, 205, 215), np.uint8)
    cv2.circle(img, (70, 100), 28, (190, 120, 150), -1)
    cv2.circle(img, (180, 100), 20, (190, 120, 150), -1)
    cells, _ = detect_red_cells(img, 40.0, RbcParams(method="watershed"))
    assert len(cells) == 2
    big = max(cells, key=lambda c: c.area)
    assert abs(big.centre[0] - 70) < 2 and abs(big.centre[1] - 100) < 2
    # the drawn disc is 57 px across; measured as a whole blob like the lone 41-px one (39.8 px), not
    # less its outline as a watershed region would be (54 px)
    assert abs(big.diameter - 56) < 1


def test_a_frame_without_red_cells_gives_no_cells():
    cells, d = detect_red_cells(np.full((240, 320, 3), 210, np.uint8))
    assert cells == [] and d is None


def test_bccd_frame_counts_red_cells():
    frame = REPO / "samples" / "bccd" / "BloodImage_00007.jpg"
    cells, d = detect_red_cells(read_image_rgb(frame))
    assert d > 60 and 8 <= len(cells) <= 40  # the annotators boxed 20 red cells here


def test_red_cell_percent_interval_is_the_differential_interval():
    # Rümke's table: 0 of 100 -> 0-3.6 %; 50 of 100 -> 39.8-60.2 % (exact binomial)
    assert percent_interval(0, 100) == (0.0, 3.62)
    lo, hi = percent_interval(50, 100)
    assert (round(lo, 1), round(hi, 1)) == (39.8, 60.2)
    assert percent_interval(3, 0) == (0.0, 0.0)


def test_tally_flags_schistocytes_above_one_percent():
    tally = RedCellTally(["normal", "schistocyte"])
    labels = ["normal"] * 95 + ["schistocyte"] * 5
    tally.add(RedCellResult([object()] * 100, labels, np.ones(100), 40.0, {"rbc_total": 3.0}))
    s = tally.summary()
    assert s["red_cells"] == 100 and s["per_field"]["median"] == 100
    assert [f["class"] for f in s["flags"]] == ["schistocyte"] and s["flags"][0]["confident"]
    low = RedCellTally(["normal", "schistocyte"])
    low.add(RedCellResult([object()] * 200, ["normal"] * 199 + ["schistocyte"], np.ones(200), 40.0, {}))
    assert low.summary()["flags"] == []


def test_rbc_crops_split_by_frame(chula_small, tmp_path):
    out = tmp_path / "crops"
    runner = CliRunner()
    res = runner.invoke(main, ["data", "rbc-crops", str(chula_small), "--out", str(out), "--size", "32",
                               "--exclude", "uncategorised"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with open(out / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    n_points = sum(1 for lab in (chula_small / "labels").glob("*.txt") for p in _points(lab) if p[2] != 10)
    assert len(rows) == n_points
    frame_split = {}
    for r in rows:
        assert frame_split.setdefault(r["frame"], r["split"]) == r["split"]  # no frame in two splits
        img = cv2.imread(str(out / r["file"]))
        assert img.shape == (32, 32, 3)
    assert set(frame_split.values()) == {"train", "val", "test"}
    classes = (out / "classes.txt").read_text().split()
    assert "uncategorised" not in classes and classes[0] == "normal"
    assert sorted({r["class"] for r in rows}) == sorted(classes)
    again = runner.invoke(main, ["data", "rbc-crops", str(chula_small), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    # the geometry in the device ruler's units, for the export to put into the bundle
    geo = json.loads((out / "rbc_crops.json").read_text())
    assert geo["size"] == 32 and geo["crop_side_factor"] == pytest.approx(geo["crop_side_px"] / geo["ruler_diameter_px"], abs=1e-3)
    assert 1.45 <= geo["crop_side_factor"] <= 1.55
    wide = tmp_path / "wide"
    res = runner.invoke(main, ["data", "rbc-crops", str(chula_small), "--out", str(wide), "--size", "32",
                               "--diameter", str(1.2 * geo["ruler_diameter_px"])], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads((wide / "rbc_crops.json").read_text())["crop_side_factor"] == pytest.approx(1.8, abs=0.03)
    bad = runner.invoke(main, ["data", "rbc-crops", str(chula_small), "--out", str(tmp_path / "x"), "--exclude", "nope"])
    assert bad.exit_code == 2 and "not a Chula RBC-12 type" in bad.output


def test_edge_run_classifies_red_cells(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for img in sorted((REPO / "samples" / "bccd").glob("*.jpg"))[:3]:
        shutil.copy(img, frames / img.name)
    (frames / "broken.jpg").write_bytes(b"not a jpeg")
    wbc = make_bundle(tmp_path, make_onnx(tmp_path / "wbc.onnx", 32), "onnx", 32)
    rbc_classes = ["normal", "schistocyte", "spherocyte"]
    rbc = make_bundle(tmp_path, make_onnx(tmp_path / "rbc.onnx", 32), "onnx", 32, classes=rbc_classes, name="rbc")
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["edge", "run", "-q", "--bundle", str(wbc), "--rbc", str(rbc), "--source",
                                    str(frames), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with open(out / "cells.csv") as fh:
        red = [r for r in csv.DictReader(fh) if r["kind"] == "rbc"]
    with open(out / "frames.csv") as fh:
        per_frame = [int(r["red_cells"]) for r in csv.DictReader(fh)]
    assert len(per_frame) == 3 and all(n >= 8 for n in per_frame) and len(red) == sum(per_frame)
    assert {r["class"] for r in red} <= set(rbc_classes) and all(0 < float(r["confidence"]) <= 1 for r in red)
    s = json.loads((out / "summary.json").read_text())["red_cells"]
    assert s["fields"] == 3 and s["red_cells"] == len(red) == s["classified"]
    assert sum(m["count"] for m in s["morphology"]) == len(red)
    for m in s["morphology"]:
        assert m["ci95_low"] <= m["percent"] <= m["ci95_high"]
    assert "red cells:" in res.output and (out / "rbc_counts.csv").is_file()
    missing = CliRunner().invoke(main, ["edge", "run", "-q", "--bundle", str(wbc), "--rbc", str(tmp_path / "nope"),
                                        "--source", str(frames), "--out", str(tmp_path / "run2")])
    assert missing.exit_code == 2 and missing.output.startswith("Error:")


def test_count_only_run_has_red_cells_without_classes(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(REPO / "samples" / "bccd" / "BloodImage_00007.jpg", frames / "a.jpg")
    wbc = make_bundle(tmp_path, make_onnx(tmp_path / "wbc.onnx", 32), "onnx", 32)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["edge", "run", "-q", "--bundle", str(wbc), "--count-red-cells", "--source",
                                    str(frames), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with open(out / "cells.csv") as fh:
        red = [r for r in csv.DictReader(fh) if r["kind"] == "rbc"]
    s = json.loads((out / "summary.json").read_text())["red_cells"]
    assert s["red_cells"] == len(red) >= 8 and s["classified"] == 0 and s["flags"] == []
    assert {r["class"] for r in red} == {"rbc"} and all(r["confidence"] == "" for r in red)


def test_rbc_crops_match_extract_crop_inside_and_at_the_border():
    """At the classifier's own size (no resize) each crop is the frame's square around the centre,
    border replicated where it runs off the frame."""
    from hemaedge.edge.rbc import rbc_crops
    from hemaedge.edge.segment import extract_crop

    img = read_image_rgb(REPO / "samples" / "bccd" / "BloodImage_00007.jpg")
    centres = [(320, 240), (5, 7), (636, 478), (100, 470)]
    got = rbc_crops(img, centres, diameter=64 / 1.5, size=64)
    assert got.shape == (4, 64, 64, 3) and got.dtype == np.uint8
    for crop, (x, y) in zip(got, centres):
        assert np.array_equal(crop, extract_crop(img, (x, y, 64)))
    assert rbc_crops(img, [], 40.0, 64).shape == (0, 64, 64, 3)


@pytest.mark.parametrize("diameter", [20.0, 35.1, 100.0])  # enlarged, Chula-like, BCCD-like (shrunk)
def test_rbc_crops_from_one_resize_keep_the_cell_centred_and_sized(diameter):
    """The frame is resized once (size / side) and the crops cut from it: a disc of one ruler
    diameter at the centre lands at the crop's centre, 64 / 1.5 px across."""
    from hemaedge.edge.rbc import rbc_crops

    img = np.full((480, 640, 3), 230, np.uint8)
    centres = [(200.0, 150.0), (430.0, 333.0), (3.0, 470.0)]
    for x, y in centres:
        cv2.circle(img, (int(x), int(y)), int(round(diameter / 2)), (150, 60, 60), -1)
    crops = rbc_crops(img, centres, diameter, size=64)
    for crop in crops[:2]:
        dark = np.argwhere(crop[..., 1] < 140)
        centre = dark.mean(axis=0)
        assert np.all(np.abs(centre - 31.5) <= 1.0), centre
        width = dark[:, 1].max() - dark[:, 1].min() + 1
        assert abs(width - 64 / 1.5) <= 2.5, width


def test_packaged_red_cell_bundle_classifies_real_frames(tmp_path):
    """The shipped int8 morphology bundle, verified and run on the sample frames with the default model."""
    from hemaedge.train.rbc_crops import CHULA_TYPES

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["edge", "run", "-q", "--rbc", "packaged", "--source", str(REPO / "samples" / "bccd"),
                                    "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())["red_cells"]
    assert [m["class"] for m in s["morphology"]] == [c for c in CHULA_TYPES if c != "uncategorised"]
    assert s["classified"] == s["red_cells"] > 20
    assert sum(m["percent"] for m in s["morphology"]) == pytest.approx(100, abs=0.1)
    # BCCD is another magnification (red cells ~2.8x Chula's): auto keeps each field's own ruler
    assert s["size_scale_fields"] == {"bundle": 0, "field": s["fields"]}


def test_qualify_marks_flags_of_an_unchecked_or_unlike_microscope_as_not_validated():
    from hemaedge.edge.rbc_morphology import NOT_VALIDATED, qualify

    def flagged():
        tally = RedCellTally(["normal", "schistocyte"])
        tally.add(RedCellResult([object()] * 100, ["normal"] * 90 + ["schistocyte"] * 10, np.ones(100), 40.0, {}))
        return tally.summary()

    unchecked = qualify(flagged(), {"checked": False, "reasons": [], "note": "no domain section"})
    assert unchecked["morphology_validated"] is None and "not checked" in unchecked["validation_note"]
    unlike = qualify(flagged(), {"checked": True, "unlike_training": True, "reasons": ["colour is 9 spreads away"]})
    assert unlike["morphology_validated"] is False and "9 spreads" in unlike["validation_note"]
    like = qualify(flagged(), {"checked": True, "unlike_training": False, "reasons": []})
    assert like["morphology_validated"] is True and "validation_note" not in like
    assert [f["validated"] for s in (unchecked, unlike, like) for f in s["flags"]] == [False, False, True]
    from hemaedge.edge.rbc_morphology import format_red_cells

    assert NOT_VALIDATED in format_red_cells(unlike) and NOT_VALIDATED not in format_red_cells(like)


def _domain_of(images):
    """A bundle `domain` section whose training colours are those of `images` (no OOD limit)."""
    from hemaedge.edge.preprocess import colour_anchors

    a = np.stack([colour_anchors(img) for img in images])
    r = lambda v: [round(float(x), 3) for x in v]
    return {"colour": {"space": "opencv-lab8", "background": r(np.median(a[:, 0], 0)), "cells": r(np.median(a[:, 1], 0)),
                       "background_spread": [2.0] * 3, "cells_spread": [2.0] * 3, "images": len(a), "z_limit": 4.0},
            "ood": {}}


def test_red_cell_summary_says_whether_this_microscope_is_the_training_one(tmp_path):
    """Issue 15: the red-cell model's own domain check decides whether its morphology (and so its
    schistocyte flag) is validated on the run's microscope; --rbc-normalize needs that section."""
    from hemaedge.edge.bundle import write_bundle
    from hemaedge.edge.preprocess import InputContract

    frames = tmp_path / "frames"
    frames.mkdir()
    for img in sorted((REPO / "samples" / "bccd").glob("*.jpg"))[:2]:
        shutil.copy(img, frames / img.name)
    bccd = [read_image_rgb(p) for p in sorted(frames.glob("*.jpg"))]
    wbc = make_bundle(tmp_path, make_onnx(tmp_path / "wbc.onnx", 32), "onnx", 32)
    onnx = make_onnx(tmp_path / "rbc.onnx", 32)
    other = (np.clip(bccd[0].astype(int) * [1, 0.6, 1.3], 0, 255)).astype(np.uint8)  # another stain
    results = {}
    for name, domain in (("none", None), ("same", _domain_of(bccd)), ("other", _domain_of([other]))):
        b = write_bundle(tmp_path / f"rbc-{name}", {onnx.name: onnx}, model_file=onnx.name, backend="onnx",
                         model_format="onnx", classes=["normal", "schistocyte", "spherocyte"],
                         contract=InputContract(size=32), output={"kind": "probabilities", "dtype": "float32"},
                         extra={"domain": domain} if domain else None)
        for norm in (["--no-rbc-normalize"], ["--rbc-normalize"]):
            res = CliRunner().invoke(main, ["edge", "run", "-q", "--bundle", str(wbc), "--rbc", str(b), *norm,
                                            "--source", str(frames), "--out", str(tmp_path / f"run-{name}{norm[0]}")])
            results[name, norm[0]] = res
    assert results["none", "--rbc-normalize"].exit_code == 2
    assert "domain section" in results["none", "--rbc-normalize"].output
    validated = {}
    for (name, norm), res in results.items():
        if (name, norm) == ("none", "--rbc-normalize"):
            continue
        assert res.exit_code == 0, res.output
        s = json.loads((tmp_path / f"run-{name}{norm}" / "summary.json").read_text())["red_cells"]
        validated[name, norm] = s["morphology_validated"]
    assert validated == {("none", "--no-rbc-normalize"): None, ("same", "--no-rbc-normalize"): True,
                         ("same", "--rbc-normalize"): True, ("other", "--no-rbc-normalize"): False,
                         ("other", "--rbc-normalize"): False}
    assert "not validated for this microscope" in results["other", "--no-rbc-normalize"].output


def test_the_device_cuts_red_cells_as_wide_as_the_bundle_s_training_crops(tmp_path):
    """A bundle whose training crops were 2 ruler diameters wide (manifest `red_cells`) gets
    2-diameter crops on the device; an older bundle the default 1.5; a bad value is refused."""
    from hemaedge.edge.bundle import load_bundle, write_bundle
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.errors import BundleError
    from hemaedge.edge.preprocess import InputContract
    from hemaedge.edge.rbc_morphology import RedCellClassifier

    onnx = make_onnx(tmp_path / "rbc.onnx", 32)
    img = read_image_rgb(REPO / "samples" / "bccd" / "BloodImage_00007.jpg")

    def bundle(name, section):
        return load_bundle(write_bundle(tmp_path / name, {onnx.name: onnx}, model_file=onnx.name, backend="onnx",
                                        model_format="onnx", classes=["normal", "schistocyte", "spherocyte"],
                                        contract=InputContract(size=32),
                                        output={"kind": "probabilities", "dtype": "float32"},
                                        extra={"red_cells": section} if section is not None else None))

    for name, section, factor in (("old", None, 1.5), ("wide", {"crop_side_factor": 2.0}, 2.0)):
        b = bundle(name, section)
        clf = RedCellClassifier(b, load_backend(b, threads=1))
        res = clf.process(img, 100.0)
        assert clf.side_factor == factor and res.crop_side == round(factor * 100) and len(res.labels) >= 8
    for bad in (0.1, "wide", float("nan")):
        b = bundle(f"bad-{bad}", {"crop_side_factor": bad})
        with pytest.raises(BundleError, match="crop_side_factor"):
            RedCellClassifier(b, load_backend(b, threads=1))


def test_the_ruler_still_reads_what_the_packaged_red_cell_bundle_was_cut_for(chula):
    """The packaged red-cell bundle's crops are `crop_side_factor` ruler diameters wide, with the
    ruler reading `ruler_diameter_px` on Chula. A change of the ruler (edge/ruler.py) moves every
    device crop away from the training crops, as it once did silently (53 px crops for a model
    trained on 64 px ones): if this fails, re-cut the crops and re-export the red-cell bundle."""
    from hemaedge.edge.rbc_morphology import rbc_bundle_path
    from hemaedge.train.rbc_crops import dataset_diameter, read_chula

    geometry = json.loads((rbc_bundle_path("packaged") / "manifest.json").read_text())["red_cells"]
    assert dataset_diameter(read_chula(chula)) == pytest.approx(geometry["ruler_diameter_px"], rel=0.02)


def test_red_cell_ood_limit_refit_on_detected_cells_keeps_the_bundle_verified(chula, tmp_path):
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.domain import DomainMonitor
    from hemaedge.edge.errors import BundleError, DataError
    from hemaedge.export.rbc_ood import detected_cell_scores, refit_red_cell_ood
    from hemaedge.edge.backends import load_backend

    bundle = tmp_path / "rbc"
    shutil.copytree(REPO / "src" / "hemaedge" / "models" / "rbc", bundle)
    frames = [read_image_rgb(p) for p in sorted((chula / "images").glob("*.jpg"))[:3]]
    with pytest.raises(DataError, match="whole red cells"):
        refit_red_cell_ood(bundle, frames[:0], "nothing")
    out = refit_red_cell_ood(bundle, frames, "three Chula frames")
    b = load_bundle(bundle)  # still verifies: only the manifest's domain.ood changed
    ood = b.manifest["domain"]["ood"]
    assert ood == out["after"] and ood["fitted_on"] == "three Chula frames" and ood["cells"] > 100
    assert ood["limit"] > ood["val_mean"] and ood["replaces"]["limit"] == out["before"]["limit"]
    # the same cells, judged by the device's own check against the refitted limit, are in domain
    monitor = DomainMonitor(b.manifest["domain"])
    scores = detected_cell_scores(b, load_backend(b), frames)
    monitor.scores = list(scores)
    assert not any("unsure" in r for r in monitor.report()["reasons"])
    signed = json.loads((bundle / "manifest.json").read_text())
    signed["signature"] = {"algorithm": "ed25519", "key_id": "x", "value": "y"}
    (bundle / "manifest.json").write_text(json.dumps(signed))
    with pytest.raises(BundleError, match="signed"):
        refit_red_cell_ood(bundle, frames, "again")


def _chula_frame(chula, name):
    from hemaedge.train.rbc_crops import read_chula

    return next(f for f in read_chula(chula) if f.name == name)


def _right_of(chula, frames, cls, scale):
    """Labelled `cls` cells of these (val) frames that the packaged bundle calls `cls` end to end."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.rbc_morphology import RedCellClassifier, rbc_bundle_path
    from hemaedge.edge.ruler import Ruler
    from hemaedge.edge.segment import centre_in
    from hemaedge.train.rbc_crops import CHULA_TYPES

    model = load_model(rbc_bundle_path("packaged"))
    clf = RedCellClassifier(model, load_backend(model, threads=1), scale=scale)
    right = total = 0
    for name in frames:
        f = _chula_frame(chula, name)
        img = read_image_rgb(f.image)
        res = clf.process(img, Ruler(same_slide=False).read(img).diameter)
        for x, y, t in f.points:
            if CHULA_TYPES[t] != cls:
                continue
            total += 1
            holding = [k for k, c in enumerate(res.cells) if centre_in(c.box, (x, y))]
            right += bool(holding) and res.labels[min(holding, key=lambda k: (res.cells[k].centre[0] - x) ** 2
                                                      + (res.cells[k].centre[1] - y) ** 2)] == cls
    return right, total, res


def test_red_cells_are_sized_at_the_training_magnification_so_macrocytes_stay_large(chula):
    """Chula val frames of macrocytic / microcytic slides: the field's ruler reads the field's own
    large (small) cells, so crops that follow it shrink macrocytes to normal size. At the
    bundle's training scale (auto on Chula's magnification) they keep the size they were trained
    with. Before --rbc-scale the device cut every field at its own ruler (the 'field' rows)."""
    frames = ["281", "282", "421"]  # val frames (frame-level split): 41 labelled macrocytes
    macro_auto, n, res = _right_of(chula, frames, "macrocyte", "auto")
    macro_field, _, res_field = _right_of(chula, frames, "macrocyte", "field")
    assert n >= 30 and res.scale == "bundle" and res_field.scale == "field"
    assert res.crop_side == 64 != res_field.crop_side  # the training crops' side (rbc_crops.json)
    assert macro_auto >= macro_field + 10, (macro_auto, macro_field, n)
    micro_auto, n_micro, _ = _right_of(chula, ["162", "168"], "microcyte", "auto")
    micro_field, _, _ = _right_of(chula, ["162", "168"], "microcyte", "field")
    assert micro_auto >= micro_field + 3, (micro_auto, micro_field, n_micro)


def test_rbc_scale_choice_and_a_bad_reference_diameter(tmp_path):
    from hemaedge.edge.bundle import load_bundle, write_bundle
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.errors import BundleError, UsageError
    from hemaedge.edge.preprocess import InputContract
    from hemaedge.edge.rbc_morphology import RedCellClassifier

    onnx = make_onnx(tmp_path / "rbc.onnx", 32)
    img = read_image_rgb(REPO / "samples" / "bccd" / "BloodImage_00007.jpg")

    def clf(name, section, scale="auto"):
        b = load_bundle(write_bundle(tmp_path / name, {onnx.name: onnx}, model_file=onnx.name, backend="onnx",
                                     model_format="onnx", classes=["normal", "schistocyte", "spherocyte"],
                                     contract=InputContract(size=32),
                                     output={"kind": "probabilities", "dtype": "float32"},
                                     extra={"red_cells": section} if section is not None else None))
        return RedCellClassifier(b, load_backend(b, threads=1), scale=scale)

    # a bundle trained at BCCD's magnification (~100 px cells): auto sizes BCCD frames at its reference
    near = clf("near", {"crop_side_factor": 1.5, "ruler_diameter_px": 90.0}).process(img, 100.0)
    assert near.scale == "bundle" and near.crop_side == 135
    far = clf("far", {"crop_side_factor": 1.5, "ruler_diameter_px": 35.0}).process(img, 100.0)
    assert far.scale == "field" and far.crop_side == 150
    forced = clf("forced", {"crop_side_factor": 1.5, "ruler_diameter_px": 35.0}, "bundle").process(img, 100.0)
    assert forced.scale == "bundle" and forced.crop_side == 52
    assert clf("old", None).process(img, 100.0).scale == "field"  # no reference recorded: the field's ruler
    with pytest.raises(UsageError, match="ruler_diameter_px"):
        clf("old2", None, "bundle")
    with pytest.raises(UsageError, match="scale"):
        clf("typo", None, "absolute")
    for bad in (0.0, "big", float("nan")):
        with pytest.raises(BundleError, match="ruler_diameter_px"):
            clf(f"bad-{bad}", {"ruler_diameter_px": bad})


def test_tally_reports_fields_sized_at_their_own_ruler():
    from hemaedge.edge.rbc import RedCell
    from hemaedge.edge.rbc_morphology import format_red_cells

    tally = RedCellTally(["normal", "schistocyte"])
    cell = RedCell((0, 0, 10, 10), (5.0, 5.0), 10.0, 78)
    for scale in ("bundle", "field", "bundle"):
        tally.add(RedCellResult([cell], ["normal"], np.ones(1), 10.0, scale=scale))
    s = tally.summary()
    assert s["size_scale_fields"] == {"bundle": 2, "field": 1}
    assert "1 fields at their own ruler" in format_red_cells(s)


def test_size_feature_layer_learns_what_the_model_cannot_see_and_counts_missed_cells_wrong():
    """rbc_size_features: when only the cell's absolute size separates two classes, the layer with
    that feature beats the model alone; a point without a detection is wrong in every arm."""
    from hemaedge.benchmarks.tools.rbc_size_features import ALL, evaluate

    rng = np.random.default_rng(0)

    def split(n, frames):
        y = rng.integers(0, 2, n)
        size = np.where(y == 1, 0.3, -0.3) + rng.normal(0, 0.1, n)
        logp = np.log(np.full((n, 2), 0.5) + rng.normal(0, 0.01, (n, 2)).clip(-0.4, 0.4))  # the model: a coin
        found = np.ones(n, bool)
        found[:10] = False
        feats = rng.normal(0, 0.1, (n, len(ALL)))
        feats[:, ALL.index("absolute_area")] = size
        return {"y": y, "found": found, "x": np.hstack([logp, feats]), "frame": np.arange(n) % frames}

    rows = {r["arm"]: r for r in evaluate(split(600, 30), split(300, 10), ["normal", "macrocyte"])}
    alone, sized = rows["model alone (argmax)"]["fit_train"], rows["layer: + absolute area"]["fit_train"]
    assert alone["accuracy"] < 0.6 and sized["accuracy"] > 0.9
    assert sized["accuracy"] <= 290 / 300  # the 10 missed cells stay wrong


def _val_frame(chula):
    from hemaedge.train.rbc_crops import read_chula, split_frames

    frames = read_chula(chula)
    splits = split_frames([f.name for f in frames])
    return next(f for f in frames if splits[f.name] == "val")


def test_size_features_measure_each_red_cell_against_its_field_s_median(chula):
    from hemaedge.edge.rbc_layer import FEATURES, size_features

    img = read_image_rgb(_val_frame(chula).image)
    cells, d = detect_red_cells(img)
    f = size_features(cells, 35.09, list(FEATURES), img)
    assert f.shape == (len(cells), len(FEATURES)) and np.isfinite(f).all()
    whole = np.array([not c.edge for c in cells])
    rel = f[:, 0]
    assert abs(np.median(rel[whole])) < 1e-3  # the field's median whole cell is the ruler
    big, small = int(np.argmax(np.where(whole, rel, -9))), int(np.argmin(np.where(whole, rel, 9)))
    assert cells[big].area > cells[small].area and rel[big] > 0 > rel[small]
    # the ruler is the field: the same frame at half the magnification gives the same relative sizes
    half = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    cells2, _ = detect_red_cells(half)
    rel2 = size_features(cells2, 35.09, ["relative_area"])[:, 0]
    assert abs(np.percentile(rel2, 90) - np.percentile(rel, 90)) < 0.15
    assert size_features([], 35.09, ["relative_area"]).shape == (0, 1)
    # a cell cut by the frame border has no size evidence: it reads as the field's median cell
    assert any(c.edge for c in cells)
    assert (f[~whole] == 0).all()


def test_packaged_red_cell_bundle_applies_its_size_layer_on_real_frames(chula):
    """The packaged bundle carries a layer; the device applies it (probabilities change, rows sum to 1);
    a layer that passes the model's log-probabilities through gives back the model's own answer."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.rbc_layer import SizeLayer
    from hemaedge.edge.rbc_morphology import RedCellClassifier, rbc_bundle_path

    model = load_model(rbc_bundle_path("packaged"))
    assert model.manifest["red_cells"]["layer"]["features"] == ["relative_area", "relative_length"]
    backend = load_backend(model, threads=1)
    img = read_image_rgb(_val_frame(chula).image)
    with_layer = RedCellClassifier(model, backend).process(img)
    alone = RedCellClassifier(model, backend, layer=False).process(img)
    assert len(with_layer.cells) == len(alone.cells) > 20
    assert np.allclose(with_layer.probabilities.sum(1), 1, atol=1e-5)
    assert with_layer.timings_ms["rbc_layer"] > 0 and alone.timings_ms["rbc_layer"] == 0
    assert not np.allclose(with_layer.probabilities, alone.probabilities, atol=1e-3)
    # another magnification (a BCCD frame, sized at its own ruler): the layer was not fitted there
    bccd = read_image_rgb(next(iter(sorted((REPO / "samples" / "bccd").glob("*.jpg")))))
    far = RedCellClassifier(model, backend).process(bccd)
    assert far.scale == "field" and far.timings_ms["rbc_layer"] == 0
    assert np.allclose(far.probabilities, RedCellClassifier(model, backend, layer=False).process(bccd).probabilities)
    k, names = len(model.classes), ["relative_area", "relative_length"]
    identity = SizeLayer({"features": names, "classes": list(model.classes), "intercept": [0.0] * k,
                          "coef": np.hstack([np.eye(k), np.zeros((k, 2))]).tolist()}, list(model.classes))
    p = identity.apply(alone.probabilities, alone.cells, 35.09, img)
    assert (p.argmax(1) == alone.probabilities.argmax(1)).all()


@pytest.mark.parametrize("bad", [{"features": ["colour_of_the_sky"]}, {"coef": [[1.0]]}, {"classes": ["a"]},
                                 {"intercept": [float("nan")] * 12}, {"coef": None}])
def test_a_malformed_size_layer_is_refused_with_a_bundle_error(bad):
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.errors import BundleError
    from hemaedge.edge.rbc_layer import SizeLayer
    from hemaedge.edge.rbc_morphology import rbc_bundle_path

    model = load_model(rbc_bundle_path("packaged"))
    section = {**model.manifest["red_cells"]["layer"], **bad}
    with pytest.raises(BundleError, match="rbc-layer"):
        SizeLayer(section, list(model.classes))


def test_fitted_layer_numbers_reproduce_the_scikit_learn_model():
    """The manifest's plain numbers (scaler folded in) give scikit-learn's own probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from hemaedge.edge.rbc_layer import SizeLayer
    from hemaedge.export.rbc_layer import fit_layer

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    x = rng.normal(0, 1, (400, 4)) * [1, 2, 3, 0.1] + y[:, None] * [0.5, 0, -1, 0.05] + [0, 0, 5, 1]
    section = fit_layer(x, y, ["a", "b", "c"], ["relative_area"])
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(x, y).predict_proba(x)
    assert np.allclose(SizeLayer(section, ["a", "b", "c"]).from_inputs(x), ref, atol=1e-4)
    from hemaedge.edge.errors import DataError
    with pytest.raises(DataError, match="no c"):
        fit_layer(x[y < 2], y[y < 2], ["a", "b", "c"], ["relative_area"])


def test_export_rbc_layer_writes_a_layer_that_verifies_and_refuses_signed_bundles(chula, tmp_path):
    from hemaedge.edge.bundle import load_bundle

    bundle = tmp_path / "rbc"
    shutil.copytree(REPO / "src" / "hemaedge" / "models" / "rbc", bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    del m["red_cells"]["layer"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    r = CliRunner().invoke(main, ["export", "rbc-layer", str(bundle), "--chula", str(chula), "--split", "val",
                                  "--feature", "relative_area"])
    assert r.exit_code == 0, r.output
    layer = load_bundle(bundle).manifest["red_cells"]["layer"]  # still verifies: only the manifest changed
    assert layer["features"] == ["relative_area"] and layer["points"] > 1000 and "val" in layer["fitted_on"]
    r = CliRunner().invoke(main, ["export", "rbc-layer", str(bundle), "--chula", str(chula), "--feature", "shoe"])
    assert r.exit_code == 2 and "Error:" in r.output and "shoe" in r.output
    m = json.loads((bundle / "manifest.json").read_text())
    m["signature"] = {"algorithm": "ed25519", "key_id": "x", "value": "y"}
    (bundle / "manifest.json").write_text(json.dumps(m))
    r = CliRunner().invoke(main, ["export", "rbc-layer", str(bundle), "--chula", str(chula), "--split", "val"])
    assert r.exit_code == 2 and "signed" in r.output
