"""A second microscope in fine-tuning (`--extra-cells`, `--extra-val`; issue #13's multi-domain
model): its cells make the asked share of every epoch, drawn class-balanced with a rare class
capped, and its held-out cells share the choice of the best epoch."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from finetune_helpers import tiny_config, tree3  # noqa: E402,F401

from hemaedge.train import sampling  # noqa: E402


def test_extra_draws_take_their_share_and_balance_classes_with_a_cap():
    labels = np.array([0] * 113 + [1] * 46 + [2] * 1)  # BCCD train's mix: one basophil
    rng = np.random.default_rng(0)
    draws = sampling.extra_draws(labels, n_base=3000, share=0.2, rng=rng, balanced=True)
    assert len(draws) == 750  # 750 / (3000 + 750) = 20 %
    got = np.bincount(labels[draws], minlength=3) / len(draws)
    assert got[0] == pytest.approx(got[1], abs=0.06)  # the two common classes drawn alike
    # the single cell is capped at 4x its share by count (1/160), not a third of the draws
    assert 0.01 < got[2] < 0.05
    plain = sampling.extra_draws(labels, 3000, 0.2, np.random.default_rng(0), balanced=False)
    assert np.bincount(labels[plain], minlength=3)[0] / len(plain) > 0.6  # the natural mix


def _extra_tree(tree3: Path, dst: Path, split: str, n: int) -> Path:
    """A class-folder tree of `n` cells per class from one split of tree3 (another 'microscope')."""
    for folder in (tree3 / split).iterdir():
        (dst / folder.name).mkdir(parents=True)
        for f in sorted(folder.glob("*.jpg"))[:n]:
            shutil.copy(f, dst / folder.name / f.name)
    return dst


def test_the_epoch_holds_the_extra_share(tree3, tmp_path):
    from hemaedge.train.finetune import _make_train_sequence

    cfg = tiny_config(tree3, tmp_path / "o", extra_share=0.25, normalize="none")
    y = np.repeat([0, 1, 2], 12)
    x = np.zeros((36, 32, 32, 3), np.uint8)
    extra = (np.full((6, 32, 32, 3), 200, np.uint8), np.array([0, 0, 0, 0, 1, 2]))
    seq = _make_train_sequence(x, y, 3, cfg, sampling.class_weights(y, 3), 0, extra=extra)
    assert len(seq.order) == 36 + 12 and (seq.order >= 36).sum() == 12
    xb, yb = seq[0]
    assert xb.shape[1:] == (32, 32, 3) and yb.shape[1] == 3


def test_a_second_microscope_is_trained_on_and_shares_the_epoch_choice(tree3, tmp_path):
    from hemaedge.train.finetune import FinetuneError, finetune

    cells = _extra_tree(tree3, tmp_path / "lab-train", "test", 4)
    held = _extra_tree(tree3, tmp_path / "lab-val", "val", 3)
    quiet = dict(log=lambda *_: None)
    cfg = tiny_config(tree3, tmp_path / "md", epochs=3, bootstrap=0, extra_cells=(str(cells),),
                      extra_val=(str(held),))
    result = finetune(cfg, **quiet)
    with open(Path(cfg.out) / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        assert float(r["score"]) == pytest.approx((float(r["val_accuracy"]) + float(r["extra_val_accuracy"])) / 2,
                                                  abs=1e-5)
    best = json.loads((Path(cfg.out) / "best.json").read_text())
    scores = [float(r["score"]) for r in rows]
    assert best["epoch"] == 1 + int(np.argmax(scores))  # first of equals: later ones must beat it
    assert best["extra_cells"][0]["per_class"] == {c: 4 for c in ("granulocyte", "lymphoid", "thrombocyte")}
    assert result["extra_val"]["n"] == 9 and result["extra_val"]["paths"] == [str(held)]
    with pytest.raises(FinetuneError, match="different settings.*extra_share"):
        finetune(tiny_config(tree3, tmp_path / "md", epochs=4, bootstrap=0, extra_cells=(str(cells),),
                             extra_val=(str(held),), extra_share=0.3), resume=True, **quiet)


def test_cli_refuses_a_missing_extra_folder(tree3, tmp_path):
    from click.testing import CliRunner

    from hemaedge.cli import main

    r = CliRunner().invoke(main, ["train", "finetune", "--data", str(tree3), "--out", str(tmp_path / "o"),
                                  "--backbone", "smallcnn", "--weights", "none", "--size", "32",
                                  "--extra-cells", str(tmp_path / "no-lab")])
    assert r.exit_code == 2 and "Error:" in r.output and "--extra-cells" in r.output and "no-lab" in r.output
    assert not (tmp_path / "o" / "state.json").exists()


def test_the_bundle_manifest_says_which_other_microscopes_trained_the_model():
    from hemaedge.export.bundle_writer import confidence_sections

    sources = [{"path": "/runs/lab1", "kind": "run", "cells": 192, "per_class": {"neutrophil": 113}}]
    side = {"output": {"temperature": 0.7}, "ood": {"method": "msp"}, "extra_cells": sources}
    out, sections = confidence_sections(side, {"activation": "softmax"})
    assert out["temperature"] == 0.7 and sections["extra_cells"] == sources
    assert "extra_cells" not in confidence_sections({"ood": {"method": "msp"}}, {})[1]
