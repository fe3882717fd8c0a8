"""Counting rules (issue 12) on real frames and the packaged default model: kinds and classes
agree, unidentified cells, the per-field ruler and its bounds, blank frames, the lab
differential and its exact intervals, and one count per cell on a generated pan."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hemaedge.cli import main
from hemaedge.edge.differential import Differential, clopper_pearson
from hemaedge.edge.identify import UNIDENTIFIED, decide
from hemaedge.edge.preprocess import read_image_rgb
from hemaedge.edge.ruler import MIN_DIAMETER_PX, Ruler, plausible_diameter, red_cell_diameter
from hemaedge.edge.tracking import StageMotion

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
BLOOD = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte", "neutrophil",
         "platelet"]


@pytest.fixture(scope="module")
def default_classifier():
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.pipeline import CellClassifier

    model = load_model(REPO / "src" / "hemaedge" / "models" / "default", None, None, None, "probabilities")
    return CellClassifier(model, load_backend(model, threads=1))


# ----------------------------------------------------------------------------- kinds and classes


def test_a_platelet_candidate_never_becomes_a_white_cell():
    lymph = np.array([0, 0, 0, 0, 1.0, 0, 0, 0])  # the classifier is sure it is a lymphocyte
    d = decide("platelet", lymph, BLOOD)
    assert d.label == "platelet" and not d.counted and d.flag  # kept as a candidate, flagged, not counted
    sure = np.array([0, 0, 0, 0, 0.05, 0, 0, 0.95])
    assert decide("platelet", sure, BLOOD) == decide("platelet", sure, BLOOD)
    assert decide("platelet", sure, BLOOD).counted and decide("platelet", sure, BLOOD).flag == ""


def test_a_platelet_is_counted_only_when_the_classifier_is_sure_enough():
    """`identify.PLATELET_CONFIRM_ABOVE` (0.6, chosen by identify_levels' rule): a candidate whose top
    class is platelet at 0.55 stays an unconfirmed candidate (flagged, not counted); the level is
    its own, not the unidentified one."""
    from hemaedge.edge.identify import PLATELET_CONFIRM_ABOVE

    assert PLATELET_CONFIRM_ABOVE == 0.6
    weak = np.array([0, 0, 0.1, 0, 0.2, 0.15, 0, 0.55])  # top class platelet, below the level
    d = decide("platelet", weak, BLOOD)
    assert d.label == "platelet" and not d.counted and "not confirmed" in d.flag
    assert decide("platelet", weak, BLOOD, threshold=0.3) == d  # --unidentified-below does not move it
    assert decide("platelet", weak, BLOOD, platelet_confirm=0.5).counted
    assert decide("platelet", np.array([0, 0, 0, 0, 0.2, 0.15, 0, 0.65]), BLOOD).counted
    # the top class must be platelet, whatever the level
    assert not decide("platelet", np.array([0, 0, 0, 0, 0.5, 0, 0, 0.45]), BLOOD, platelet_confirm=0.4).counted


def test_a_platelet_lying_on_a_red_cell_is_flagged_not_counted():
    from hemaedge.edge.identify import ON_RED_CELL

    sure = np.array([0, 0, 0, 0, 0.05, 0, 0, 0.95])
    d = decide("platelet", sure, BLOOD, on_red_cell=True)
    assert d.label == "platelet" and not d.counted and d.flag == ON_RED_CELL and d.confidence == 0.95
    assert decide("platelet", sure, BLOOD, on_red_cell=False).counted
    # an unconfirmed one keeps the unconfirmed flag; a white cell ignores the mark
    lymph = np.array([0, 0, 0, 0, 1.0, 0, 0, 0])
    assert decide("platelet", lymph, BLOOD, on_red_cell=True).flag == decide("platelet", lymph, BLOOD).flag
    assert decide("wbc", lymph, BLOOD, on_red_cell=True) == decide("wbc", lymph, BLOOD)


def test_nucleated_cell_called_platelet_or_unsure_is_unidentified():
    as_platelet = np.array([0, 0, 0, 0, 0.1, 0, 0, 0.9])
    assert decide("wbc", as_platelet, BLOOD).label == UNIDENTIFIED
    unsure = np.array([0.2, 0.1, 0, 0, 0.35, 0.35, 0, 0])
    d = decide("wbc", unsure, BLOOD)
    assert d.label == UNIDENTIFIED and "low confidence" in d.flag and d.counted
    sure = np.array([0, 0, 0, 0, 0.97, 0.03, 0, 0])
    assert decide("wbc", sure, BLOOD).label == "lymphocyte"
    # an OOD score above its threshold makes a confident cell unidentified too
    from hemaedge.edge.identify import is_unidentified
    assert is_unidentified(sure, ood_score=5.0, ood_threshold=2.0) and not is_unidentified(sure, ood_score=1.0,
                                                                                               ood_threshold=2.0)


def test_platelet_next_to_a_lymphocyte_stays_a_platelet(default_classifier):
    """samples/pbc/val_00000.jpg: its platelet's crop holds the lymphocyte (classified lymphocyte at
    1.0 before); masked and bound by its kind, it can only be a platelet."""
    res = default_classifier.process(read_image_rgb(SAMPLES / "pbc" / "val_00000.jpg"))
    kinds = [(d.kind, lab) for d, lab in zip(res.detections, res.labels)]
    assert ("wbc", "lymphocyte") in kinds
    assert all(lab == "platelet" for kind, lab in kinds if kind == "platelet") and any(k == "platelet" for k, _ in kinds)


def test_a_small_lymphocyte_is_not_taken_for_a_platelet_clump(bccd, default_classifier):
    """BCCD white cells (1.5-1.7 red-cell diameters, size-ambiguous) that a default bundle called
    platelet at 0.56-0.98 (default-v2) or 0.993 (BloodImage_00072, default-v6): with the former 0.5
    and 0.99 clump levels they left the white-cell count as platelet clumps; at
    `identify.PLATELET_KIND_ABOVE` they stay nucleated (flagged)."""
    from hemaedge.benchmarks.tools.segmentation_bccd import read_voc
    from hemaedge.edge.identify import PLATELET_KIND_ABOVE
    from hemaedge.edge.segment import iou

    plt = default_classifier.classes.index("platelet")
    scores = {}
    for fid in ("BloodImage_00044", "BloodImage_00086", "BloodImage_00156", "BloodImage_00072"):
        res = default_classifier.process(read_image_rgb(bccd / "JPEGImages" / f"{fid}.jpg"))
        boxes = read_voc(bccd / "Annotations" / f"{fid}.xml")["WBC"]
        k, box = max(((i, b) for i in range(len(res.detections)) for b in boxes),
                     key=lambda ib: iou(res.detections[ib[0]].box, ib[1]))
        det = res.detections[k]
        assert iou(det.box, box) >= 0.5 and det.size_ambiguous, fid
        scores[fid] = float(res.probabilities[k][plt])
        assert scores[fid] < PLATELET_KIND_ABOVE, fid
        assert det.kind == "wbc" and res.labels[k] != "platelet", fid
    assert scores["BloodImage_00072"] >= 0.99  # a clump at the former level: the case that moved it
    assert sum(s >= 0.5 for s in scores.values()) >= 2  # clumps at the first level


def test_a_pbc_platelet_clump_is_still_a_platelet(pbc_raw_val, default_classifier):
    """PBC platelet fields: their size-ambiguous clump is still counted as a platelet, not a white cell."""
    from hemaedge.edge.segment import centre_in

    for name in ("val_00002.jpg", "val_00019.jpg", "val_00035.jpg"):
        img = read_image_rgb(pbc_raw_val / name)
        res = default_classifier.process(img)
        central = [d for d in res.detections if centre_in(d.box, (img.shape[1] / 2, img.shape[0] / 2))]
        assert central and all(d.kind == "platelet" for d in central), name
        assert not any(d.kind == "wbc" and not d.at_edge for d in res.detections), name


def test_a_rescued_faint_platelet_is_confirmed_like_any_candidate(bccd, default_classifier):
    """BCCD train VOC platelets only the faint rescue finds (`SegmentParams.faint_rescue`): the
    default model confirms them in their platelet-sized crop and they are counted; a rescued
    candidate counts only as platelet, and only when the classifier calls it one."""
    from hemaedge.edge.segment import iou

    plt = default_classifier.classes.index("platelet")
    for fid, box in (("BloodImage_00273", (496, 402, 530, 438)), ("BloodImage_00179", (72, 14, 106, 48)),
                     ("BloodImage_00198", (262, 396, 298, 430))):
        res = default_classifier.process(read_image_rgb(bccd / "JPEGImages" / f"{fid}.jpg"))
        faint = [(d, dec, p) for d, dec, p in zip(res.detections, res.decisions, res.probabilities) if d.faint]
        assert faint, fid
        for d, dec, p in faint:
            assert d.kind == "platelet" and dec.label == "platelet", fid
            sure = int(np.argmax(p)) == plt and p[plt] >= default_classifier.platelet_confirm_above
            assert dec.counted == (sure and not d.on_red_cell), fid
        assert any(iou(d.box, box) >= 0.5 and dec.counted for d, dec, _ in faint), fid


def test_a_bccd_platelet_is_confirmed_in_its_platelet_sized_crop(bccd, default_classifier):
    """A BCCD val frame whose labelled platelet the classifier did not confirm in the white cells'
    3-diameter crop (a dot it called erythroblast); in the crop sized for a platelet it does.
    (BloodImage_00089's, the second example with default-v2, default-v6 confirms in neither.)"""
    from hemaedge.benchmarks.tools.segmentation_bccd import match, read_voc
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.segment import SegmentParams

    wide = CellClassifier(default_classifier.model, default_classifier.backend, SegmentParams(platelet_crop_scale=1.0))
    for fid in ("BloodImage_00017",):
        img = read_image_rgb(bccd / "JPEGImages" / f"{fid}.jpg")
        gt = read_voc(bccd / "Annotations" / f"{fid}.xml")["Platelets"]
        counted = lambda res: [d.box for d, x in zip(res.detections, res.decisions) if d.kind == "platelet" and x.counted]  # noqa: E731
        assert match(counted(default_classifier.process(img)), gt, "iou") == len(gt) == 1, fid
        assert match(counted(wide.process(img)), gt, "iou") == 0, fid


# ----------------------------------------------------------------------------- ruler


def test_ruler_is_per_field_and_resets_on_a_new_frame_size(bccd, pbc_raw_val):
    pbc = read_image_rgb(pbc_raw_val / "val_00000.jpg")
    bc = read_image_rgb(bccd / "JPEGImages" / "BloodImage_00007.jpg")
    fields = Ruler(same_slide=False)
    a, b = fields.read(pbc).diameter, fields.read(bc).diameter
    assert 50 <= a <= 90 and 75 <= b <= 125  # each field its own magnification
    slide = Ruler(same_slide=True)
    for _ in range(3):
        slide.read(pbc)
    assert slide.read(bc).diameter == pytest.approx(b) and slide.resets == 1  # new size: starts over


def test_ruler_bounds_and_unmeasurable_frames():
    assert not plausible_diameter(MIN_DIAMETER_PX - 1, (480, 640)) and plausible_diameter(80, (480, 640))
    assert not plausible_diameter(200, (480, 640)) and not plausible_diameter(float("inf"), (480, 640))
    for img in (np.zeros((480, 640, 3), np.uint8), np.full((480, 640, 3), 255, np.uint8),
                np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)):
        d = red_cell_diameter(img)
        assert d is None or plausible_diameter(d, img.shape)
    # a small field: the estimate, if any, is within what a microscope can show on it
    small = cv2.resize(read_image_rgb(SAMPLES / "pbc" / "val_00003.jpg"), (120, 120), interpolation=cv2.INTER_AREA)
    d = red_cell_diameter(small)
    assert d is None or MIN_DIAMETER_PX <= d <= 40


@pytest.mark.parametrize("value", [0, 255])
def test_black_or_white_frame_is_no_cells_with_the_reason(tmp_path, value):
    frame = tmp_path / "f.png"
    cv2.imwrite(str(frame), np.full((480, 640, 3), value, np.uint8))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["edge", "run", "-q", "--source", str(frame), "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader(open(out / "frames.csv")))
    assert row["cells"] == "0" and row["status"].startswith("no cells: frame is " + ("dark" if value == 0 else "featureless"))
    s = json.loads((out / "summary.json").read_text())
    assert s["differential"]["fields_not_classified"] and s["segmentation"]["ruler"]["measured"] is False



def test_a_thumbnail_is_no_cells_with_the_reason_not_a_white_cell(tmp_path):
    """A 24x18 thumbnail of a BCCD frame was 'one white cell' (no ruler can read it, the crop fell
    back to the blob's own box and the model classified it): too small to show a measurable
    cell, it is recorded as no cells with the reason."""
    frame = tmp_path / "thumb.png"
    cv2.imwrite(str(frame), cv2.resize(cv2.imread(str(SAMPLES / "bccd" / "BloodImage_00007.jpg")), (24, 18),
                                       interpolation=cv2.INTER_AREA))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["edge", "run", "-q", "--source", str(frame), "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader(open(out / "frames.csv")))
    assert row["cells"] == "0" and row["status"].startswith("no cells: frame is too small (24x18 px")

# ----------------------------------------------------------------------------- differential


def test_clopper_pearson_matches_rumke_table():
    # Rümke's table (95%, 100 cells): 10% -> 5-18, 50% -> 40-60, 0% -> 0-4; (200 cells) 10% -> 6-15
    for k, n, lo, hi in [(10, 100, 5, 18), (50, 100, 40, 60), (0, 100, 0, 4), (20, 200, 6, 15), (2, 100, 0, 7)]:
        a, b = clopper_pearson(k, n)
        assert round(100 * a) == lo and round(100 * b) == hi, (k, n, a, b)
    assert clopper_pearson(10, 100) == pytest.approx((0.04900, 0.17622), abs=2e-5)  # published exact values
    try:
        from scipy.stats import beta
    except ImportError:
        return
    for k, n in [(1, 100), (37, 100), (99, 100), (63, 200), (3, 7)]:
        a, b = clopper_pearson(k, n)
        assert a == pytest.approx(beta.ppf(0.025, k, n - k + 1), abs=1e-9)
        assert b == pytest.approx(beta.ppf(0.975, k + 1, n - k), abs=1e-9)


def test_differential_denominators():
    d = Differential(BLOOD, target_wbc=10)
    for label, n in [("neutrophil", 6), ("lymphocyte", 3), ("monocyte", 1), ("erythroblast", 2), ("platelet", 8),
                     (UNIDENTIFIED, 1)]:
        for _ in range(n):
            d.add(label, flagged=label == UNIDENTIFIED)
    d.add("platelet", counted=False, flagged=True)
    for _ in range(4):
        d.add_field()
    s = d.summary()
    wbc = {r["class"]: r for r in s["wbc_differential"]}
    assert s["white_cells_classified"] == 10 and wbc["neutrophil"]["percent"] == 60.0  # of WBC, not of all cells
    assert list(wbc)[:6] == ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "immature_granulocyte"]
    assert wbc["neutrophil"]["ci95_percent"] == [round(100 * v, 1) for v in clopper_pearson(6, 10)]
    assert s["nrbc"] == {"count": 2, "per_100_wbc": 20.0}
    assert s["platelets"] == {"count": 8, "per_field": 2.0, "candidates_not_confirmed": 1}
    assert s["unidentified"] == 1 and s["flagged_for_review"] == 2
    assert s["target"]["reached"] and s["target"]["counted"] == 11


# ----------------------------------------------------------------------------- live feed


def test_stage_motion_follows_a_pan():
    img = cv2.resize(read_image_rgb(SAMPLES / "bccd" / "BloodImage_00007.jpg"), None, fx=2, fy=2)
    m = StageMotion()
    for x in (100, 130, 170, 170, 140):
        m.update(np.ascontiguousarray(img[100:580, x:x + 640]))
    assert m.offset[0] == pytest.approx(-40, abs=1.5) and abs(m.offset[1]) < 1.5
    # a cell's slide position is the same in every frame
    assert m.to_slide((300, 200))[0] == pytest.approx(340, abs=1.5)


@pytest.fixture(scope="module")
def pan_video(tmp_path_factory, bccd):
    from hemaedge.benchmarks.tools.live_feed import make_video, whole_cell_frames

    tmp = tmp_path_factory.mktemp("pan")
    ids = whole_cell_frames(bccd, "val")[:6]
    info = make_video(bccd, ids, tmp / "pan.avi", seed=0)
    return tmp / "pan.avi", info


def _nucleated(s):
    d = s["differential"]
    return d["white_cells_classified"] + d["unidentified"] + d["nrbc"]["count"]


def test_each_cell_of_a_pan_is_counted_once(pan_video, tmp_path):
    video, info = pan_video
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["edge", "run", "-q", "--source", str(video), "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["frames"] == info["frames"] > 100
    assert abs(_nucleated(s) - info["true_wbc"]) <= 1  # not once per frame (that would be ~20x)
    cells = list(csv.DictReader(open(out / "cells.csv")))
    assert all(c["track_id"] for c in cells)
    tracks = list(csv.DictReader(open(out / "tracks.csv")))
    assert {t["track_id"] for t in tracks} == {c["track_id"] for c in cells}
    assert max(int(t["views"]) for t in tracks) >= 5  # a paused cell: many views, one track
    assert s["differential"]["fields_not_classified"]  # blurred / defocused frames were not classified


def test_target_stops_a_camera_fed_by_a_video(pan_video, tmp_path, monkeypatch):
    from hemaedge.edge import sources

    video, _ = pan_video
    real = sources.CameraSource.__init__

    def from_video(self, spec, **kw):  # the camera device is the video file
        kw["open_capture"] = lambda _spec: cv2.VideoCapture(str(video))
        real(self, spec, **kw)

    monkeypatch.setattr(sources.CameraSource, "__init__", from_video)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["edge", "run", "-q", "--source", "0", "--target-wbc", "1", "--out", str(out),
                                    "--camera-retries", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["end_reason"].startswith("target reached") and s["differential"]["target"]["reached"]
    assert s["frames"] < 100 and "one slide" in s["differential"]["counting"]


# ----------------------------------------------------------------------------- logs that identify the frame


def test_frame_names_are_relative_to_the_folder_and_grey_frames_warned(tmp_path, caplog):
    src = tmp_path / "slides"
    for sub in ("patient_a", "patient_b"):  # the same base name in two sub-folders
        (src / sub).mkdir(parents=True)
        (src / sub / "field.jpg").write_bytes((SAMPLES / "pbc" / "val_00000.jpg").read_bytes())
    grey = cv2.cvtColor(read_image_rgb(SAMPLES / "pbc" / "val_00003.jpg"), cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(src / "grey.png"), grey)
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        res = CliRunner().invoke(main, ["edge", "run", "-q", "--source", str(src), "--out", str(out)],
                                 catch_exceptions=False)
    assert res.exit_code == 0, res.output
    names = [r["name"] for r in csv.DictReader(open(out / "frames.csv"))]
    assert names == ["grey.png", "patient_a/field.jpg", "patient_b/field.jpg"]  # sub-folders are read too
    assert any("grayscale" in r.message for r in caplog.records)
    assert json.loads((out / "summary.json").read_text())["differential"]["grayscale_frames"] == 1


def test_a_field_whose_ruler_misreads_gets_the_stream_median_and_a_real_change_resets(pbc_raw_val):
    """pbc_raw_val/val_00754.jpg: red cells with open pale centres read ~30 px (the field's
    neighbours ~65 px); its white cell then measured 15 d^2 and its granules became extra
    nucleated cells. Against the recent fields of the same frame size the reading is an outlier
    and the stream's median is used. Three fields in a row at 1.6x the magnification (same
    frame size) are a real change: the ruler starts over with them."""
    fields = [read_image_rgb(pbc_raw_val / f"val_{i:05d}.jpg") for i in (0, 3, 4, 9, 10, 20)]
    ruler = Ruler(same_slide=False)
    normal = [ruler.read(f).diameter for f in fields]
    assert all(50 <= d <= 90 for d in normal)
    odd = read_image_rgb(pbc_raw_val / "val_00754.jpg")
    assert odd.shape == fields[0].shape
    assert red_cell_diameter(odd) < 40  # the misreading itself
    reading = ruler.read(odd)
    assert reading.source == "stream median" and 50 <= reading.diameter <= 90
    assert ruler.summary()["fields_off_the_stream_median"] == 1
    h, w = fields[0].shape[:2]
    zoomed = [cv2.resize(read_image_rgb(pbc_raw_val / f"val_{i:05d}.jpg")[:int(h / 1.6), :int(w / 1.6)], (w, h),
                         interpolation=cv2.INTER_CUBIC) for i in (0, 20, 60)]  # 1.6x the magnification
    readings = [ruler.read(z) for z in zoomed]
    assert [r.source for r in readings[:2]] == ["stream median"] * 2
    assert readings[2].source == "this field" and readings[2].diameter > 1.4 * np.median(normal)
    assert ruler.resets == 1


def test_an_image_folder_that_interleaves_frame_sizes_keeps_each_cameras_history(pbc_raw_val):
    """PBC fields come as 360x363, 360x360 and 366x369 px in one folder (97 size changes in
    pbc_raw_val): sizes within `SAME_CAMERA_FRACTION` are one camera, and a size seen before goes on
    with its own history instead of starting over; after `MIN_FIELDS_FOR_MEDIAN` fields that agree,
    a field gets its camera's median (steadier than one field's reading), and a misreading right
    after a size change is still caught."""
    from hemaedge.edge.ruler import MIN_FIELDS_FOR_MEDIAN

    fields = [read_image_rgb(pbc_raw_val / f"val_{i:05d}.jpg") for i in (0, 3, 4, 9, 10, 20, 30)]
    other_camera = cv2.resize(fields[0], (640, 480), interpolation=cv2.INTER_CUBIC)  # a different frame size
    ruler = Ruler(same_slide=False)
    readings = [ruler.read(f) for f in fields]
    assert [r.source for r in readings[:MIN_FIELDS_FOR_MEDIAN]] == ["this field"] * MIN_FIELDS_FOR_MEDIAN
    assert readings[-1].source == "stream median"
    assert readings[-1].diameter == pytest.approx(np.median([red_cell_diameter(f) for f in fields]))
    ruler.read(other_camera)
    assert ruler.resets == 1 and ruler.summary()["frame_sizes"] == 2
    near = cv2.resize(fields[1], (366, 369), interpolation=cv2.INTER_AREA)  # 2 % larger: the same camera
    assert ruler.read(near).source == "stream median" and ruler.resets == 1
    odd = read_image_rgb(pbc_raw_val / "val_00754.jpg")  # reads ~30 px among ~65 px fields
    back = ruler.read(odd)  # back on the first camera: its history is there to catch it
    assert back.source == "stream median" and 50 <= back.diameter <= 90
    assert ruler.resets == 1 and ruler.summary()["fields_off_the_stream_median"] == 1


def _sample_cells():
    from hemaedge.edge.ruler import red_cell_diameter
    from hemaedge.edge.segment import segment

    img = read_image_rgb(SAMPLES / "bccd" / "BloodImage_00007.jpg")
    return [d for d in segment(img, rbc_diameter=red_cell_diameter(img)) if d.kind == "wbc"]


def test_a_cell_seen_again_after_the_stage_drifted_keeps_its_track():
    """pan_04 of the live-feed table: a white cell came back into view 105 frames later, 50 px
    (half its size) off its slide position from the summed moves, and was counted twice."""
    from hemaedge.edge.tracking import Tracker

    cells = _sample_cells()
    assert cells
    tr = Tracker()
    first = tr.update(0, cells, [c.centre for c in cells], None)
    nearby = tr.update(1, cells, [(c.centre[0] + 0.3 * c.size, c.centre[1]) for c in cells], None)
    assert nearby == first
    later = tr.update(100, cells, [(c.centre[0] + 0.8 * c.size, c.centre[1]) for c in cells], None)
    assert later == first and len(tr.all_tracks()) == len(cells)
    soon = Tracker()
    soon.update(0, cells, [c.centre for c in cells], None)
    # the wide gate is for tracks not seen for a while only: the next frame keeps the narrow one
    assert soon.update(1, cells, [(c.centre[0] + 0.8 * c.size, c.centre[1]) for c in cells], None) != first


def test_a_size_ambiguous_cell_keeps_one_track_when_one_view_calls_it_a_clump(default_classifier):
    """A detection whose size leaves its kind open was switched to "platelet" in the views where
    the classifier said platelet clump: its views then made two tracks (one nucleated, one
    platelet). The kind is now the segmenter's in every view and the track decides once."""
    from dataclasses import replace

    from hemaedge.edge.counting import CountingSession

    cell = replace(_sample_cells()[0], size_ambiguous=True)
    session = CountingSession(default_classifier, one_slide=True)
    classes = default_classifier.classes
    white = np.eye(len(classes), dtype=np.float32)[classes.index("neutrophil")]
    clump_p = np.eye(len(classes), dtype=np.float32)[classes.index("platelet")]
    views = [replace(cell, kind="platelet" if k % 2 else "wbc") for k in range(6)]
    ids = [session.tracker.update(k, [v], [v.centre], (clump_p if v.kind == "platelet" else white)[None])[0]
           for k, v in enumerate(views)]
    assert len(set(ids)) == 1
    (track,) = session.tracker.all_tracks()
    assert track.kind == "wbc" and track.views == 6 and track.ambiguous_views == 6 and track.clump_views == 3
    # three views were not a clump: it stays a white cell, counted once
    assert session._track_kind(track) == "wbc"
    assert session.differential().white_cells_counted == 1
    clump = CountingSession(default_classifier, one_slide=True)
    for k in range(4):
        v = replace(cell, kind="platelet")
        clump.tracker.update(k, [v], [v.centre], clump_p[None])
    assert clump._track_kind(clump.tracker.all_tracks()[0]) == "platelet"


def test_a_platelet_track_lying_on_a_red_cell_in_most_views_is_not_counted(default_classifier):
    """A platelet seen in 5 frames: lying on a red cell in 3 of them, it is flagged and not
    counted; on a red cell in 2 of 5 (a neighbour passing), it is counted."""
    from dataclasses import replace

    from hemaedge.edge.counting import CountingSession
    from hemaedge.edge.identify import ON_RED_CELL

    cell = _sample_cells()[0]
    classes = default_classifier.classes
    platelet_p = np.eye(len(classes), dtype=np.float32)[classes.index("platelet")][None]
    for on_red, counted in ((3, False), (2, True)):
        session = CountingSession(default_classifier, one_slide=True)
        for k in range(5):
            v = replace(cell, kind="platelet", size_ambiguous=False, on_red_cell=k < on_red)
            session.tracker.update(k, [v], [v.centre], platelet_p)
        (track,) = session.tracker.all_tracks()
        assert track.on_red_cell_views == on_red
        dec = session._track_decision(track)
        assert dec.counted == counted and (dec.flag == ON_RED_CELL) != counted
        assert session.differential().platelets == int(counted)


# ----------------------------------------------------------------------------- cells cut by the frame edge


def _cut_frame_results(default_classifier):
    """samples/pbc/val_00010.jpg (two platelets cut by the frame edge) with and without their
    classification."""
    from hemaedge.edge.pipeline import CellClassifier

    img = read_image_rgb(SAMPLES / "pbc" / "val_00010.jpg")
    every = default_classifier.process(img)
    skipping = CellClassifier(default_classifier.model, default_classifier.backend, classify_cut_cells=False)
    return every, skipping.process(img)


def test_cells_cut_by_the_frame_edge_are_not_classified_and_the_rest_unchanged(default_classifier):
    from hemaedge.edge.identify import NOT_CLASSIFIED

    every, some = _cut_frame_results(default_classifier)
    cut = [d.at_edge for d in some.detections]
    assert [d.box for d in every.detections] == [d.box for d in some.detections]
    assert sum(cut) == 2 and not all(cut)
    for i, is_cut in enumerate(cut):
        if is_cut:
            assert some.labels[i] == NOT_CLASSIFIED and np.isnan(some.probabilities[i]).all()
            assert not some.decisions[i].counted and "not classified" in some.decisions[i].flag
            assert every.labels[i] != NOT_CLASSIFIED and np.isfinite(every.probabilities[i]).all()
        else:  # a smaller batch: the same answer for every whole cell
            assert some.labels[i] == every.labels[i]
            np.testing.assert_allclose(some.probabilities[i], every.probabilities[i], atol=1e-5)
    assert len(some.probabilities) == len(some.detections)


def test_a_run_records_cut_cells_as_not_classified_and_they_can_be_reviewed(tmp_path):
    from starlette.testclient import TestClient

    from hemaedge.edge.identify import NOT_CLASSIFIED
    from hemaedge.review.app import create_app
    from hemaedge.review.rundata import RunReview

    src = tmp_path / "frames"
    src.mkdir()
    (src / "val_00010.jpg").write_bytes((SAMPLES / "pbc" / "val_00010.jpg").read_bytes())
    rows = {}
    for flag in ([], ["--count-edge-cells"]):
        out = tmp_path / f"run{len(flag)}"
        res = CliRunner().invoke(main, ["edge", "run", "-q", "--source", str(src), "--out", str(out),
                                        "--save-crops", "all", *flag], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        rows[bool(flag)] = list(csv.DictReader(open(out / "cells.csv")))
    cut = [r for r in rows[False] if r["at_edge"] == "1"]
    assert len(cut) == 2
    assert all(r["class"] == NOT_CLASSIFIED and r["confidence"] == "" and r["counted"] == "0" for r in cut)
    assert all(r["review"] == "0" and r["flag"] == "" for r in cut)  # nothing to review: never counted
    counted = [r for r in rows[True] if r["at_edge"] == "1"]
    assert all(r["class"] != NOT_CLASSIFIED and r["confidence"] != "" and r["counted"] in ("0", "1")
               for r in counted)
    page = TestClient(create_app(tmp_path / "run0"), base_url="http://127.0.0.1").get("/")  # empty confidences load
    assert page.status_code == 200 and NOT_CLASSIFIED in page.text and "nan" not in page.text
    # the cut cells come last, in their own group: nothing to decide, they do not hold up the flagged ones
    groups = RunReview.open(tmp_path / "run0").groups()
    assert groups[-1][0].startswith("Cut by the frame edge") and len(groups[-1][1]) == 2
    assert all(c.model_class != NOT_CLASSIFIED for _, cells in groups[:-1] for c in cells)
    res = CliRunner().invoke(main, ["report", str(tmp_path / "run0")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    html = re.sub(r'data:image/[^"]+', "", (tmp_path / "run0" / "report.html").read_text())  # crops left out
    assert "nan" not in html and NOT_CLASSIFIED not in html  # not among the cells to look at


def test_a_track_is_decided_from_its_classified_views_only(default_classifier, tmp_path):
    """On a live feed a cell's views cut by the frame edge are not classified: the track's class
    is the mean of its whole views, and a track cut in every view is written as not classified
    and not counted (tracks.csv), never a crash."""
    from dataclasses import replace

    from hemaedge.edge.counting import CountingSession
    from hemaedge.edge.identify import NOT_CLASSIFIED

    classes = default_classifier.classes
    neutrophil = np.eye(len(classes), dtype=np.float32)[classes.index("neutrophil")][None]
    unseen = np.full_like(neutrophil, np.nan)
    cell = replace(_sample_cells()[0], kind="wbc", size_ambiguous=False)
    session = CountingSession(default_classifier, one_slide=True)
    for k, cut in enumerate((True, False, False)):
        session.tracker.update(k, [replace(cell, at_edge=cut)], [cell.centre], unseen if cut else neutrophil)
    far = replace(cell, box=tuple(v + 300 for v in cell.box), at_edge=True)
    session.tracker.update(3, [far], [far.centre], unseen)
    seen, never = session.tracker.all_tracks()
    assert seen.views == 3 and seen.classified_views == 2
    np.testing.assert_allclose(seen.mean_prob, neutrophil[0])
    assert session._track_decision(seen).label == "neutrophil"
    assert never.prob_sum is None and session._track_decision(never).label == NOT_CLASSIFIED
    assert session.differential().white_cells_counted == 1
    session.write_tracks(tmp_path)
    rows = {r["track_id"]: r for r in csv.DictReader(open(tmp_path / "tracks.csv"))}
    assert rows[str(seen.id)]["class"] == "neutrophil" and rows[str(seen.id)]["counted"] == "1"
    assert rows[str(never.id)]["class"] == NOT_CLASSIFIED and rows[str(never.id)]["counted"] == "0"


def test_counting_edge_cells_needs_a_classifier_that_classifies_them(default_classifier):
    from hemaedge.edge.counting import CountingSession
    from hemaedge.edge.pipeline import CellClassifier

    skipping = CellClassifier(default_classifier.model, default_classifier.backend, classify_cut_cells=False)
    with pytest.raises(ValueError, match="classifies them"):
        CountingSession(skipping, one_slide=False, count_edge_cells=True)
    CountingSession(default_classifier, one_slide=False, count_edge_cells=True)
