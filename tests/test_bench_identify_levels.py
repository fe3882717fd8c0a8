"""benchmarks/tools/identify_levels: the platelet levels replayed on recorded pipeline outputs."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from hemaedge.benchmarks.tools.identify_levels import bccd_rates, choose_confirm, kinds, main
from hemaedge.edge.identify import PLATELET_CONFIRM_ABOVE, PLATELET_KIND_ABOVE

BLOOD = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte", "neutrophil",
         "platelet"]


def _det(p_platelet, ambiguous=True, side=1.5, box=(0, 0, 40, 40)):
    prob = np.full(8, (1 - p_platelet) / 7, np.float32)
    prob[7] = p_platelet
    return {"kind": "wbc" if ambiguous else "platelet", "ambiguous": ambiguous, "box": box, "side_rbc": side,
            "on_red_cell": False, "at_edge": False, "prob": prob}


def test_the_replayed_decisions_follow_each_level():
    lymph_like = _det(0.993)  # the BCCD val lymphocyte the default-v6 bundle scores 0.993 platelet
    assert kinds([lymph_like], BLOOD, 0.99) == ["platelet"] and kinds([lymph_like], BLOOD, 0.995) == ["wbc"]
    assert kinds([_det(0.999, side=2.0)], BLOOD, 0.99) == ["wbc"]  # too wide for a clump whatever it scores
    truth = {"Platelets": [(100, 100, 130, 130)], "WBC": []}
    weak = _det(0.55, ambiguous=False, box=(100, 100, 130, 130))
    at = lambda c: bccd_rates([([weak], truth)], BLOOD, c, PLATELET_KIND_ABOVE)["platelet"]  # noqa: E731
    assert at(0.5)["tp"] == 1 and at(0.6)["tp"] == 0 and at(0.6)["pred"] == 0


def test_the_table_on_real_frames_marks_the_levels_in_use(bccd, pbc_raw_val, tmp_path):
    r = CliRunner().invoke(main, ["--bccd", str(bccd), "--pbc", str(pbc_raw_val), "--first", "3", "--threads", "1",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "identify_levels.json").read_text())
    assert data["frames"] == {"train": 3, "val": 3, "test": 3} and data["pbc_fields"] == 3
    assert data["in_use"] == {"confirm": PLATELET_CONFIRM_ABOVE, "clump": PLATELET_KIND_ABOVE}
    md = (tmp_path / "identify_levels.md").read_text()
    assert f"| {PLATELET_CONFIRM_ABOVE} (in use) |" in md and f"| {PLATELET_KIND_ABOVE} (in use) |" in md
    # a higher confirmation level never counts more platelets
    counted = [row["choose"]["platelet"]["pred"] for row in data["confirm"]]
    assert data["chosen"]["confirm"] in [row["level"] for row in data["confirm"]]
    assert counted == sorted(counted, reverse=True)


def test_the_confirmation_level_is_the_one_with_the_best_worse_side():
    row = lambda level, r, p: {"level": level, "choose": {"platelet": {"recall": r, "precision": p}}}  # noqa: E731
    rows = [row(0.4, 0.83, 0.80), row(0.5, 0.82, 0.805), row(0.6, 0.81, 0.82), row(0.7, 0.78, 0.83)]
    assert choose_confirm(rows) == 0.6  # min 0.81 beats 0.805 and 0.80, though its recall is lower
    assert choose_confirm([row(0.4, 0.8, 0.8), row(0.5, 0.8, 0.9)]) == 0.4  # a tie: the lower level
    assert choose_confirm([row(0.4, None, None), row(0.5, 0.5, 0.5)]) == 0.5  # nothing counted is the worst
