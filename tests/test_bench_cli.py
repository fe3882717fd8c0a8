"""`hemaedge bench` on the command line: user errors exit 2 without a traceback; with the edge
extra only (TensorFlow absent) the Keras baseline rows are skipped with the reason."""
import json
import subprocess
import sys

from click.testing import CliRunner

from bench_helpers import bundle, tiny_models
from hemaedge.benchmarks.cli import bench

FAST_ARGS = ["--threads", "1", "--warmup", "1", "--min-runs", "5", "--min-seconds", "0.02", "--max-seconds", "0.2",
             "--batch", "2", "--no-plots", "--quiet"]


def test_help_lists_commands():
    out = CliRunner().invoke(bench, ["--help"])
    assert out.exit_code == 0
    for cmd in ("run", "compare", "report", "training", "validate"):
        assert cmd in out.output
    out = CliRunner().invoke(bench, ["run", "--help"])
    assert "--preset" in out.output and "--compare" in out.output


def test_bad_inputs_exit_2_naming_the_path(tmp_path, tmp_path_factory):
    r = CliRunner().invoke(bench, ["run", str(tmp_path / "no_such_bundle")] + FAST_ARGS)
    assert r.exit_code == 2 and "no_such_bundle" in r.output and "Traceback" not in r.output
    m = tiny_models(tmp_path_factory)
    bundle(tmp_path / "b", m["onnx"], "onnx-fp32")
    r = CliRunner().invoke(bench, ["run", str(tmp_path / "b"), "--data", str(tmp_path / "nodata")] + FAST_ARGS)
    assert r.exit_code == 2 and "nodata" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(bench, ["run", str(tmp_path / "b"), "--data", str(tmp_path / "empty")] + FAST_ARGS)
    assert r.exit_code == 2 and "no class folders" in r.output
    r = CliRunner().invoke(bench, ["run", str(tmp_path / "b"), "--threads", "0"])
    assert r.exit_code == 2


def test_validate_command(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"schema": "hemaedge-bench"}))
    r = CliRunner().invoke(bench, ["validate", str(bad)])
    assert r.exit_code == 1 and "missing required field 'machine'" in r.output


BLOCKED_RUN = """
import sys
for name in ("tensorflow", "keras", "sklearn", "matplotlib"):
    sys.modules[name] = None  # as on a device with only the edge extra
from hemaedge.cli import main
sys.argv = ["hemaedge"] + sys.argv[1:]
main()
"""


def test_edge_only_install_skips_keras_rows(tmp_path, tmp_path_factory, bloodmnist128):
    m = tiny_models(tmp_path_factory)
    bundle(tmp_path / "export" / "onnx-fp32", m["onnx"], "onnx-fp32")
    keras_file = m["keras"] or (tmp_path / "fake.keras")
    keras_file.touch()
    args = ["bench", "run", str(tmp_path / "export"), "--keras", str(keras_file), "--keras-predict-only",
            "--data", str(bloodmnist128), "--spread", "8", "--out", str(tmp_path / "res"), "--name", "edge"] + \
        [a for a in FAST_ARGS if a != "--no-plots"]
    p = subprocess.run([sys.executable, "-c", BLOCKED_RUN, *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads((tmp_path / "res" / "edge.json").read_text())
    by = {r["kind"]: r for r in doc["rows"]}
    assert by["baseline"]["status"] == "skipped" and "tensorflow" in by["baseline"]["reason"]
    assert by["model"]["status"] == "passed" and by["model"]["vs_baseline"] is None
    assert "matplotlib is not installed" in p.stderr

