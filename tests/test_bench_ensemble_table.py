"""The ensemble table (issue #19) from a real `train ensemble` folder of two tiny real members."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("keras")

from click.testing import CliRunner  # noqa: E402
from finetune_helpers import tiny_runs, tree3  # noqa: E402,F401

from hemaedge.benchmarks.tools import ensemble_table  # noqa: E402
from hemaedge.train.ensemble import run_ensemble  # noqa: E402


def test_table_rows_goal_and_missing_device_figures(tiny_runs, tree3, tmp_path):
    members = [Path(r.out) / "best.keras" for r in tiny_runs]
    work, results = tmp_path / "work", tmp_path / "results"
    results.mkdir()
    run_ensemble(members, str(tree3), work / "all-simplex", grid="simplex", step=0.25, bootstrap=20, log=lambda *_: None)
    run_ensemble(members, str(tree3), work / "pair1-paper", grid="paper", bootstrap=20, log=lambda *_: None)
    out = tmp_path / "table"
    res = CliRunner().invoke(ensemble_table.main, ["--work", str(work), "--results", str(results), "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.with_name("table.json").read_text())
    names = [r["row"] for r in doc["rows"]]
    assert names == ["member0", "member1", "all-simplex", "pair1-paper"]
    ens = json.loads((work / "all-simplex" / "metrics.json").read_text())
    g = doc["goal"]
    best = max(ens["test"]["member0"]["accuracy"], ens["test"]["member1"]["accuracy"])
    assert g["gain_pt_float"] == round(100 * (ens["test"]["ensemble"]["accuracy"] - best), 2)
    assert "gain_pt_int8" not in g and g["met"] is False  # no int8 figures measured: never "met"
    md = out.with_name("table.md").read_text()
    assert "int8 not measured" in md and "| pair1-paper |" in md


def test_no_ensemble_folder_is_one_error_line(tmp_path):
    res = CliRunner().invoke(ensemble_table.main, ["--work", str(tmp_path), "--results", str(tmp_path),
                                                   "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "ensemble_check.sh" in res.output


def test_int8_and_flips_gains_read_from_each_bundles_tables(tiny_runs, tree3, tmp_path):
    members = [Path(r.out) / "best.keras" for r in tiny_runs]
    work, results = tmp_path / "work", tmp_path / "results"
    run_ensemble(members, str(tree3), work / "all-simplex", grid="simplex", step=0.25, bootstrap=20, log=lambda *_: None)
    # what bundle_calibration and views_check write per int8 bundle (their json shapes)
    figures = {"member0-int8": (0.90, 0.91), "member1-int8": (0.88, 0.93), "ensemble-int8": (0.92, 0.95)}
    for tag, (one, flips) in figures.items():
        (results / tag).mkdir(parents=True)
        (results / tag / f"calibration_{tag}.json").write_text(json.dumps({"test": {"accuracy": one}}))
        (results / tag / f"views_check_{tag}.json").write_text(
            json.dumps({"views": {"flips": {"test": {"accuracy": flips}}}}))
    out = tmp_path / "table"
    res = CliRunner().invoke(ensemble_table.main, ["--work", str(work), "--results", str(results), "--out", str(out)])
    assert res.exit_code == 0, res.output
    g = json.loads(out.with_name("table.json").read_text())["goal"]
    assert g["gain_pt_int8"] == 2.0 and g["gain_pt_int8_flips"] == 2.0  # against the best member of each column
    assert g["best_member_int8_flips_test"] == 0.93
    assert "With 4 flipped views averaged" in out.with_name("table.md").read_text()
