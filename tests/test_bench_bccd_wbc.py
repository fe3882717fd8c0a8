"""The BCCD white-cell end-to-end benchmark's frame list and scoring (no model needed)."""
from __future__ import annotations

from hemaedge.benchmarks.tools.bccd_wbc import REVIEW_THRESHOLD, frames, summarise


def test_frames_are_single_label_single_box_of_one_split(bccd):
    val = frames(bccd, "val")
    assert len(val) == 85 and all(r["split"] == "val" and r["n_labels"] == "1" for r in val)
    assert not {r["frame"] for r in val} & {r["frame"] for r in frames(bccd, "test")}


def test_summary_counts_missed_cells_as_wrong_and_flags_low_confidence():
    per_frame = [
        {"frame": "a", "label": "neutrophil", "found": True, "predicted": "neutrophil", "confidence": 0.9},
        {"frame": "b", "label": "neutrophil", "found": True, "predicted": "neutrophil", "confidence": REVIEW_THRESHOLD - 0.1},
        {"frame": "c", "label": "eosinophil", "found": True, "predicted": "platelet", "confidence": 0.95},
        {"frame": "d", "label": "eosinophil", "found": False},
    ]
    s = summarise(per_frame)
    assert (s["frames"], s["right"], s["accuracy"]) == (4, 2, 0.5)
    assert s["right_flagged"] == 0.5 and s["wrong_flagged"] == 0.5  # the missed cell counts as flagged
    assert s["per_class"]["eosinophil"]["predicted_as"] == {"platelet": 1, "not found": 1}
