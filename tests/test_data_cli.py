"""`hemaedge data ...` through click's CliRunner, as a user would call it."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

import hemaedge.cli
from hemaedge.cli import main

from data_helpers import make_npz, make_split_tree

TRAIN_PER_CLASS = [852, 2181, 1085, 2026, 849, 993, 2330, 1643]


def run(*args):
    return CliRunner().invoke(main, ["data", *map(str, args)])


@pytest.mark.parametrize("which", ["tree", "npz"])
def test_info_reports_the_official_counts(which, bloodmnist128, bloodmnist28_npz):
    path = bloodmnist128 if which == "tree" else bloodmnist28_npz
    res = run("info", path)
    assert res.exit_code == 0, res.output
    total = [ln for ln in res.output.splitlines() if ln.startswith("total")][0]
    assert total.split() == ["total", "11,959", "1,712", "3,421"]
    basophil = [ln for ln in res.output.splitlines() if ln.startswith("basophil")][0]
    assert basophil.split() == ["basophil", "852", "122", "244"]
    assert ("128x128" if which == "tree" else "28x28") in res.output and "RGB" in res.output

    js = run("info", path, "--json")
    summary = json.loads(js.output)
    assert summary["splits"]["train"]["per_class"] == TRAIN_PER_CLASS
    assert [summary["splits"][s]["count"] for s in ("train", "val", "test")] == [11959, 1712, 3421]


def test_verify_good_data_exits_0(bloodmnist28_npz):
    res = run("verify", bloodmnist28_npz)
    assert res.exit_code == 0, res.output
    assert "md5 7053d0359d879ad8a5505303e11de1dc matches" in res.output and "OK" in res.output


def test_verify_broken_tree_exits_1_and_lists_problems(tmp_path, bloodmnist128):
    root = make_split_tree(tmp_path / "t", bloodmnist128)
    victim = sorted((root / "val" / "platelet").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:-300])
    shutil.rmtree(root / "test")
    res = run("verify", root)
    assert res.exit_code == 1
    assert "2 problem(s)" in res.output
    assert f"{victim}: truncated JPEG" in res.output and "test: missing split folder" in res.output
    js = json.loads(run("verify", root, "--json").output)
    assert js["ok"] is False and len(js["problems"]) == 2 and js["checked"] == 18


@pytest.mark.parametrize("args", [["info", "/nonexistent/data"], ["verify", "/nonexistent/data"],
                                  ["calibration", "--data", "/nonexistent/data", "--out", "x"]])
def test_missing_path_is_a_user_error(args):
    res = run(*args)
    assert res.exit_code == 2 and "Error: /nonexistent/data: no such file or folder" in res.output
    assert "Traceback" not in res.output


def test_bad_npz_is_a_user_error_naming_the_file(tmp_path):
    import numpy as np

    path = make_npz(tmp_path / "odd.npz", train_labels=np.zeros((11, 1), np.uint8))
    res = run("info", path)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"Error: {path}: 'train_images' has 12 images but 'train_labels' has 11 labels" in res.output


def test_calibration_command_is_deterministic_and_guarded(tmp_path, bloodmnist128):
    src = make_split_tree(tmp_path / "src", bloodmnist128, per_class=5)
    out = tmp_path / "calib"
    res = run("calibration", "--data", src, "--out", out, "--sample-per-class", 2)
    assert res.exit_code == 0, res.output
    first = (out / "manifest.csv").read_text()
    assert len(first.splitlines()) == 1 + 3 * 2 and "--sample-per-class 2" in (out / "README.md").read_text()
    again = run("calibration", "--data", src, "--out", out, "--sample-per-class", 2)
    assert again.exit_code == 2 and "--force" in again.output
    forced = run("calibration", "--data", src, "--out", out, "--sample-per-class", 2, "--force")
    assert forced.exit_code == 0 and (out / "manifest.csv").read_text() == first
    other_seed = run("calibration", "--data", src, "--out", tmp_path / "c2", "--sample-per-class", 2, "--seed", 7)
    assert other_seed.exit_code == 0 and (tmp_path / "c2" / "manifest.csv").read_text() != first


def test_calibration_never_replaces_a_foreign_folder(tmp_path, bloodmnist128):
    src = make_split_tree(tmp_path / "src", bloodmnist128)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    res = run("calibration", "--data", src, "--out", precious, "--force")
    assert res.exit_code == 2 and "not a calibration folder" in res.output
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_data_group_without_its_extra_says_what_to_install(monkeypatch):
    monkeypatch.setattr(hemaedge.cli, "missing_modules", lambda modules: ["sklearn"])
    res = CliRunner().invoke(main, ["data", "info", "anything"])
    assert res.exit_code == 2
    assert "needs the 'train' extra" in res.output and "pip install 'hemaedge[train]'" in res.output
    assert "Traceback" not in res.output


def test_every_data_command_has_help():
    for cmd in ("info", "verify", "calibration", "fetch"):
        res = CliRunner().invoke(main, ["data", cmd, "--help"])
        assert res.exit_code == 0, res.output
        assert f"data {cmd} [OPTIONS]" in res.output and len(res.output.splitlines()) > 5
