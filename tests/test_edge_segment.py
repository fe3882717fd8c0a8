"""Segmentation on real frames: BCCD smears (VOC boxes) and PBC fields (labelled central cell)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from hemaedge.benchmarks.tools.segmentation_bccd import match, read_voc
from hemaedge.edge.preprocess import read_image_rgb
from hemaedge.edge.segment import (Detection, SegmentParams, centre_in, crop_square, extract_crop, iou,
                                   nearest_to, segment)

REPO = Path(__file__).resolve().parents[1]
# BCCD test-split frames (the defaults were tuned on the train split only)
BCCD_TEST = ["BloodImage_00007", "BloodImage_00011", "BloodImage_00015", "BloodImage_00016", "BloodImage_00025",
             "BloodImage_00031", "BloodImage_00044", "BloodImage_00050", "BloodImage_00058", "BloodImage_00062",
             "BloodImage_00076", "BloodImage_00080"]


def _bccd_frames(bccd, ids):
    for fid in ids:
        jpg = bccd / "JPEGImages" / f"{fid}.jpg"
        if jpg.exists():
            yield read_image_rgb(jpg), read_voc(bccd / "Annotations" / f"{fid}.xml")


def test_white_cells_found_on_bccd_frames(bccd):
    gt_n = found = pred_n = 0
    for img, gt in _bccd_frames(bccd, BCCD_TEST):
        dets = segment(img)
        pred = [d.box for d in dets if d.kind == "wbc"]
        gt_n += len(gt.get("WBC", []))
        pred_n += len(pred)
        found += match(pred, gt.get("WBC", []), "iou")
    assert gt_n >= 10
    assert found / gt_n >= 0.9, f"WBC recall {found}/{gt_n}"
    assert found / pred_n >= 0.85, f"WBC precision {found}/{pred_n}"


def test_red_cells_are_not_white_cells(bccd):
    """Red cells are most of every frame: hardly any white-cell detection may land on one alone."""
    on_rbc_only = total = 0
    for img, gt in _bccd_frames(bccd, BCCD_TEST[:6]):
        for d in segment(img):
            if d.kind != "wbc":
                continue
            total += 1
            in_wbc = any(centre_in(b, d.centre) for b in gt.get("WBC", []))
            on_rbc_only += (not in_wbc) and any(centre_in(b, d.centre) for b in gt.get("RBC", []))
    assert total and on_rbc_only <= 1


def test_otsu_method_runs_and_differs(bccd):
    img, gt = next(_bccd_frames(bccd, BCCD_TEST[:1]))
    otsu = segment(img, SegmentParams(method="otsu"))
    stain = segment(img)
    assert otsu and stain
    assert [d.box for d in otsu] != [d.box for d in stain]


def test_labelled_central_cell_found_on_pbc_fields(pbc_raw_val):
    rows = list(csv.DictReader(open(pbc_raw_val / "labels.csv")))
    by_class = {}
    for r in rows:  # two fields of each class, the platelet class included
        by_class.setdefault(r["class"], [])
        if len(by_class[r["class"]]) < 2:
            by_class[r["class"]].append(r)
    found = total = 0
    for r in (r for v in by_class.values() for r in v):
        img = read_image_rgb(pbc_raw_val / r["file"])
        h, w = img.shape[:2]
        d = nearest_to(segment(img), (w / 2, h / 2))
        total += 1
        found += d is not None and centre_in(d.box, (w / 2, h / 2))
    assert total == 16 and found >= 15


def test_sample_pbc_crops_match_training_scale():
    """On PBC fields a white-cell crop comes out near the 200 px that BloodMNIST cut."""
    sides = []
    for p in sorted((REPO / "samples" / "pbc").glob("*.jpg")):
        img = read_image_rgb(p)
        d = nearest_to(segment(img), (img.shape[1] / 2, img.shape[0] / 2))
        sides.append(d.crop[2])
    assert 140 <= np.median(sides) <= 280


def test_blank_and_red_only_frames_give_no_cells():
    blank = np.full((480, 640, 3), 235, np.uint8)
    assert segment(blank) == []
    pink = blank.copy()
    pink[100:200, 100:200] = (200, 140, 150)  # a red-cell coloured disc-ish patch
    assert [d for d in segment(pink) if d.kind == "wbc"] == []
    assert segment(np.full((12, 9, 3), 128, np.uint8)) == []  # tiny frames are no error


def test_same_cells_at_any_frame_size(bccd):
    """A 4x upscaled frame (a higher-resolution camera) gives the same cells, boxes 4x larger."""
    import cv2

    img, _ = next(_bccd_frames(bccd, ["BloodImage_00007"]))
    small = [d.box for d in segment(img) if d.kind == "wbc"]
    big = [d.box for d in segment(cv2.resize(img, None, fx=4, fy=4)) if d.kind == "wbc"]
    assert len(small) == len(big) >= 1
    for a, b in zip(small, big):
        assert np.allclose(np.array(b) / 4, a, atol=4)


def test_crops_are_scale_normalised_and_border_replicated():
    det = Detection((0, 0, 100, 80), "wbc", 5000)
    cx, cy, side = crop_square(det, 0.5, 100)
    assert side == 200 and (cx, cy) == (50, 40)
    frame = np.zeros((100, 120, 3), np.uint8)
    frame[:, :60] = 255
    crop = extract_crop(frame, (cx, cy, side))
    assert crop.shape == (200, 200, 3)
    # running off the left edge replicates the edge column (white), not black padding
    assert crop[100, 0].tolist() == [255, 255, 255]
    # the same cell at twice the magnification gives the same crop content scale
    big = Detection((0, 0, 200, 160), "wbc", 20000)
    assert crop_square(big, 0.5, 100)[2] == 2 * side


def test_fixed_crop_side_option(pbc_raw_val):
    img = read_image_rgb(pbc_raw_val / "val_00000.jpg")
    dets = segment(img, crop_side=200)
    assert {d.crop[2] for d in dets if d.kind == "wbc"} == {200} and {d.crop[2] for d in dets if d.kind == "platelet"} == {100}


def test_cell_fraction_validated():
    with pytest.raises(ValueError):
        crop_square(Detection((0, 0, 10, 10), "wbc", 50), 1.5, 10)


def test_red_cells_measure_the_magnification(bccd, pbc_raw_val):
    """Red cells are the smear's ruler: larger in BCCD (higher magnification) than in PBC."""
    from hemaedge.edge.ruler import Ruler, red_cell_diameter

    pbc, bc = Ruler(same_slide=True), Ruler(same_slide=True)
    for i in range(0, 400, 40):
        pbc.read(read_image_rgb(pbc_raw_val / f"val_{i:05d}.jpg"))
    for img, _ in _bccd_frames(bccd, BCCD_TEST[:8]):
        bc.read(img)
    assert 50 <= pbc.diameter <= 85  # PBC: ~65 px; a BloodMNIST crop (200 px) is ~3 of them
    assert 75 <= bc.diameter <= 120  # BCCD: ~90-100 px (its RBC boxes are ~100 px)
    assert red_cell_diameter(np.full((100, 100, 3), 230, np.uint8)) is None


SAMPLE_FRAMES = sorted((Path(__file__).resolve().parents[1] / "samples").rglob("*.jpg"))


@pytest.mark.parametrize("side", [9, 64, 300, 1500])
def test_crop_off_the_frame_edge_replicates_the_border_as_a_padded_frame_would(side):
    import cv2

    img = read_image_rgb(SAMPLE_FRAMES[0])
    h, w = img.shape[:2]
    for cx, cy in [(0, 0), (w - 1, h - 1), (w // 2, 3), (5, h // 2), (w // 2, h // 2)]:
        pad = side
        padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = cx - side // 2 + pad, cy - side // 2 + pad
        expected = padded[y0:y0 + side, x0:x0 + side]
        got = extract_crop(img, (cx, cy, side))
        assert got.shape == (side, side, 3)
        assert np.array_equal(got, expected)


def test_ruler_and_segmenter_sharing_one_work_copy_find_the_same_cells():
    from hemaedge.edge.ruler import red_cell_diameter
    from hemaedge.edge.segment import segment, work_copy

    p = SegmentParams()
    for path in SAMPLE_FRAMES[:4]:
        img = read_image_rgb(path)
        work = work_copy(img, p)
        d = red_cell_diameter(img, p)
        assert red_cell_diameter(img, p, work) == d
        alone = segment(img, p, rbc_diameter=d)
        shared = segment(img, p, rbc_diameter=d, work=work)
        assert [(x.box, x.kind, x.area, x.score, x.crop) for x in alone] == \
               [(x.box, x.kind, x.area, x.score, x.crop) for x in shared]


# ----------------------------------------------------------------------------- platelets (issue 12)

# The sixth pass's platelet rules: the seventh pass's pale-colour tier and faint rescue off, so a
# test of an older rule checks that rule alone (both drop or add bodies of their own).
SIXTH = dict(faint_rescue=False, pale_min_blue=SegmentParams().platelet_min_blue)


def _platelet_scores(bccd, ids, transform=lambda img: img, params=None):
    from hemaedge.edge.ruler import red_cell_diameter

    gt_n = pred_n = found = 0
    for img, gt in _bccd_frames(bccd, ids):
        img = transform(img)
        pred = [d.box for d in segment(img, params, rbc_diameter=red_cell_diameter(img)) if d.kind == "platelet"]
        g = gt.get("Platelets", [])
        gt_n, pred_n, found = gt_n + len(g), pred_n + len(pred), found + match(pred, g, "iou")
    return gt_n, pred_n, found


def test_platelets_found_on_bccd_frames(bccd):
    """Platelets on the first 24 BCCD test frames (tuned on train only): the old fixed stain
    thresholds (40/50 grey levels) found 7 of 28 with 21 false alarms; pale platelets are found
    now from the frame's own stain spread."""
    from hemaedge.benchmarks.tools.segmentation_bccd import frame_ids

    ids = frame_ids(bccd, "test")[:24]
    gt_n, pred_n, found = _platelet_scores(bccd, ids)
    assert gt_n >= 20
    assert found / gt_n >= 0.6, f"platelet recall {found}/{gt_n}"
    # the faint rescue proposes candidates for the classifier to judge (the whole pipeline's
    # precision: benchmarks/results/segmentation_bccd.md); the segmenter's own candidates:
    _, pred_n, found_normal = _platelet_scores(bccd, ids, params=SegmentParams(faint_rescue=False))
    assert found >= found_normal
    assert found_normal / pred_n >= 0.6, f"platelet precision {found_normal}/{pred_n}"


def test_platelets_found_under_a_paler_stain(bccd):
    """Another microscope or a weaker stain: every colour contrast halved towards the background.
    The thresholds come from the frame's own statistics, so the same platelets are found."""
    ids = BCCD_TEST

    def paler(img):
        bg = np.median(img.reshape(-1, 3), axis=0)
        return np.clip(bg + 0.5 * (img.astype(np.float32) - bg), 0, 255).astype(np.uint8)

    gt_n, _, found = _platelet_scores(bccd, ids)
    _, _, found_pale = _platelet_scores(bccd, ids, paler)
    assert found >= 5
    assert found_pale >= found - 2, f"paler stain: {found_pale} of {gt_n} platelets vs {found}"


def test_a_pink_speck_is_not_a_platelet(bccd):
    """The same stained body with its red and blue swapped (a pink-magenta speck of stain on a
    red cell, not a blue-violet platelet) is no longer a platelet."""
    from hemaedge.edge.ruler import red_cell_diameter

    img, gt = next(_bccd_frames(bccd, ["BloodImage_00015"]))
    d = red_cell_diameter(img)
    found = [x for x in segment(img, rbc_diameter=d) if x.kind == "platelet"]
    (x0, y0, x1, y1), = gt["Platelets"]
    assert match([x.box for x in found], [(x0, y0, x1, y1)], "iou") == 1
    pink = img.copy()
    patch = pink[y0:y1, x0:x1]
    pink[y0:y1, x0:x1] = patch[..., ::-1]  # RGB -> BGR inside the platelet's box only
    after = [x for x in segment(pink, rbc_diameter=d) if x.kind == "platelet"]
    assert not any(centre_in((x0, y0, x1, y1), x.centre) for x in after)


def test_a_large_pale_smear_of_stain_is_not_a_platelet(bccd):
    """BCCD train frames with a pale stained body wider than a platelet that no VOC box marks
    (`SegmentParams.pale_platelet_side_rbc` / `pale_platelet_z`): the body is found with the
    rule off and gone with it on, and every VOC platelet found without the rule is still found."""
    from hemaedge.edge.ruler import red_cell_diameter

    pale = {"BloodImage_00039": (528, 282, 582, 326), "BloodImage_00069": (582, 284, 622, 348),
            "BloodImage_00092": (268, 68, 304, 134), "BloodImage_00120": (178, 90, 210, 148)}
    # no body is 9 red cells wide: rule off; the shape rule off too (3 of the 4 smears are also
    # ragged, `test_a_ragged_body_is_not_a_platelet`): this checks the pale rule alone
    off = SegmentParams(pale_platelet_side_rbc=9.0, platelet_min_solidity=0.0, **SIXTH)
    for img, gt, fid in ((img, gt, fid) for fid in pale for img, gt in _bccd_frames(bccd, [fid])):
        d = red_cell_diameter(img)
        without = [x.box for x in segment(img, off, rbc_diameter=d) if x.kind == "platelet"]
        with_rule = [x.box for x in segment(img, SegmentParams(**SIXTH), rbc_diameter=d) if x.kind == "platelet"]
        assert any(iou(b, pale[fid]) > 0.9 for b in without), fid
        assert not any(iou(b, pale[fid]) > 0.5 for b in with_rule), fid
        voc = gt.get("Platelets", [])
        assert match(with_rule, voc, "iou") == match(without, voc, "iou"), fid




def _platelet_boxes(img, params=None):
    from hemaedge.edge.ruler import red_cell_diameter

    return [x.box for x in segment(img, params, rbc_diameter=red_cell_diameter(img)) if x.kind == "platelet"]


def test_a_ragged_body_is_not_a_platelet(bccd):
    """BCCD train/val bodies a platelet's size but far from a disc (solidity < 0.8: a crystal,
    a refractile ring on a red cell, a streak of pale stain) that no VOC box marks: found with
    the shape rule off, gone with it on, and every VOC platelet found without it still found."""
    ragged = {"BloodImage_00064": (94, 342, 136, 380), "BloodImage_00196": (136, 58, 176, 96),
              "BloodImage_00342": (148, 84, 194, 122), "BloodImage_00273": (98, 368, 156, 416)}
    # the stain-mass rule off too (00196's body also holds too little stain): this checks the shape rule alone
    off = SegmentParams(platelet_min_solidity=0.0, platelet_min_stain=0.0, **SIXTH)
    for fid, body in ragged.items():
        (img, gt), = _bccd_frames(bccd, [fid])
        without, with_rule = _platelet_boxes(img, off), _platelet_boxes(img, SegmentParams(**SIXTH))
        assert any(iou(b, body) > 0.9 for b in without), fid
        assert not any(iou(b, body) > 0.3 for b in with_rule), fid
        voc = gt.get("Platelets", [])
        assert match(with_rule, voc, "iou") >= match(without, voc, "iou"), fid


def test_a_body_holding_too_little_stain_is_not_a_platelet(bccd):
    """BCCD train/val bodies that pass the area and mean-stain floors but hold too little stain in
    all (area x mean stain < `platelet_min_stain` d^2 robust SDs: a refractile dot, a thin rod, a
    faint speck) that no VOC box marks: found with the rule off, gone with it on, and every VOC
    platelet of the frame found without it is still found."""
    specks = {"BloodImage_00014": (500, 84, 530, 114), "BloodImage_00370": (594, 188, 632, 220),
              "BloodImage_00214": (380, 346, 414, 380), "BloodImage_00125": (236, 44, 270, 78),
              "BloodImage_00326": (302, 278, 330, 306)}
    off = SegmentParams(platelet_min_stain=0.0, **SIXTH)
    for fid, speck in specks.items():
        (img, gt), = _bccd_frames(bccd, [fid])
        without, with_rule = _platelet_boxes(img, off), _platelet_boxes(img, SegmentParams(**SIXTH))
        voc = gt.get("Platelets", [])
        assert any(iou(b, speck) > 0.9 for b in without) and match([speck], voc, "iou30") == 0, fid
        assert not any(iou(b, speck) > 0.3 for b in with_rule), fid
        assert match(with_rule, voc, "iou") == match(without, voc, "iou"), fid


def test_pale_platelets_just_over_half_a_red_cell_are_kept(bccd):
    """Two VOC platelets of BCCD train, pale (3.5-4 robust SDs) and just over 0.5 d across: lost
    to the large-and-pale rule at its old level (4 SDs), found at 3.5 (sixth pass's rules: the
    seventh pass's pale-colour tier drops 00003's, blue-minus-red 0.6-0.8 of its stain)."""
    for fid, platelet in (("BloodImage_00003", (335, 268, 370, 299)), ("BloodImage_00086", (554, 360, 594, 397))):
        (img, gt), = _bccd_frames(bccd, [fid])
        assert platelet in gt["Platelets"]
        assert match(_platelet_boxes(img, SegmentParams(pale_platelet_z=4.0, **SIXTH)), [platelet], "iou") == 0, fid
        assert match(_platelet_boxes(img, SegmentParams(**SIXTH)), [platelet], "iou") == 1, fid


def test_platelets_joined_by_pale_stain_are_found_from_their_cores(bccd):
    """A VOC platelet whose pale-mask body also holds a neighbour (too wide or too long for one
    platelet: `split_misshapen`; ragged: `split_ragged`) was lost; its stained core is now the
    candidate, and no VOC platelet of the frame is lost for it."""
    joined = {"BloodImage_00081": ((358, 300, 401, 345), "split_misshapen"),
              "BloodImage_00139": ((179, 208, 223, 245), "split_misshapen"),
              "BloodImage_00277": ((51, 176, 100, 211), "split_misshapen"),
              "BloodImage_00142": ((569, 422, 606, 455), "split_ragged"),
              "BloodImage_00377": ((536, 102, 574, 140), "split_ragged")}
    for fid, (platelet, rule) in joined.items():
        (img, gt), = _bccd_frames(bccd, [fid])
        assert platelet in gt["Platelets"]
        without, with_rule = _platelet_boxes(img, SegmentParams(**{rule: False})), _platelet_boxes(img)
        assert match(without, [platelet], "iou") == 0, fid
        assert match(with_rule, [platelet], "iou") == 1, fid
        assert match(with_rule, gt["Platelets"], "iou") > match(without, gt["Platelets"], "iou"), fid


def test_platelet_candidates_get_a_crop_sized_for_a_platelet(bccd):
    """A platelet candidate's crop is `platelet_crop_scale` (half) of a nucleated cell's crop
    side, in every crop mode (the classifier confirms BCCD platelets far more often in it)."""
    from hemaedge.edge.ruler import red_cell_diameter

    img, _ = next(_bccd_frames(bccd, ["BloodImage_00014"]))
    d = red_cell_diameter(img)
    side = int(round(3 * d))
    dets = segment(img, rbc_diameter=d, crop_side=side)
    plt = [x for x in dets if x.kind == "platelet"]
    assert plt and any(x.kind == "wbc" for x in dets)
    assert all(x.crop[2] == side for x in dets if x.kind == "wbc")
    assert all(x.crop[2] == round(side * SegmentParams().platelet_crop_scale) for x in plt)
    same = segment(img, SegmentParams(platelet_crop_scale=1.0), rbc_diameter=d, crop_side=side)
    assert all(x.crop[2] == side for x in same)
    own = segment(img, rbc_diameter=d)  # no crop side given: half the crop the cell's size implies
    ref = [x for x in own if x.kind == "wbc"][0]
    assert all(x.crop[2] == round(crop_square(x, 0.8, ref.size)[2] / 2) for x in own if x.kind == "platelet")


def test_a_body_as_faint_as_a_red_cell_is_not_a_nucleus(pbc_raw_val):
    """PBC val_00940 (one immature granulocyte): two red cells next to it are just above the stain
    mask's threshold; with the faint-body rule off they are two more nucleated cells (and swell
    the granulocyte's box), with it on the field shows its one nucleated cell."""
    from hemaedge.edge.ruler import red_cell_diameter

    img = read_image_rgb(pbc_raw_val / "val_00940.jpg")
    d = red_cell_diameter(img)
    off = [x for x in segment(img, SegmentParams(faint_body_ratio=0.0), rbc_diameter=d) if x.kind == "wbc"]
    on = [x for x in segment(img, rbc_diameter=d) if x.kind == "wbc"]
    assert len(off) == 3 and len(on) == 1
    assert centre_in(on[0].box, (img.shape[1] / 2, img.shape[0] / 2))


def test_two_touching_white_cells_stay_two(bccd):
    """BCCD train 00176: a monocyte and a lymphocyte touch; the watershed splits their clump but
    their boxes overlap, and the lobe merge joined them into one box matching neither. Each
    nucleus is thick (>= 0.6 red-cell diameters at its widest) and the two widest points lie
    ~2 d apart, so they stay two cells, each matching its VOC box."""
    from hemaedge.edge.ruler import red_cell_diameter

    img, gt = next(_bccd_frames(bccd, ["BloodImage_00176"]))
    d = red_cell_diameter(img)
    wbc = [x for x in segment(img, rbc_diameter=d) if x.kind == "wbc"]
    joined = [x for x in segment(img, SegmentParams(two_cells_core_rbc=99.0), rbc_diameter=d) if x.kind == "wbc"]
    assert len(joined) == 1 and len(wbc) == 2
    assert all(max(iou(x.box, g) for x in wbc) >= 0.5 for g in gt["WBC"])


@pytest.mark.parametrize("name", ["val_00011.jpg", "val_00410.jpg", "val_00626.jpg", "val_00063.jpg",
                                  "val_01020.jpg", "val_01166.jpg", "val_01177.jpg", "val_00574.jpg"])
def test_lobed_nuclei_are_not_split_into_two_cells(pbc_raw_val, name):
    """PBC eosinophils (00011, 00410, 00626, 00063) and segmented neutrophils (01020, 01166, 01177,
    00574) whose nucleus the watershed cuts into lobes: the lobes are thinner than two cells'
    nuclei or too close, so each field keeps its one nucleated cell at the centre (a looser
    two-cell rule would count the lobes as cells)."""
    from hemaedge.edge.ruler import red_cell_diameter

    img = read_image_rgb(pbc_raw_val / name)
    d = red_cell_diameter(img)

    def whole_cells(params):
        return [x for x in segment(img, params, rbc_diameter=d) if x.kind == "wbc" and not x.at_edge]
    wbc = whole_cells(SegmentParams())
    assert len(wbc) == 1
    assert centre_in(wbc[0].box, (img.shape[1] / 2, img.shape[0] / 2))
    assert len(whole_cells(SegmentParams(two_cells_core_rbc=0.3, two_cells_apart_rbc=0.8))) >= 2


def test_a_platelet_candidate_lying_on_a_red_cell_is_marked(bccd):
    """BCCD train 00035: three candidates lie in the open between red cells (each a VOC
    platelet) and one lies on a red cell (no VOC box): only that one is `on_red_cell`; with the
    rule's level at 1.0 (never) none is."""
    from hemaedge.edge.ruler import red_cell_diameter

    img, gt = next(_bccd_frames(bccd, ["BloodImage_00035"]))
    d = red_cell_diameter(img)
    found = [x for x in segment(img, rbc_diameter=d) if x.kind == "platelet"]
    on_red = [x for x in found if x.on_red_cell]
    in_open = [x for x in found if not x.on_red_cell]
    assert len(on_red) == 1 and not any(iou(on_red[0].box, g) > 0.1 for g in gt["Platelets"])
    assert len(in_open) >= 3 and all(max(iou(x.box, g) for g in gt["Platelets"]) >= 0.5 for x in in_open)
    never = [x for x in segment(img, SegmentParams(platelet_on_red_cell=1.0), rbc_diameter=d) if x.kind == "platelet"]
    assert len(never) == len(found) and not any(x.on_red_cell for x in never)


# ----------------------------------------------------------------------------- seventh pass (issue 12)
# BCCD train + val VOC platelets that only the faint rescue finds (a pale or small body with a stained centre)
RESCUED = {"BloodImage_00004": [(124, 50, 162, 88)], "BloodImage_00026": [(282, 420, 324, 464), (148, 262, 192, 304)],
           "BloodImage_00179": [(72, 14, 106, 48)], "BloodImage_00198": [(262, 396, 298, 430)],
           "BloodImage_00273": [(496, 402, 530, 438)], "BloodImage_00276": [(352, 314, 386, 346)]}


def test_faint_platelets_with_a_stained_centre_are_rescued(bccd):
    """Faint or small VOC platelets of BCCD train/val (mean below 3 robust SDs, too little stain in
    all, or below 0.03 d^2) had no candidate; the faint rescue (`SegmentParams.faint_rescue`)
    finds each, marked `faint`, and loses no VOC platelet the frame's other candidates found."""
    from hemaedge.edge.ruler import red_cell_diameter

    for fid, boxes in RESCUED.items():
        (img, gt), = _bccd_frames(bccd, [fid])
        voc = gt["Platelets"]
        without = _platelet_boxes(img, SegmentParams(faint_rescue=False))
        with_rule = [x for x in segment(img, rbc_diameter=red_cell_diameter(img)) if x.kind == "platelet"]
        for box in boxes:
            assert match(without, [box], "iou") == 0, fid
            rescued = [x for x in with_rule if iou(x.box, box) >= 0.5]
            assert len(rescued) == 1 and rescued[0].faint, fid
            assert match([box], voc, "iou") == 1 and max(iou(box, v) for v in voc) >= 0.5, fid
        assert match([x.box for x in with_rule], voc, "iou") == match(without, voc, "iou") + len(boxes), fid
        assert not any(x.faint for x in segment(img, SegmentParams(faint_rescue=False),
                                                rbc_diameter=red_cell_diameter(img)))


@pytest.mark.parametrize("fid,body,relaxed", [
    # at a red cell's edge (over 0.1 of the ring around its box is red cell)
    ("BloodImage_00083", (330, 222, 362, 252), {"faint_max_ring": 1.0}),
    ("BloodImage_00237", (358, 250, 394, 282), {"faint_max_ring": 1.0}),
    # not blue-violet enough for a pale body (blue-minus-red below 0.8 of its stain)
    ("BloodImage_00123", (514, 56, 548, 88), {"pale_min_blue": 0.0}),
    ("BloodImage_00133", (190, 426, 224, 460), {"pale_min_blue": 0.0}),
    # not a disc (solidity below 0.95)
    ("BloodImage_00053", (8, 26, 38, 56), {"faint_min_solidity": 0.0}),
    ("BloodImage_00244", (614, 56, 640, 92), {"faint_min_solidity": 0.0}),
])
def test_a_faint_body_must_pass_the_stricter_tests(bccd, fid, body, relaxed):
    """Faint BCCD train/val bodies with a stained centre that no VOC box marks: each fails one of
    the rescue's stricter tests and is rescued with that test relaxed, not with it."""
    from hemaedge.edge.ruler import red_cell_diameter

    (img, gt), = _bccd_frames(bccd, [fid])
    d = red_cell_diameter(img)
    loose = [x for x in segment(img, SegmentParams(**relaxed), rbc_diameter=d) if x.kind == "platelet"]
    assert any(iou(x.box, body) > 0.9 and x.faint for x in loose)
    assert not any(iou(body, v) > 0.1 for v in gt.get("Platelets", []))
    assert not any(iou(x.box, body) > 0.3 for x in segment(img, rbc_diameter=d) if x.kind == "platelet")


def test_a_pale_candidate_must_be_clearly_blue_violet(bccd):
    """BCCD train/val candidates with a mean stain below `pale_z` (4 robust SDs) whose
    blue-minus-red is 0.6-0.8 of their stain, matching no VOC box: kept at the common level
    (0.6), dropped at the pale level (`pale_min_blue` 0.8); no VOC platelet of their frames is lost."""
    pale = {"BloodImage_00047": (548, 452, 598, 480), "BloodImage_00092": (394, 78, 430, 130),
            "BloodImage_00176": (184, 366, 220, 410), "BloodImage_00246": (256, 250, 288, 284),
            "BloodImage_00030": (368, 6, 406, 56)}
    for fid, body in pale.items():
        (img, gt), = _bccd_frames(bccd, [fid])
        common = _platelet_boxes(img, SegmentParams(**SIXTH))
        strict = _platelet_boxes(img, SegmentParams(faint_rescue=False))
        voc = gt.get("Platelets", [])
        assert body in common and not any(iou(body, v) > 0.1 for v in voc), fid
        assert not any(iou(b, body) > 0.3 for b in strict), fid
        assert match(strict, voc, "iou") == match(common, voc, "iou"), fid


def test_picture_box_finds_black_bars_and_never_an_ordinary_frame(bccd, pbc_raw_val):
    """Letterbox / pillarbox bars (a 16:9 camera showing a 4:3 field): the picture inside them.
    Ordinary frames (every 4th BCCD frame, every 20th PBC field) have none."""
    from hemaedge.edge.segment import picture_box

    files = sorted((bccd / "JPEGImages").glob("*.jpg"))[::4] + sorted(pbc_raw_val.glob("*.jpg"))[::20]
    assert all(picture_box(read_image_rgb(f)) is None for f in files)
    rgb = read_image_rgb(REPO / "samples" / "bccd" / "BloodImage_00007.jpg")
    h, w = rgb.shape[:2]
    canvas = np.zeros((h + 40, w + 300, 3), np.uint8)
    canvas[20:20 + h, 150:150 + w] = rgb
    assert picture_box(canvas) == (150, 20, 150 + w, 20 + h)
    side = np.zeros((h, w + 200, 3), np.uint8)  # pillarbox only: rows are not cut
    side[:, 100:100 + w] = rgb
    assert picture_box(side) == (100, 0, 100 + w, h)
    assert picture_box(np.zeros((h, w, 3), np.uint8)) is None  # all dark: the blank check's case
