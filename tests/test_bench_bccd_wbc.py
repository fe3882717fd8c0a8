"""The BCCD white-cell end-to-end benchmark's frame list and scoring (no model needed)."""
from __future__ import annotations

import numpy as np

from hemaedge.benchmarks.tools.bccd_wbc import frames, summarise

CLASSES = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte", "neutrophil",
           "platelet"]


def test_frames_are_single_label_single_box_of_one_split(bccd):
    val = frames(bccd, "val")
    assert len(val) == 85 and all(r["split"] == "val" and r["n_labels"] == "1" for r in val)
    assert not {r["frame"] for r in val} & {r["frame"] for r in frames(bccd, "test")}


def _row(frame, label, probs):
    p = np.asarray(probs, np.float32)
    top = CLASSES[int(p.argmax())]
    return {"frame": frame, "label": label, "found": True, "probabilities": p.tolist(), "top": top,
            "predicted": top if top != "platelet" and p.max() >= 0.4 else "unidentified", "confidence": float(p.max())}


def test_summary_counts_missed_cells_as_wrong_and_compares_the_three_rules():
    per_frame = [
        _row("a", "neutrophil", [0, 0, 0, 0, 0, 0, 0.99, 0.01]),       # right, sure
        _row("b", "neutrophil", [0, 0, 0, 0, 0, 0.2, 0.8, 0]),        # right, OOD score 0.22
        _row("c", "neutrophil", [0, 0, 0, 0, 0, 0.5, 0.5, 0]),        # a tie: argmax says monocyte, wrong
        _row("d", "eosinophil", [0, 0, 0, 0, 0, 0, 0.05, 0.95]),      # wrong: platelet, unidentified
        _row("e", "eosinophil", [0, 0.03, 0, 0, 0, 0, 0.97, 0]),      # wrong, sure: nothing flags it
        {"frame": "f", "label": "eosinophil", "found": False},        # not found: wrong, flagged
    ]
    s = summarise(per_frame, CLASSES, ood_threshold=0.15)
    assert (s["frames"], s["right"], s["top_right"]) == (6, 2, 2)
    conf, ood, both = (s["rules"][r] for r in ("confidence only", "OOD only", "confidence + OOD"))
    assert (conf["right"], conf["wrong"]) == (2, 4)
    assert conf["right_flagged_n"] == 0 and conf["wrong_flagged_n"] == 3  # c (0.5 < 0.6), d, f
    assert ood["right_flagged_n"] == 1 and ood["wrong_flagged_n"] == 3    # b; c (score 0.69), d, f
    assert both["right_flagged_n"] == 1 and both["wrong_flagged_n"] == 3
    assert s["per_class"]["eosinophil"]["predicted_as"] == {"unidentified": 1, "neutrophil": 1, "not found": 1}
    assert summarise(per_frame, CLASSES)["rules"]["OOD only"] is None  # no threshold: no OOD rows
    assert s["rules"]["one tier (before)"] is None  # a one-tier bundle has no "before" to compare


def test_two_tiers_count_the_unusual_right_answer_but_still_flag_it():
    per_frame = [
        _row("a", "neutrophil", [0, 0, 0, 0, 0, 0, 0.99, 0.01]),       # right, sure
        _row("b", "neutrophil", [0, 0, 0, 0, 0, 0.2, 0.8, 0]),        # right, OOD score 0.22: review tier
        _row("c", "neutrophil", [0.2, 0, 0, 0, 0, 0.35, 0.45, 0]),    # right, score 0.80: unidentified
        _row("e", "eosinophil", [0, 0.2, 0, 0, 0, 0, 0.8, 0]),        # wrong, review tier
    ]
    s = summarise(per_frame, CLASSES, ood_threshold=0.6, ood_flag_threshold=0.15)
    two, one = s["rules"]["confidence + OOD"], s["rules"]["one tier (before)"]
    assert (two["right_flagged_n"], two["right_unidentified_n"], two["wrong_flagged_n"], two["wrong_unidentified_n"]) == (2, 1, 1, 0)
    assert (one["right_flagged_n"], one["right_unidentified_n"], one["wrong_unidentified_n"]) == (2, 2, 1)
