"""`hemaedge export` end to end on a tiny trained model: every format, parity for each, the
table with a row per format, failed-validation marking, and clear errors (exit 2)."""
import json

import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from export_helpers import calibration_dir, eval_tree, tiny_model  # noqa: E402
from hemaedge.cli import main  # noqa: E402
from hemaedge.edge.bundle import load_bundle  # noqa: E402


def run(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


@pytest.fixture(scope="module")
def setup(bloodmnist128):
    return tiny_model(bloodmnist128, "effnet"), calibration_dir(bloodmnist128), eval_tree(bloodmnist128)


def test_export_all_writes_a_row_per_format(setup, tmp_path):
    model, calib, data = setup
    stem = tmp_path / "results" / "export_tiny"
    r = run("all", model, "--data", data, "--calib-dir", calib, "--calib-count", 16, "--out", tmp_path / "bundles",
            "--table", stem, "--formats", "tflite-fp32,tflite-int8,onnx-fp32,onnx-int8,tensorrt-fp16")
    assert r.exit_code == 0, r.output
    table = json.loads(stem.with_suffix(".json").read_text())
    rows = {row["format"]: row for row in table["rows"]}
    assert list(rows) == ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8", "tensorrt-fp16"]
    assert rows["tensorrt-fp16"]["status"] == "failed-to-export" and "TensorRT" in rows["tensorrt-fp16"]["error"]
    for fmt in ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"):
        row = rows[fmt]
        assert row["status"] in ("passed", "failed-validation")
        assert row["n"] == {"val": 48, "test": 48} and row["size_mb"] > 0
        b = load_bundle(row["bundle"])
        assert b.manifest["validation"]["status"] == row["status"]
        assert b.manifest["metrics"]["parity"]["splits"]["test"]["n"] == 48
    assert rows["tflite-fp32"]["agreement"] == 1.0 and rows["tflite-fp32"]["delta_points"] == 0.0
    assert table["meta"]["calibration"]["count"] == 16 and "hemaedge export all" in table["meta"]["command"]
    md = stem.with_suffix(".md").read_text()
    assert "| tflite-int8 |" in md and "failed-to-export" in md and "machine" in md


def test_single_export_marks_failed_validation(setup, tmp_path):
    model, calib, data = setup
    # --max-drop -100 demands a 100-point gain: any real export fails validation.
    r = run("tflite", model, "--quant", "fp16", "--data", data, "--sample", 8, "--max-drop", -100,
            "--out", tmp_path / "b")
    assert r.exit_code == 1
    assert "failed-validation" in r.output
    b = load_bundle(tmp_path / "b")
    assert b.manifest["validation"]["status"] == "failed-validation"
    assert b.manifest["metrics"]["parity"]["splits"]["val"]["n"] == 8


def test_export_without_data_is_not_validated(setup, tmp_path):
    model, _, _ = setup
    r = run("onnx", model, "--opset", 13, "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    b = load_bundle(tmp_path / "b")
    assert b.manifest["validation"]["status"] == "not-validated" and b.manifest["export"]["opset"] == 13


def test_user_errors_exit_2(setup, tmp_path):
    model, _, _ = setup
    r = run("tflite", tmp_path / "missing.keras", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "missing.keras" in r.output and "Traceback" not in r.output
    bare = tmp_path / "bare.keras"
    bare.write_bytes(model.read_bytes())  # no sidecar next to it
    r = run("tflite", bare, "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--classes" in r.output
    r = run("tflite", model, "--quant", "int8", "--calib-dir", tmp_path / "nocalib", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "calibration folder not found" in r.output
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    r = run("onnx", tmp_path / "junk.keras", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "junk.keras" in r.output
    r = run("all", model, "--formats", "tflite-int3", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "unknown formats" in r.output


def test_export_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("tflite", "onnx", "onnx-head", "tensorrt", "all", "bundle"):
        assert cmd in r.output


def test_export_all_fails_when_no_format_was_exported(setup, tmp_path):
    """Issue 16 #10: every format failing (empty or missing calibration folder) exited 0."""
    model, calib, data = setup
    (tmp_path / "empty").mkdir()
    for calib_dir in (tmp_path / "empty", tmp_path / "missing"):
        r = run("all", model, "--formats", "tflite-int8,onnx-int8", "--calib-dir", calib_dir, "--out",
                tmp_path / "bundles", "--table", tmp_path / "t", "--force")
        assert r.exit_code == 1, r.output
        assert "Error: no format was exported" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("args,needle", [
    (["--calib-count", "-5"], "--calib-count"),
    (["--max-drop", "nan"], "finite"),
])
def test_export_all_refuses_bad_options(setup, tmp_path, args, needle):
    model, calib, data = setup
    r = run("all", model, "--formats", "tflite-fp32", "--out", tmp_path / "b", *args)
    assert r.exit_code == 2 and needle in r.output, r.output


def test_export_all_out_on_a_file_is_an_error_line(setup, tmp_path):
    model, calib, data = setup
    f = tmp_path / "file"
    f.write_text("x")
    r = run("all", model, "--formats", "tflite-fp32", "--out", f, "--table", tmp_path / "t")
    assert r.exit_code == 2 and "Error:" in r.output and "is a file" in r.output and "Traceback" not in r.output
