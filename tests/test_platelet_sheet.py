"""The platelet false-alarm sheet (benchmarks/tools/platelet_sheet): groups and tiles on real BCCD frames."""
from __future__ import annotations

from hemaedge.benchmarks.tools.platelet_sheet import GROUPS, TILE, group_of, sheet, tile
from hemaedge.edge.segment import Detection


def test_false_alarms_are_grouped_by_what_lies_there():
    gt = {"Platelets": [(100, 100, 130, 130)], "WBC": [(300, 300, 400, 400)]}
    at = lambda box, edge=False: Detection(box, "platelet", 100, at_edge=edge)  # noqa: E731
    assert group_of(at((110, 105, 150, 140)), gt, 80.0) == GROUPS[0]  # overlaps the VOC platelet, IoU < 0.5
    assert group_of(at((402, 350, 430, 380)), gt, 80.0) == GROUPS[1]  # 2 px from the white cell's box
    assert group_of(at((0, 200, 20, 230), edge=True), gt, 80.0) == GROUPS[2]
    assert group_of(at((500, 50, 530, 80)), gt, 80.0) == GROUPS[3]


def test_tiles_make_one_sheet(bccd):
    det = Detection((320, 240, 350, 270), "platelet", 100)
    tiles = [tile(bccd, "BloodImage_00001", det, GROUPS[3]), tile(bccd, "BloodImage_00001", det, GROUPS[0])]
    assert tiles[0].shape == (TILE, TILE, 3)
    assert sheet(tiles, cols=3).shape == (TILE, 3 * TILE, 3)


def test_a_pipeline_tile_shows_the_platelet_probability(bccd):
    det = Detection((320, 240, 350, 270), "platelet", 100)
    plain, labelled = tile(bccd, "BloodImage_00001", det, GROUPS[3]), tile(bccd, "BloodImage_00001", det, GROUPS[3], 0.87)
    assert plain.shape == labelled.shape == (TILE, TILE, 3) and (plain != labelled).any()
