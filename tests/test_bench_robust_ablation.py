"""The robustness ablation's arms and its training subset (no training here: the tool itself is
a long benchmark, docs/finetune.md)."""
from __future__ import annotations

import json

import cv2
import numpy as np

from hemaedge.benchmarks.tools.robust_ablation import arms, make_subset
from hemaedge.train.finetune_augment import ROBUST_PIECES


def test_every_robustness_piece_has_a_leave_one_out_arm():
    a = arms()
    assert list(a)[:3] == ["all", "recipe-only", "no-normalize"]  # the most informative run first
    for piece in ROBUST_PIECES:
        left = a[f"minus-{piece}"]["robust_pieces"].split(",")
        assert piece not in left and sorted(left + [piece]) == sorted(ROBUST_PIECES)
    assert a["no-normalize"]["normalize"] == "none" and a["recipe-only"]["augment"] == "full"
    assert a["minus-scale"]["scale_jitter"] == 0.15


def _tree(root, per_class=6):
    for split in ("train", "val", "test"):
        for c in ("basophil", "neutrophil"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                cv2.imwrite(str(d / f"{split}_{c}_{i:02d}.jpg"), np.full((8, 8, 3), 40 * i, np.uint8))


def test_the_subset_is_seeded_stratified_and_never_links_the_test_split(tmp_path):
    _tree(tmp_path / "data")
    a = make_subset(tmp_path / "data", tmp_path / "a", per_class=3, seed=1, val_per_class=2)
    b = make_subset(tmp_path / "data", tmp_path / "b", per_class=3, seed=1, val_per_class=2)
    names = lambda root, split: sorted(p.name for p in (root / split).rglob("*.jpg"))
    assert names(a, "train") == names(b, "train") and len(names(a, "train")) == 6  # 3 per class, same seed
    assert len(names(a, "val")) == 4
    links = [p.resolve() for p in a.rglob("*.jpg")]
    assert links and not any("/test/" in str(p) for p in links)  # its test/ holds val images only
    assert set(names(a, "test")) <= set(names(a, "val"))
    assert json.loads((a / "SUBSET.json").read_text())["train"] == 6
    assert make_subset(tmp_path / "data", tmp_path / "a", per_class=5, seed=2) == a  # a finished subset is kept
