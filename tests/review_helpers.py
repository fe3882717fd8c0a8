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


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking"]


class LiveServer:
    """The review app served by a real uvicorn on a free localhost port, in a thread."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))

    def __enter__(self):
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("review server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def launch_chromium(playwright):
    """Debian's Chromium, headless (installed by .ci/run; the tests skip where it is missing)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
