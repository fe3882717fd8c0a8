"""`hemaedge train finetune` refuses, before any training, settings that cannot train a classifier."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hemaedge.cli import main

pytest.importorskip("keras")


def finetune(*args):
    return CliRunner().invoke(main, ["train", "finetune", *map(str, args)])


@pytest.mark.parametrize("opt, value", [("--lr", "-1"), ("--lr", "0"), ("--lr", "nan"), ("--weight-decay", "-1"),
                                        ("--eta-min", "inf"), ("--clahe-clip", "0"), ("--mixup-alpha", "nan"),
                                        ("--dropout", "nan"), ("--focal-gamma", "-1"), ("--focal-gamma", "nan"),
                                        ("--loss", "hinge")])
def test_non_positive_or_non_finite_hyper_parameters_are_refused(tmp_path, opt, value):
    res = finetune("--data", tmp_path, "--out", tmp_path / "o", opt, value)
    assert res.exit_code == 2 and "Invalid value" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_the_config_checks_its_own_values():
    from hemaedge.train.finetune import FinetuneConfig, FinetuneError

    for kw in ({"lr": -1.0}, {"lr": float("nan")}, {"weight_decay": -0.1}, {"eta_min": 1.0}, {"clahe_clip": 0.0}):
        with pytest.raises(FinetuneError, match="must be a finite number"):
            FinetuneConfig(data="d", out="o", **kw).validate()
    FinetuneConfig(data="d", out="o").validate()


def test_a_one_class_set_is_refused_before_training(bloodmnist128, tmp_path):
    """Issue 16: a one-class set trained for its epochs and then crashed at evaluation."""
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        dst = tmp_path / "one" / split / "lymphocyte"
        dst.mkdir(parents=True)
        for f in sorted((bloodmnist128 / split / "lymphocyte").glob("*.jpg"))[:n]:
            shutil.copy(f, dst / f.name)
    out = tmp_path / "o"
    res = finetune("--data", tmp_path / "one", "--out", out, "--backbone", "smallcnn", "--weights", "none",
                   "--size", 32, "--epochs", 1, "--bootstrap", 0)
    assert res.exit_code == 2, res.output
    assert "at least two" in res.output and "Traceback" not in res.output
    assert not (Path(out) / "history.csv").exists() and not (Path(out) / "last.keras").exists()


def test_one_lab_pass_reaches_the_input_contract_and_the_help():
    """The training pixels are the device's: the flag goes into the contract the manifest records."""
    from hemaedge.train.finetune import FinetuneConfig

    ref = {"method": "lab-anchors", "background": [234.0, 133.0, 143.0], "cells": [183.0, 142.0, 133.0]}
    assert FinetuneConfig(data="d", out="o", preprocess="clahe", one_lab_pass=True).contract(ref).one_lab_pass
    assert not FinetuneConfig(data="d", out="o", preprocess="clahe").contract(ref).one_lab_pass
    assert "--one-lab-pass" in finetune("--help").output


def test_the_recorded_command_runs_as_written(tmp_path, monkeypatch):
    """metrics.json's command spells each boolean option as the CLI takes it (`--two-lab-passes`, not a
    `--no-one-lab-pass` that click refuses), so a lost run can be remade from its table."""
    import shlex

    import hemaedge.train.finetune as ft

    seen = []
    monkeypatch.setattr(ft, "finetune", lambda cfg, resume=False, command=None: seen.append(command))
    assert finetune("--data", tmp_path, "--out", tmp_path / "o", "--no-weighted-sampling").exit_code == 0
    assert "--two-lab-passes" in seen[0] and "--no-one-lab-pass" not in seen[0] and "--no-weighted-sampling" in seen[0]
    again = finetune(*shlex.split(seen[0])[3:])
    assert again.exit_code == 0, again.output
    assert seen[1] == seen[0]
