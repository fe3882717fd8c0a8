"""benchmarks/tools/speed_profile: the per-call and per-function profile table is written from a
real (tiny) run on the sample frames, with the packaged default bundle."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from hemaedge.benchmarks.tools import speed_profile

REPO = Path(__file__).resolve().parents[1]


def test_profile_table_names_every_preprocessing_step_and_the_hot_functions(tmp_path):
    res = CliRunner().invoke(speed_profile.main, ["--source", str(REPO / "samples" / "bccd"), "--frames", "3",
                                                  "--repeat", "1", "--top", "5", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "speed_profile.json").read_text())
    steps = r["per_cell"]["steps"]
    assert r["per_cell"]["crops"] > 0 and r["per_cell"]["normalize"]  # the default declares colour normalisation
    for name in ("resize", "colour_anchors", "normalize_colour", "clahe", "apply_preprocess", "prepare_batch_frame",
                 "model_call"):
        assert steps[name]["p50_ms"] > 0, name
    # the parts cannot cost more than the whole they are part of (same crops, same rounds)
    assert steps["colour_anchors"]["p50_ms"] < steps["normalize_colour"]["p50_ms"] < steps["apply_preprocess"]["p50_ms"]
    for mode in ("one slide", "image folder"):
        top = r["per_function"][mode]["top"]
        assert len(top) == 5 and top[0]["own_ms_per_frame"] >= top[-1]["own_ms_per_frame"]
    md = (tmp_path / "speed_profile.md").read_text()
    assert "Command: `python -m hemaedge.benchmarks.tools.speed_profile" in md and "load average" in md
