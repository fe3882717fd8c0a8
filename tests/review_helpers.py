"""Helpers for the review, report and crop tests: one real run of the packaged default bundle on
samples/ with every crop saved (made once per session), and fresh copies of it for each test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"

_CACHE: dict = {}


def edge_run(out: Path, *extra) -> Path:
    from hemaedge.cli import main

    res = CliRunner().invoke(main, ["edge", "run", "--source", str(SAMPLES), "--out", str(out), "-q", *extra],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def sample_run_master(tmp_path_factory) -> Path:
    """`hemaedge edge run --source samples --save-crops all` with the packaged default bundle (do not modify)."""
    if "run" not in _CACHE:
        _CACHE["run"] = edge_run(tmp_path_factory.mktemp("sample_run") / "run", "--save-crops", "all")
    return _CACHE["run"]


@pytest.fixture
def sample_run(sample_run_master, tmp_path) -> Path:
    """A private copy of the sample run, free to correct."""
    return Path(shutil.copytree(sample_run_master, tmp_path / "run"))


# The live server and the browser launcher live with the review package (the benchmark uses them too).
from hemaedge.review.browser import CHROMIUM, LiveServer, launch_chromium  # noqa: E402,F401
