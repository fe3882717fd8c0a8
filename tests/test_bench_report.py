"""Result files of a small real run: JSON that follows the documented schema, CSV, Markdown,
plots, the per-frame pipeline rows and the training table read from metrics files."""
import copy
import csv
import json

import pytest

from bench_helpers import tiny_result
from hemaedge.benchmarks import report, schema
from hemaedge.benchmarks.training_table import read_training_runs


@pytest.fixture(scope="module")
def result(tmp_path_factory, bloodmnist128, bccd):
    return tiny_result(tmp_path_factory, bloodmnist128, bccd)


def test_json_follows_schema(result):
    doc = json.loads(result["written"]["json"].read_text())
    assert schema.validate(doc) == []
    assert doc["complete"] is True and doc["schema_version"] == 1
    m = doc["machine"]
    assert m["cpu_model"] and m["usable_cores"] >= 1 and m["memory_gb"] > 0 and "numpy" in m["libraries"]


def test_schema_catches_broken_documents(result):
    doc = copy.deepcopy(result["doc"])
    del doc["machine"]["cpu_model"]
    doc["rows"][0]["status"] = "ok"
    doc["rows"][1]["accuracy"] = 1.5
    problems = schema.validate(json.loads(json.dumps(doc)))
    assert any("cpu_model" in p for p in problems)
    assert any("rows[0].status" in p for p in problems)
    assert any("rows[1].accuracy" in p and "maximum" in p for p in problems)


def test_every_row_measured_or_explained(result):
    rows = result["doc"]["rows"]
    models = [r for r in rows if r["kind"] == "model"]
    assert models and all(r["status"] == "passed" for r in models)
    for r in models:
        lat = r["latency"]
        assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert 0 <= r["accuracy"] <= 1 and r["n_eval"] == 16 and r["size_mb"] > 0
    for r in rows:
        if r["status"] != "passed":
            assert r["reason"]


def test_csv_and_markdown(result):
    w = result["written"]
    with open(w["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [r["id"] for r in result["doc"]["rows"]]
    assert set(report.CSV_COLUMNS) == set(rows[0])
    md = w["md"].read_text()
    assert "| Model | Format |" in md and "onnx-fp32" in md and "pytest" in md
    assert "Per-frame pipeline" in md and "Training trade-off" in md
    assert "bench_tiny_pareto.png" in md


def test_plots_written(result):
    w = result["written"]
    for key in ("pareto", "latency"):
        assert w[key].is_file() and w[key].stat().st_size > 5000
        assert w[key].read_bytes()[:4] == b"\x89PNG"


def test_pipeline_rows_on_bccd_frames(result):
    prows = result["doc"]["pipeline"]
    assert prows and all(p["status"] == "passed" for p in prows)
    p = prows[0]
    assert p["frames"] == 2 and p["fps"] > 0 and p["cells"] >= 1
    for stage in ("read", "segment", "preprocess", "inference", "total"):
        assert p["stages"][stage]["p50_ms"] >= 0
    assert p["stages"]["total"]["p50_ms"] >= p["stages"]["segment"]["p50_ms"]


def test_training_table_from_metrics_files(result):
    rows = result["doc"]["training"]
    assert len(rows) == 1  # best.json repeats metrics.json and is not a second row
    r = rows[0]
    assert r["test_accuracy"] == 0.91 and r["size_mb"] == 2.5 and r["head_train_s"] == 321.5
    assert r["backbone"] == "efficientnet_b0" and r["head"] == "fine-tuned" and r["file"].endswith("metrics.json")


def test_training_table_reads_hybrid_rows(tmp_path):
    # laid out as train/hybrid.py writes metrics.json: one row per head, plus the fused sidecar
    run = tmp_path / "hybrid" / "effv2b0-otsu"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"classes": ["a", "b"], "input": {"size": 128}, "heads": {}, "rows": [
        {"backbone": "EfficientNetV2B0", "head": "svm", "preprocess": "otsu-mask", "augment": "paper",
         "train_acc": 0.9, "test_acc": 0.768, "macro_f1": 0.70, "head_mb": 12.0, "deploy_mb": 36.0,
         "train_s": 40.0, "extract_s": 300.0},
        {"backbone": "EfficientNetV2B0", "head": "ann", "test_acc": 0.762, "head_mb": 2.0, "train_s": 12.5},
        {"note": "no accuracy here"}]}))
    (run / "fused_ann.json").write_text(json.dumps({"classes": ["a", "b"], "input": {"size": 128},
                                                    "metrics": {"test": {"accuracy": 0.762}}}))
    rows = read_training_runs([tmp_path])
    assert [(r["head"], r["test_accuracy"]) for r in rows] == [("svm", 0.768), ("ann", 0.762)]
    svm = rows[0]
    assert svm["head_train_s"] == 40.0 and svm["backbone_s"] == 300.0 and svm["size_mb"] == 12.0
    assert svm["deploy_mb"] == 36.0 and svm["variant"] == "otsu-mask/paper" and svm["test_macro_f1"] == 0.70
    assert svm["run"] == "hybrid/effv2b0-otsu" and svm["file"].endswith("metrics.json")


def test_goal_summary_uses_baseline_rows():
    lat = {"p50_ms": 1.0}
    rows = [{"id": "m|keras-fp32-predict|keras|t1", "kind": "baseline", "status": "passed", "accuracy": 0.800,
             "n_eval": 100},
            {"id": "m|tflite-int8|tflite|t1", "kind": "model", "format": "tflite-int8", "threads": 1,
             "status": "passed", "accuracy": 0.798, "n_eval": 100, "latency": lat,
             "vs_baseline": {"speedup_p50": 3.5}, "baseline_id": "m|keras-fp32-predict|keras|t1"},
            {"id": "m|tflite-int8|tflite|t2", "kind": "model", "format": "tflite-int8", "threads": 2,
             "status": "passed", "accuracy": 0.790, "n_eval": 100, "latency": lat,
             "vs_baseline": {"speedup_p50": 5.0}, "baseline_id": "m|keras-fp32-predict|keras|t1"}]
    goal = report.summarize(rows)["goal"]["rows"]
    assert [g["met"] for g in goal] == [True, False]  # -0.2 points ok; -1.0 points is not within 0.3
    assert goal[0]["accuracy_delta_points"] == pytest.approx(-0.2)
