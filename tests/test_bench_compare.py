"""Compare mode: `hemaedge bench compare OLD NEW` and `bench run --compare OLD` print new/old
ratios per row; files that are not benchmark results are refused with a clear message."""
import copy
import json

import pytest
from click.testing import CliRunner

from bench_helpers import bundle, tiny_models, tiny_result
from hemaedge.benchmarks import compare as cmp
from hemaedge.benchmarks.cli import bench


@pytest.fixture(scope="module")
def result(tmp_path_factory, bloodmnist128, bccd):
    return tiny_result(tmp_path_factory, bloodmnist128, bccd)


def slower(doc, factor):
    new = copy.deepcopy(doc)
    for r in new["rows"]:
        if r.get("latency"):
            r["latency"] = {k: (v * factor if k.endswith("_ms") else v) for k, v in r["latency"].items()}
        if r.get("throughput"):
            r["throughput"]["images_per_s"] /= factor
    return new


def test_compare_ratios(result):
    old = result["doc"]
    new = slower(old, 2.0)
    new["rows"].append(dict(new["rows"][-1], id="extra|row", status="skipped"))
    entries = {e["id"]: e for e in cmp.compare(old, new)}
    measured = [r["id"] for r in old["rows"] if r.get("latency")]
    assert measured
    for rid in measured:
        assert entries[rid]["p50_ratio"] == pytest.approx(2.0)
        assert entries[rid]["p99_ratio"] == pytest.approx(2.0)
        assert entries[rid]["throughput_ratio"] == pytest.approx(0.5)
        assert entries[rid]["accuracy_delta_points"] == pytest.approx(0.0)
    assert entries["extra|row"]["old_status"] is None and entries["extra|row"]["new_status"] == "skipped"
    text = cmp.format_comparison(list(entries.values()), "a", "b", old, new)
    assert "2.00" in text and "absent → skipped" in text


def test_compare_cli(result, tmp_path):
    old = result["written"]["json"]
    new = tmp_path / "new.json"
    new.write_text(json.dumps(slower(result["doc"], 0.5)))
    out = CliRunner().invoke(bench, ["compare", str(old), str(new)])
    assert out.exit_code == 0, out.output
    assert "0.50" in out.output and "ratios are new / old" in out.output


def test_compare_refuses_foreign_files(tmp_path, result):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    out = CliRunner().invoke(bench, ["compare", str(bad), str(result["written"]["json"])])
    assert out.exit_code == 2 and "not a hemaedge benchmark result" in out.output
    assert "Traceback" not in out.output
    out = CliRunner().invoke(bench, ["compare", str(tmp_path / "missing.json"), str(bad)])
    assert out.exit_code == 2 and "missing.json" in out.output


def test_run_with_compare_prints_ratios(result, tmp_path_factory, tmp_path):
    m = tiny_models(tmp_path_factory)
    bundle(tmp_path / "export" / "onnx-fp32", m["onnx"], "onnx-fp32")
    out = CliRunner().invoke(bench, [
        "run", str(tmp_path / "export"), "--threads", "1", "--warmup", "1", "--min-runs", "5", "--min-seconds", "0.02",
        "--max-seconds", "0.2", "--batch", "2", "--out", str(tmp_path / "res"), "--name", "again", "--no-plots",
        "--quiet", "--compare", str(result["written"]["json"])])
    assert out.exit_code == 0, out.output
    assert "ratios are new / old" in out.output and "tiny · onnx-fp32 · onnx · t1" in out.output
    assert (tmp_path / "res" / "again.json").is_file()


def test_summary_for_the_readme(result):
    if not any(r["format"] == "tflite-int8" for r in result["doc"]["rows"]):
        pytest.skip("TensorFlow not installed: the tiny run has no TFLite row to summarise")
    out = CliRunner().invoke(bench, ["summary", str(result["written"]["json"])])
    assert out.exit_code == 0, out.output
    assert "tflite-int8" in out.output and "Per frame p50" in out.output and "Command: `pytest`" in out.output
    int8 = next(line for line in out.output.splitlines() if "tflite-int8" in line)
    row = next(r for r in result["doc"]["rows"] if r["format"] == "tflite-int8")
    assert f"{row['latency']['p50_ms']:.2f}" in int8  # the figure comes from the file, not retyped
