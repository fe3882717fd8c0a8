"""The Keras fp32 baseline in the same run: measured in its own process, and every bundle row of
the same model gets its latency as a ratio to it (needs TensorFlow)."""
import pytest

from bench_helpers import FAST, bundle, tiny_models
from hemaedge.benchmarks.runner import BenchConfig, run_benchmark
from hemaedge.edge.bundle import sha256_file

pytest.importorskip("tensorflow")


@pytest.mark.slow
def test_keras_baseline_and_ratios(tmp_path_factory, tmp_path, bloodmnist128):
    m = tiny_models(tmp_path_factory)
    bundle(tmp_path / "export" / "tflite-fp32", m["tflite"], "tflite-fp32",
           source={"file": m["keras"].name, "sha256": sha256_file(m["keras"])})
    cfg = BenchConfig(targets=[tmp_path / "export"], keras=[m["keras"]], keras_calls=("predict", "predict_on_batch"),
                      threads=(1,), timing=FAST, throughput_batch=4, data=bloodmnist128, limit=8, progress=False)
    doc, _ = run_benchmark(cfg, tmp_path / "out" / "b", command="pytest", plots=False, log=lambda s: None)
    by = {r["format"]: r for r in doc["rows"]}
    base, graph, lite = by["keras-fp32-predict"], by["keras-fp32-predict_on_batch"], by["tflite-fp32"]
    assert base["status"] == "passed" and base["latency"]["p50_ms"] > 0 and base["n_eval"] == 8
    assert graph["status"] == "passed"
    # the TFLite file is the same network: same predictions on the same images
    assert lite["accuracy"] == base["accuracy"] and lite["accuracy_reference"].startswith("Keras fp32")
    assert lite["baseline_id"] == base["id"]
    assert lite["vs_baseline"]["p50"] == pytest.approx(lite["latency"]["p50_ms"] / base["latency"]["p50_ms"])
    assert lite["vs_baseline"]["speedup_p50"] == pytest.approx(base["latency"]["p50_ms"] / lite["latency"]["p50_ms"])
