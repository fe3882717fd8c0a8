"""Status logic: every planned row ends passed / failed-validation / failed / skipped, with a
reason, and no row goes missing (bad bundles, failed exports, missing runtimes, interruptions)."""
import json
import shutil

import pytest

from bench_helpers import FAST, bundle, tiny_models
from hemaedge.benchmarks import presets, runner
from hemaedge.benchmarks import status as st


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


def cfg(targets, **kw):
    kw.setdefault("threads", (1,))
    kw.setdefault("timing", FAST)
    kw.setdefault("throughput_batch", 4)
    kw.setdefault("progress", False)
    return runner.BenchConfig(targets=list(targets), **kw)


# ----------------------------------------------------------------------------- decide()


def test_decide_passed_and_failed():
    assert st.decide({"ok": True}) == (st.PASSED, "")
    status, reason = st.decide({"ok": False, "stage": "load", "error": "BundleError: checksum mismatch"})
    assert status == st.FAILED and "checksum mismatch" in reason and reason.startswith("load")
    assert st.decide(None)[0] == st.FAILED


@pytest.mark.parametrize("stage", ["validate-output", "accuracy"])
def test_decide_crash_while_validating_is_failed_validation(stage):
    assert st.decide({"ok": False, "stage": stage, "error": "ValueError: NaN"})[0] == st.FAILED_VALIDATION


def test_decide_accuracy_drop_threshold():
    ok = {"ok": True}
    assert st.decide(ok, accuracy=0.795, reference=0.80, max_drop=1.0)[0] == st.PASSED  # 0.5 points
    assert st.decide(ok, accuracy=0.80, reference=0.81, max_drop=1.0)[0] == st.PASSED  # exactly 1 point
    status, reason = st.decide(ok, accuracy=0.75, reference=0.80, reference_name="Keras fp32", max_drop=1.0)
    assert status == st.FAILED_VALIDATION and "5.00 points below Keras fp32" in reason
    assert st.decide(ok, accuracy=0.75, reference=None)[0] == st.PASSED  # nothing to hold it to


def test_decide_export_parity_failure():
    status, reason = st.decide({"ok": True}, manifest_parity={"status": "failed-validation", "reason": "drops 3 points"})
    assert status == st.FAILED_VALIDATION and "drops 3 points" in reason


# ----------------------------------------------------------------------------- planning


def test_plan_never_drops_a_row(models, tmp_path, monkeypatch):
    root = tmp_path / "export"
    bundle(root / "onnx-fp32", models["onnx"], "onnx-fp32")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine")
    bundle(root / "tensorrt-fp16", engine, "tensorrt-fp16")
    shutil.copytree(root / "onnx-fp32", root / "broken")
    (root / "broken" / "manifest.json").write_text("{ not json")
    (root / "export_table.json").write_text(json.dumps({"meta": {"model": "tiny"}, "rows": [
        {"format": "onnx-fp32", "status": "passed", "bundle": str(root / "onnx-fp32")},
        {"format": "tflite-int8", "status": "failed-to-export", "bundle": None, "error": "converter crashed"}]}))
    keras_file = tmp_path / "m.keras"
    keras_file.write_bytes(b"x")
    real_missing = presets.missing_tool
    monkeypatch.setattr(presets, "missing_tool", lambda t: "tensorflow not installed" if t == "keras" else real_missing(t))

    elsewhere = tmp_path / "export_tiny.json"  # `export all` writes its table to benchmarks/results by default
    elsewhere.write_text(json.dumps({"meta": {"model": "tiny"}, "rows": [
        {"format": "tensorrt-int8", "status": "failed-to-export", "bundle": None, "error": "TensorRT is not installed"}]}))
    bundles, failed = runner.discover([root], [elsewhere])
    rows = runner.plan(cfg([root], keras=[keras_file], threads=(1, 2)), bundles, failed)
    by = {(r["format"], r["threads"]): r for r in rows}
    assert len(by) == len(rows)  # ids unique
    assert by[("onnx-fp32", 1)]["spec"]["kind"] == "bundle" and by[("onnx-fp32", 2)]["spec"]["accuracy"] is None
    assert by[("tensorrt-fp16", 1)]["status"] == st.SKIPPED and "tensorrt" in by[("tensorrt-fp16", 1)]["reason"]
    assert by[("broken", 1)]["status"] == st.FAILED and "not valid JSON" in by[("broken", 1)]["reason"]
    assert by[("tflite-int8", None)]["status"] == st.FAILED and "converter crashed" in by[("tflite-int8", None)]["reason"]
    trt = by[("tensorrt-int8", None)]  # cannot be built without TensorRT: skipped here, with both reasons
    assert trt["status"] == st.SKIPPED and "TensorRT is not installed" in trt["reason"] and "pycuda" in trt["reason"]
    for t in (1, 2):
        base = by[("keras-fp32-predict", t)]
        assert base["status"] == st.SKIPPED and "tensorflow" in base["reason"]
    assert all(r["status"] in st.STATUSES or r.get("spec") for r in rows)


def test_plan_preset_and_format_filters_skip_with_reason(models, tmp_path):
    root = tmp_path / "export"
    bundle(root / "onnx-fp32", models["onnx"], "onnx-fp32")
    bundles, failed = runner.discover([root])
    # Not in the selected formats
    rows = runner.plan(cfg([root], formats=("tflite-int8",)), bundles, failed)
    model_rows = [r for r in rows if r["kind"] == "model"]
    assert [r["status"] for r in model_rows] == [st.SKIPPED] and "not selected" in model_rows[0]["reason"]
    # Baseline rows are skipped with a reason: no Keras file given, or (edge-only install) no TensorFlow
    baseline = [r for r in rows if r["kind"] == "baseline"]
    assert baseline and all(r["status"] == st.SKIPPED for r in baseline)
    missing = presets.missing_tool("keras")
    expected = missing if missing else "--keras"
    assert all(expected in r["reason"] for r in baseline)


def test_preset_threads():
    assert presets.preset_threads("pi") == (1, 4)
    assert presets.preset_threads("desktop")[0] == 1
    assert set(presets.PRESETS["pi"]["backends"]) == {"tflite", "onnx"}


def test_discover_rejects_a_folder_without_bundles(tmp_path):
    from hemaedge.edge.bundle import BundleError

    with pytest.raises(BundleError, match="neither a bundle"):
        runner.discover([tmp_path])
    with pytest.raises(FileNotFoundError):
        runner.discover([tmp_path / "nope"])


# ----------------------------------------------------------------------------- measured rows


def test_execute_statuses_on_real_bundles(models, tmp_path, bloodmnist128):
    root = tmp_path / "export"
    bundle(root / "good", models["onnx"], "onnx-fp32", name="a")
    # a damaged copy: the model file changed after export -> checksum fails in the worker
    bundle(root / "tampered", models["onnx"], "onnx-fp32", name="b")
    with open(root / "tampered" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    # a bundle that lists 8 classes for a 4-output model
    bundle(root / "mismatch", models["onnx4"], "onnx-fp32", name="c")
    # export recorded a source accuracy of 100% on these very images: the tiny model is far below
    bundle(root / "held", models["onnx"], "onnx-fp32", name="d", metrics={
        "parity": {"status": "passed", "splits": {"test": {"source_accuracy": 1.0, "n": 16}}}})
    # the export's own parity check failed
    bundle(root / "parity", models["onnx"], "onnx-fp32", name="e",
           extra={"validation": {"status": "failed-validation", "reason": "accuracy drops 4.00 points on val"}})
    c = cfg([root], data=bloodmnist128, limit=16)
    bundles, failed = runner.discover([root])
    rows = runner.execute(runner.plan(c, bundles, failed), c, log=lambda s: None)
    by = {r["model"]: r for r in rows if r["kind"] == "model"}
    assert by["a"]["status"] == st.PASSED and by["a"]["latency"]["n"] >= 5 and by["a"]["n_eval"] == 16
    assert by["a"]["init"]["total_ms"] > 0 and by["a"]["peak_rss_mb"] > 0 and by["a"]["throughput"]["batch"] == 4
    assert by["b"]["status"] == st.FAILED and "checksum" in by["b"]["reason"]
    assert by["c"]["status"] == st.FAILED and "4 outputs" in by["c"]["reason"]
    assert by["d"]["status"] == st.FAILED_VALIDATION and "below the source accuracy" in by["d"]["reason"]
    assert by["e"]["status"] == st.FAILED_VALIDATION and "export parity" in by["e"]["reason"]


def test_interrupted_run_marks_the_rest_skipped(models, tmp_path, monkeypatch):
    root = tmp_path / "export"
    bundle(root / "x", models["onnx"], "onnx-fp32")
    c = cfg([root], threads=(1, 2))
    bundles, failed = runner.discover([root])
    rows = runner.plan(c, bundles, failed)
    calls = []

    def fake_worker(spec, timeout):
        calls.append(spec)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"ok": True, "latency": {"n": 1, "mean_ms": 1.0, "std_ms": 0.0, "min_ms": 1.0, "p50_ms": 1.0,
                                         "p90_ms": 1.0, "p99_ms": 1.0, "max_ms": 1.0}}

    monkeypatch.setattr(runner, "run_worker", fake_worker)
    with pytest.raises(KeyboardInterrupt):
        runner.execute(rows, c, log=lambda s: None)
    statuses = [(r["threads"], r["status"]) for r in rows if r["kind"] == "model"]
    assert statuses == [(1, st.PASSED), (2, st.SKIPPED)]
    assert "interrupted" in rows[-1]["reason"]
    assert all(r["status"] in st.STATUSES for r in rows)


def test_baseline_ratios_and_shared_accuracy():
    lat = lambda p50: {"n": 3, "mean_ms": p50, "std_ms": 0.0, "min_ms": p50, "p50_ms": p50, "p90_ms": p50,
                       "p99_ms": p50, "max_ms": p50}
    rows = [runner._new_row("baseline", "m", "keras-fp32-predict", "keras", 1, latency=lat(30.0),
                            throughput={"images_per_s": 100.0}),
            runner._new_row("baseline", "m", "keras-fp32-predict_on_batch", "keras", 1, latency=lat(10.0)),
            runner._new_row("model", "m", "tflite-int8", "tflite", 1, latency=lat(5.0),
                            throughput={"images_per_s": 400.0}),
            runner._new_row("model", "m", "tflite-int8", "tflite", 2, latency=lat(4.0))]
    runner.attach_baselines(rows)
    vs = rows[2]["vs_baseline"]
    assert vs["p50"] == pytest.approx(5 / 30) and vs["speedup_p50"] == pytest.approx(6.0)
    assert vs["speedup_p50_vs_predict_on_batch"] == pytest.approx(2.0) and vs["throughput"] == pytest.approx(4.0)
    assert rows[2]["baseline_id"] == "m|keras-fp32-predict|keras|t1"
    assert rows[3]["vs_baseline"] is None  # no baseline at 2 threads: no ratio rather than a wrong one
    rows[2].update(accuracy=0.8, macro_f1=0.7, n_eval=10)
    runner._share_accuracy(rows, rows[3])
    assert rows[3]["accuracy"] == 0.8 and rows[3]["accuracy_source"] == "threads=1 row"


def test_accuracy_from_manifest_is_labelled(models, tmp_path, bloodmnist128):
    root = tmp_path / "export"
    metrics = {"test": {"n": 3421, "accuracy": 0.9, "macro_f1": 0.85},
               "parity": {"status": "passed", "splits": {"test": {"n": 3421, "source_accuracy": 0.91,
                                                                  "source_macro_f1": 0.86}}}}
    bundle(root / "with", models["onnx"], "onnx-fp32", name="a", metrics=metrics)
    bundle(root / "without", models["onnx"], "onnx-fp32", name="b")
    keras_file = tmp_path / "m.keras"
    keras_file.write_bytes(b"x")
    c = cfg([root], data=bloodmnist128, limit=8, accuracy="manifest", keras=[keras_file], keras_calls=("predict",))
    bundles, failed = runner.discover([root])
    rows = {(r["model"], r["kind"]): r for r in runner.plan(c, bundles, failed)}
    a = rows[("a", "model")]
    assert a["accuracy"] == 0.9 and a["n_eval"] == 3421 and a["accuracy_source"].startswith("manifest")
    assert a["spec"]["accuracy"] is None  # not measured again
    assert rows[("a", "baseline")]["accuracy"] == 0.91  # the Keras source's accuracy at export
    b = rows[("b", "model")]
    assert b["accuracy"] is None and b["spec"]["accuracy"]["limit"] == 8  # nothing recorded: measured here


def test_row_ids_stay_unique_for_same_named_bundles(models, tmp_path):
    bundle(tmp_path / "v1" / "onnx-fp32", models["onnx"], "onnx-fp32")
    bundle(tmp_path / "v2" / "onnx-fp32", models["onnx"], "onnx-fp32")
    bundles, failed = runner.discover([tmp_path / "v1", tmp_path / "v2"])
    rows = [r for r in runner.plan(cfg([tmp_path]), bundles, failed) if r["kind"] == "model"]
    assert [r["id"] for r in rows] == ["tiny|onnx-fp32|onnx|t1", "tiny|onnx-fp32|onnx|t1#2"]
    assert rows[0]["bundle"] != rows[1]["bundle"]
