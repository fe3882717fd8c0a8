"""The device status file (edge/status_file.py): a Prometheus textfile written by `edge run`."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from hemaedge.edge.status_file import STATUS_NAME, StatusFile, read_status, render
from store_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "src" / "hemaedge" / "models" / "default"
FRAMES = REPO / "samples" / "bccd"


def _families(text: str) -> dict:
    """Parse with the reference parser (prometheus_client): the file must be valid exposition format."""
    parser = pytest.importorskip("prometheus_client.parser")
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def test_edge_run_of_the_active_model_writes_the_store_status_file(tmp_path):
    store = tmp_path / "store"
    env = {"HEMAEDGE_STORE": str(store)}
    r = run_cli("edge", "install", DEFAULT_BUNDLE, env_extra=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("edge", "run", "--source", FRAMES, "--out", tmp_path / "run", "-q", env_extra=env, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    text = (store / STATUS_NAME).read_text()
    fams = _families(text)
    digest = "sha256:" + hashlib.sha256((DEFAULT_BUNDLE / "manifest.json").read_bytes()).hexdigest()
    info = fams["hemaedge_model_info"].samples[0].labels
    assert info["digest"] == digest and info["backend"] == "tflite"
    assert info["model"] == summary["model"]["name"] and info["version"].endswith("-1")
    # every sample names the model it came from
    assert all(s.labels["digest"] == digest for f in fams.values() for s in f.samples)

    status = read_status(store / STATUS_NAME)
    assert status["run_active"] == 0 and status["frames_total"] == summary["frames"] == 3
    assert status["cells_total"] == summary["cells"] > 0
    assert status["fps"] == pytest.approx(summary["fps"], rel=1e-3)
    assert status["flagged_ratio"] == pytest.approx(summary["flagged_for_review"] / summary["cells"], abs=1e-6)
    for stage, p in summary["latency_ms"].items():  # 3 frames: the live window holds the whole run
        assert status["stage_p50_ms"][stage] == pytest.approx(p["p50"], abs=2e-3)
    with open(tmp_path / "run" / "cells.csv", newline="") as fh:  # the run's own per-cell log
        labels = [row["class"] for row in csv.DictReader(fh)]
    assert len(labels) == summary["cells"]
    assert status["unidentified_ratio"] == pytest.approx(labels.count("unidentified") / len(labels), abs=1e-6)
    assert not list(store.glob(".status.prom.*"))  # atomic writes leave no temporary files


def test_explicit_status_file_and_none_without_a_store_model(tmp_path):
    env = {"HEMAEDGE_STORE": str(tmp_path / "empty-store")}
    frame = tmp_path / "frames"
    frame.mkdir()
    shutil.copy(FRAMES / "BloodImage_00007.jpg", frame)
    r = run_cli("edge", "run", "--bundle", DEFAULT_BUNDLE, "--source", frame, "--out", tmp_path / "a", "-q",
                env_extra=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "empty-store" / STATUS_NAME).exists()  # not the store's model: no default file
    target = tmp_path / "textfile" / "hemaedge.prom"
    r = run_cli("edge", "run", "--bundle", DEFAULT_BUNDLE, "--source", frame, "--out", tmp_path / "b", "-q",
                "--status-file", target, env_extra=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert read_status(target)["frames_total"] == 1
    # a status file that cannot be written is a clear error before any frame is processed
    (tmp_path / "blocker").write_text("a file, not a folder")
    r = run_cli("edge", "run", "--bundle", DEFAULT_BUNDLE, "--source", frame, "--out", tmp_path / "c", "-q",
                "--status-file", tmp_path / "blocker" / "x.prom", env_extra=env, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("Error: status file")
    assert not (tmp_path / "c" / "summary.json").exists()


def _recorder(frames, cells, flagged, unidentified=0):
    stages = {s: [float(i + 1) for i in range(frames)] for s in ("capture", "segment", "preprocess",
                                                                   "inference", "total")}
    return SimpleNamespace(frames=frames, cells=cells, flagged={"a": flagged},
                           counts={"a": cells - unidentified, "unidentified": unidentified}, stage_ms=stages)


def test_rewritten_every_n_frames_and_final_state(tmp_path):
    path = tmp_path / "s.prom"
    model = {"name": 'odd "name"\\x', "digest": "sha256:ab", "backend": "onnx", "version": "m-2"}
    status = StatusFile(path, model, every=3)
    first = read_status(path)
    assert first["run_active"] == 1 and first["frames_total"] == 0 and first["model"]["model"] == model["name"]
    status.frame_done(_recorder(1, 4, 1))
    status.frame_done(_recorder(2, 8, 2))
    assert read_status(path)["frames_total"] == 0  # not yet: every 3rd frame
    status.frame_done(_recorder(3, 10, 5, unidentified=2))
    mid = read_status(path)
    assert mid["frames_total"] == 3 and mid["flagged_ratio"] == 0.5 and mid["unidentified_ratio"] == 0.2
    assert mid["stage_p50_ms"]["inference"] == 2.0 and mid["run_active"] == 1
    status.finish(_recorder(4, 10, 5), {"fps": 2.5, "frames_skipped": 1})
    end = read_status(path)
    assert end["run_active"] == 0 and end["fps"] == 2.5 and end["frames_skipped_total"] == 1
    fams = _families(path.read_text())
    assert fams["hemaedge_model_info"].samples[0].labels["model"] == model["name"]  # escaping round-trips


def test_render_marks_missing_latency_as_nan():
    text = render({"run_active": 1, "frames_total": 0, "cells_total": 0, "frames_skipped_total": 0, "fps": 0.0,
                   "flagged_ratio": 0.0, "unidentified_ratio": 0.0, "status_updated_timestamp_seconds": 1.0,
                   "stage_p50_ms": {"total": None}}, {"name": "m"})
    assert 'stage="total",quantile="0.5"} NaN' in text
