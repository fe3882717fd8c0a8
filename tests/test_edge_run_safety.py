"""`hemaedge edge run` as a clumsy user or a failing device would drive it: nothing ends a run
in a traceback, no earlier result is overwritten, a kill loses at most the last interval.

Each test reproduces one finding of the reliability issue (16) with real frames and real models.
"""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_helpers import CLASSES, make_bundle, make_onnx
from hemaedge.cli import main
from hemaedge.edge.errors import OutputError
from hemaedge.edge.run_folder import default_run_dir, prepare_run_folder

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SIZE = 32


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    return make_bundle(tmp, make_onnx(tmp / "tiny.onnx", SIZE), "onnx", SIZE)


def edge_run(*args, root_opts=()):
    return CliRunner().invoke(main, [*root_opts, "edge", "run", *map(str, args)])


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _start(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "hemaedge.cli", "edge", "run", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(cond, proc, timeout=60.0, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- zero frames, any one frame


def test_a_run_with_zero_readable_frames_ends_with_a_summary(bundle, tmp_path):
    """#3: every file unreadable -> no TypeError in the summary printer; summary and counts written."""
    src = tmp_path / "x"
    src.mkdir()
    (src / "a.jpg").write_text("x")
    out = tmp_path / "o"
    res = edge_run("-q", "--bundle", bundle, "--source", src, "--out", out)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "no frame was processed" in res.output
    s = summary_of(out)
    assert s["frames"] == 0 and s["frames_skipped"] == 1 and s["complete"] is True
    assert s["time_to_first_result_s"] is None and s["skip_counts"] == {"unreadable frame": 1}
    with open(out / "counts.csv") as fh:  # the differential's rows, one per white-cell class first
        rows = [r for r in csv.DictReader(fh) if r["section"] == "wbc differential"]
        assert [r["class"] for r in rows][:len(CLASSES)] == CLASSES


def test_black_frame_with_the_default_bundle_is_exit_0_with_summary_and_counts(tmp_path):
    """#2: a lamp-off frame (all black) must not end the run (the red-cell ruler used to overflow)."""
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((480, 640, 3), np.uint8))
    out = tmp_path / "o"
    res = edge_run("-q", "--source", black, "--out", out)
    assert res.exit_code == 0, res.output
    s = summary_of(out)
    assert (out / "counts.csv").exists() and s["complete"] is True
    assert s["frames"] + s["frames_skipped"] == 1  # recorded (no cells), or skipped with its reason


class FailsOnSomeFrames:
    """A real classifier that raises on chosen frames, the way a bug deep in segmentation would."""

    def __init__(self, real, bad_names, exc=RuntimeError("boom")):
        self.real, self.bad, self.exc = real, set(bad_names), exc
        self._name = None

    def __getattr__(self, name):
        return getattr(self.real, name)

    def process(self, image):
        if self._name in self.bad:
            raise self.exc
        return self.real.process(image)


def _pipeline_parts(bundle_path, out):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.recorder import Recorder

    b = load_bundle(bundle_path)
    return CellClassifier(b, load_backend(b, threads=1)), Recorder(out, b.classes)


def test_any_exception_in_one_frame_is_skipped_and_counted_never_the_end(bundle, tmp_path):
    """#2 (robustness): whatever one frame raises, the frame is skipped, the reason counted."""
    from hemaedge.edge.runloop import FrameObserver, run
    from hemaedge.edge.sources import open_source

    real, recorder = _pipeline_parts(bundle, tmp_path / "o")
    clf = FailsOnSomeFrames(real, {"val_00003.jpg", "val_00009.jpg"}, OverflowError("cannot convert float infinity"))
    src = open_source(str(SAMPLES / "pbc"))

    def named(frames):
        for f in frames:
            clf._name = f.name
            yield f

    class Broken(FrameObserver):
        name = "status file"

        def on_frame(self, frame, result, row):
            if frame.name == "val_00010.jpg":
                raise KeyError("no such field")

    s = run(src, clf, recorder, frames_iter=named(iter(src)), observers=[Broken()])
    assert s["frames"] == 3 and s["frames_skipped"] == 3  # 2 failed frames, 1 observer failure
    assert s["skip_counts"] == {"processing error (OverflowError)": 2, "status file error (KeyError)": 1}
    assert any("val_00003.jpg" in r and "OverflowError" in r for r in s["skip_reasons"])
    assert len(lines(tmp_path / "o" / "frames.jsonl")) == 3 and s["end_reason"] == "end of source"


# ----------------------------------------------------------------------------- output folders


def test_a_non_empty_out_is_refused_and_left_untouched(bundle, tmp_path):
    """#4: reusing --out used to truncate the earlier results silently."""
    out = tmp_path / "o"
    one = SAMPLES / "pbc" / "val_00000.jpg"
    assert edge_run("-q", "--bundle", bundle, "--source", one, "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = edge_run("-q", "--bundle", bundle, "--source", SAMPLES / "pbc", "--out", out)
    assert res.exit_code == 2 and res.output.count("Error:") == 1 and "--force" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_force_replaces_a_run_folder_and_names_what_it_removed(bundle, tmp_path):
    out = tmp_path / "o"
    assert edge_run("-q", "--bundle", bundle, "--source", SAMPLES / "pbc", "--out", out).exit_code == 0
    res = edge_run("-q", "--force", "--bundle", bundle, "--source", SAMPLES / "pbc" / "val_00000.jpg", "--out", out)
    assert res.exit_code == 0, res.output
    assert f"removed {out / 'summary.json'}" in res.output and f"removed {out / 'frames.jsonl'}" in res.output
    assert summary_of(out)["frames"] == 1 and len(lines(out / "frames.jsonl")) == 1


def test_force_never_empties_a_folder_that_is_not_a_run(bundle, tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    res = edge_run("-q", "--force", "--bundle", bundle, "--source", SAMPLES / "pbc", "--out", tmp_path)
    assert res.exit_code == 2 and "not a run folder" in res.output
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_append_adds_rows_and_keeps_the_earlier_summary(bundle, tmp_path):
    out = tmp_path / "o"
    assert edge_run("-q", "--bundle", bundle, "--source", SAMPLES / "pbc", "--out", out).exit_code == 0
    first = summary_of(out)
    (out / ".summary.json.abc.tmp").write_text("{half")  # a kill during an atomic write left this
    res = edge_run("-q", "--append", "--bundle", bundle, "--source", SAMPLES / "bccd", "--out", out)
    assert res.exit_code == 0, res.output
    assert len(lines(out / "frames.jsonl")) == 5 + 3
    with open(out / "frames.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 8  # one header, rows of both runs
    assert json.loads((out / "summary.before-1.json").read_text()) == first
    assert (out / "counts.before-1.csv").exists()
    assert summary_of(out)["frames"] == 3 and summary_of(out)["output"]["mode"] == "append"
    assert not list(out.glob(".*.tmp"))


def test_annotated_frames_never_replace_earlier_ones_silently(bundle, tmp_path):
    one = SAMPLES / "pbc" / "val_00000.jpg"
    ann = tmp_path / "ann"
    assert edge_run("-q", "--bundle", bundle, "--source", one, "--out", tmp_path / "a", "--annotate", ann).exit_code == 0
    first = {p.name: p.stat().st_mtime_ns for p in ann.iterdir()}
    res = edge_run("-q", "--bundle", bundle, "--source", one, "--out", tmp_path / "b", "--annotate", ann)
    assert res.exit_code == 2 and "already holds files" in res.output
    assert {p.name: p.stat().st_mtime_ns for p in ann.iterdir()} == first and not (tmp_path / "b").exists()


def test_append_refuses_logs_with_other_columns(bundle, tmp_path):
    out = tmp_path / "o"
    assert edge_run("-q", "--bundle", bundle, "--source", SAMPLES / "pbc" / "val_00000.jpg", "--out", out).exit_code == 0
    (out / "frames.csv").write_text("frame,name,old_column\n0,a.jpg,1\n")
    res = edge_run("-q", "--append", "--bundle", bundle, "--source", SAMPLES / "pbc", "--out", out)
    assert res.exit_code == 2 and "other columns" in res.output
    assert (out / "frames.csv").read_text() == "frame,name,old_column\n0,a.jpg,1\n"
    assert (out / "summary.json").exists() and not (out / "summary.before-1.json").exists()  # nothing moved


def test_default_run_folders_are_unique_within_one_second(tmp_path):
    """#4: two runs started in the same second shared runs/edge-<second>."""
    import datetime as dt

    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    made = [default_run_dir(tmp_path, now=now) for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() and not any(p.iterdir()) for p in made)
    # and in parallel: every process gets its own folder (the name is claimed by an exclusive mkdir)
    code = ("import datetime as dt, sys; from pathlib import Path; from hemaedge.edge.run_folder import "
            "default_run_dir; print(default_run_dir(Path(sys.argv[1]), now=dt.datetime(2026, 1, 2, 3, 4, 6)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    names = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert len(set(names)) == 4


def test_run_folder_rules(tmp_path):
    assert prepare_run_folder(tmp_path / "new").mode == "new"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        prepare_run_folder(f)


def test_a_kill_loses_at_most_the_last_summary_interval(bundle, tmp_path):
    """#4: summary.json / counts.csv are rewritten during the run, so SIGKILL keeps a recent one."""
    out = tmp_path / "o"
    proc = _start(["-q", "--bundle", bundle, "--source", SAMPLES / "pbc", "--loop", "--out", out,
                   "--summary-every-frames", 4, "--summary-every", 0])
    try:
        _wait_for(lambda: (out / "frames.jsonl").exists() and
                  (out / "frames.jsonl").read_text().count("\n") >= 13, proc, what="13 frames")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    s = summary_of(out)
    logged = (out / "frames.jsonl").read_text().count("\n")
    assert s["complete"] is False and s["end_reason"] == "running"
    assert s["frames"] >= 12 and logged - s["frames"] <= 4 + 1
    with open(out / "counts.csv") as fh:  # the periodic counts agree with the periodic summary
        rows = [r for r in csv.DictReader(fh) if r["section"] == "wbc differential" and r["class"] in CLASSES]
        assert sum(int(r["count"]) for r in rows) == s["differential"]["white_cells_classified"]


# ----------------------------------------------------------------------------- read errors, full disk


def test_frames_that_vanish_or_become_unreadable_mid_run_are_skipped(tmp_path, monkeypatch):
    """#6: FileNotFoundError / PermissionError on one frame used to abort the run."""
    import shutil

    from hemaedge.edge import sources

    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        shutil.copy(SAMPLES / "pbc" / "val_00000.jpg", tmp_path / name)
    src = sources.ImageSource(str(tmp_path))
    (tmp_path / "b.jpg").unlink()  # gone after the folder was listed
    real = sources.read_image_rgb

    def no_permission(path, *args, **kwargs):  # (the source passes its input notes on)
        if Path(path).name == "c.jpg":  # root ignores chmod, so the OS error is raised here
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sources, "read_image_rgb", no_permission)
    assert [f.name for f in src] == ["a.jpg", "d.jpg"]
    assert src.skipped == 2
    assert "b.jpg: disappeared" in src.skip_reasons[0] and "c.jpg: is not readable" in src.skip_reasons[1]


def test_a_full_disk_ends_the_run_with_one_error_line(bundle, tmp_path):
    """#6: ENOSPC while writing the records: one clear Error line, exit 2, no traceback."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    out = tmp_path / "o"
    assert edge_run("-q", "--bundle", bundle, "--source", SAMPLES / "pbc" / "val_00000.jpg", "--out", out).exit_code == 0
    (out / "frames.jsonl").unlink()
    (out / "frames.jsonl").symlink_to("/dev/full")  # every write there fails with "No space left on device"
    res = edge_run("-q", "--append", "--bundle", bundle, "--source", SAMPLES / "pbc", "--out", out)
    assert res.exit_code == 2, res.output
    assert res.output.count("Error:") == 1 and "No space left on device" in res.output
    assert "Traceback" not in res.output


def test_an_unwritable_output_is_one_error_line(bundle, tmp_path):
    for out in ("/sys/hemaedge-run", tmp_path / "file"):
        if out == tmp_path / "file":
            out.write_text("x")
        elif not Path("/sys").is_dir():
            continue
        res = edge_run("-q", "--bundle", bundle, "--source", SAMPLES / "pbc", "--out", out)
        assert res.exit_code == 2 and res.output.count("Error:") == 1 and "Traceback" not in res.output, res.output


# ----------------------------------------------------------------------------- loops and limits


def test_loop_over_a_folder_with_no_readable_image_ends(tmp_path):
    """#7: used to spin at 100% CPU forever, ignoring --max-frames."""
    (tmp_path / "a.jpg").write_text("not an image")
    (tmp_path / "b.png").write_bytes(b"")
    out = tmp_path / "o"
    proc = _start(["-q", "--source", tmp_path, "--loop", "--out", out])
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    s = summary_of(out)
    assert s["frames"] == 0 and s["frames_skipped"] == 2 and "no readable image" in s["end_reason"]
    proc = _start(["-q", "--source", tmp_path, "--loop", "--out", tmp_path / "o2", "--max-frames", 7])
    assert proc.wait(timeout=120) == 0


def test_max_frames_counts_skipped_frames_too(bundle, tmp_path):
    import shutil

    shutil.copy(SAMPLES / "pbc" / "val_00000.jpg", tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_text("broken")
    res = edge_run("-q", "--bundle", bundle, "--source", tmp_path, "--loop", "--max-frames", 7,
                   "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    s = summary_of(tmp_path / "o")
    assert s["frames"] + s["frames_skipped"] == 7 and s["frames"] == 4


# ----------------------------------------------------------------------------- signals


class MJPEGServer:
    """An HTTP MJPEG camera (multipart/x-mixed-replace) that sends `n` frames and then stalls."""

    def __init__(self, n: int = 3):
        jpg = cv2.imencode(".jpg", cv2.imread(str(SAMPLES / "bccd" / "BloodImage_00007.jpg")))[1].tobytes()
        self.release = threading.Event()

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for _ in range(n):
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpg) + jpg + b"\r\n")
                    self.wfile.flush()
                    outer.release.wait(60)  # the stall
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def mjpeg():
    srv = MJPEGServer()
    yield srv
    srv.close()


def test_a_stalled_http_camera_is_a_failed_read_within_seconds(mjpeg):
    """Smaller: an MJPEG stream that stalls blocked ~30 s per read (FFmpeg's default timeout)."""
    from hemaedge.edge.sources import CameraSource

    cam = CameraSource(mjpeg.url, retries=0)
    t0 = time.monotonic()
    frames = list(cam)
    assert len(frames) == 3 and "stopped delivering" in cam.end_reason
    assert time.monotonic() - t0 < 10  # the read timeout (1 s) acts, not FFmpeg's 30 s


def test_sigterm_while_a_stream_stalls_acts_within_seconds(bundle, tmp_path, mjpeg):
    out = tmp_path / "o"
    proc = _start(["-q", "--bundle", bundle, "--source", mjpeg.url, "--out", out, "--camera-retries", 1000,
                   "--camera-backoff", 0.2])
    try:
        _wait_for(lambda: (out / "frames.jsonl").exists() and
                  (out / "frames.jsonl").read_text().count("\n") >= 3, proc, what="3 frames")
        time.sleep(0.5)  # now inside the stall
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert took < 5, took
    s = summary_of(out)
    assert s["end_reason"] == "terminated (SIGTERM)" and s["frames"] == 3


def test_sigterm_while_waiting_for_a_camera_ends_with_a_summary(bundle, tmp_path):
    """#3: a stop before the first frame (here: a camera that never opens) used to be a TypeError."""
    out = tmp_path / "o"
    proc = _start(["-q", "--bundle", bundle, "--source", "/dev/video97", "--out", out,
                   "--camera-retries", 1000, "--camera-backoff", 0.2])
    try:
        _wait_for(lambda: (out / "run.log").exists() and "source:" in (out / "run.log").read_text(), proc,
                  what="the run to start")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    s = summary_of(out)
    assert s["frames"] == 0 and s["end_reason"] == "terminated (SIGTERM) before the first frame"
    assert "no frame was processed" in stdout


def test_a_stop_requested_during_start_up_ends_before_the_first_frame(bundle, tmp_path):
    from hemaedge.edge.runloop import StopRequest, run
    from hemaedge.edge.sources import open_source

    clf, recorder = _pipeline_parts(bundle, tmp_path / "o")
    stop = StopRequest()
    stop.request(StopRequest.REASONS[signal.SIGINT])  # as the handler does while the model loads
    s = run(open_source(str(SAMPLES / "pbc")), clf, recorder, stop=stop)
    assert s["frames"] == 0 and s["end_reason"] == "interrupted (Ctrl-C) before the first frame"


# ----------------------------------------------------------------------------- options that make no sense


@pytest.mark.parametrize("args, says", [
    (["--review-threshold", "nan"], "not a finite number"),
    (["--fps", "inf"], "not a finite number"),
    (["--rbc-factor", "nan"], "not a finite number"),
    (["--source", ""], "frame source is empty"),
    (["--source", "   "], "frame source is empty"),
    (["--source", "picamera2:abc"], "picamera2:WIDTHxHEIGHT"),
    (["--annotate-video", "{tmp}"], "is a folder"),
    (["--annotate-video", "{tmp}/a.txt"], "suffixes"),
    (["--annotate-video", "/sys/hemaedge/a.mp4"], "annotated video"),
    (["--force", "--append"], "one of them"),
])
def test_options_that_make_no_sense_are_one_error_line_before_the_run(bundle, tmp_path, args, says):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = {"--source": str(SAMPLES / "pbc"), "--out": str(tmp_path / "o")}
    for k in list(base):
        if k in args:
            base.pop(k)
    res = edge_run("-q", "--bundle", bundle, *[x for kv in base.items() for x in kv], *args)
    assert res.exit_code == 2, res.output
    assert says in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "frames.jsonl").exists()  # refused before the run


def test_a_url_ending_in_mp4_is_a_network_stream():
    from hemaedge.edge.sources import CameraSource, open_source

    src = open_source("http://127.0.0.1:9/clip.mp4")
    assert isinstance(src, CameraSource)


# ----------------------------------------------------------------------------- logging


def test_run_log_and_verbosity(bundle, tmp_path):
    """Issue 17 #8: logging below the CLI; -q / -v on the top-level command; run.log in the run folder."""
    one = SAMPLES / "pbc" / "val_00000.jpg"
    res = edge_run("-q", "--bundle", bundle, "--source", one, "--out", tmp_path / "a")
    assert res.exit_code == 0 and "source: 1 image file(s)" in res.output and "debug:" not in res.output
    log = (tmp_path / "a" / "run.log").read_text()
    assert "INFO hemaedge.edge.run_cli: model: tiny" in log and "run ended: end of source" in log
    quiet = edge_run("-q", "--bundle", bundle, "--source", one, "--out", tmp_path / "b", root_opts=["-q"])
    assert quiet.exit_code == 0 and "source:" not in quiet.output
    assert "source: 1 image file(s)" in (tmp_path / "b" / "run.log").read_text()  # the file keeps info
    (tmp_path / "bad").mkdir()
    cv2.imwrite(str(tmp_path / "bad" / "a.png"), cv2.imread(str(one)))
    (tmp_path / "bad" / "b.png").write_text("broken")
    verbose = edge_run("-q", "--bundle", bundle, "--source", tmp_path / "bad", "--out", tmp_path / "c",
                       root_opts=["-v"])
    assert verbose.exit_code == 0, verbose.output
    assert "debug: hemaedge.edge.runloop: " in verbose.output
    assert "warning: frame skipped: " in verbose.output and "b.png" in verbose.output
    # a failure inside processing shows its traceback with -v (and only then)
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((480, 640, 3), np.uint8))
    clf_fail = edge_run("-q", "--bundle", bundle, "--source", black, "--out", tmp_path / "d", root_opts=["-v"])
    assert clf_fail.exit_code == 0
    if "frame skipped" in clf_fail.output:  # the red-cell ruler may learn to take black frames
        assert "Traceback (most recent call last)" in clf_fail.output


def test_a_source_that_fails_for_good_still_leaves_a_summary(bundle, tmp_path):
    """A camera that never opens is one Error line (exit 2), and the run's summary says why."""
    res = edge_run("-q", "--bundle", bundle, "--source", "/dev/video96", "--camera-retries", 0,
                   "--out", tmp_path / "o")
    assert res.exit_code == 2 and res.output.count("Error:") == 1 and "cannot open the camera" in res.output
    s = summary_of(tmp_path / "o")
    assert s["frames"] == 0 and s["complete"] is True and "the source failed" in s["end_reason"]


def test_a_plain_keyboard_interrupt_is_recorded_as_ctrl_c(bundle, tmp_path):
    from hemaedge.edge.runloop import run
    from hemaedge.edge.sources import open_source

    clf, recorder = _pipeline_parts(bundle, tmp_path / "o")
    src = open_source(str(SAMPLES / "pbc"))

    def interrupted(frames):
        for i, f in enumerate(frames):
            if i == 2:
                raise KeyboardInterrupt
            yield f

    s = run(src, clf, recorder, frames_iter=interrupted(iter(src)))
    assert s["frames"] == 2 and s["end_reason"] == "interrupted (Ctrl-C)"
