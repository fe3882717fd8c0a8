"""Measure ONE benchmark row in this process and print the result as JSON on stdout.

The runner starts `python -m hemaedge.benchmarks.worker` once per row and sends the row's spec
as JSON on stdin, so each row's peak resident memory (the process's own ru_maxrss) and its
thread settings cannot leak into another row. Anything libraries print goes to stderr; stdout
carries exactly one JSON object. Failures are reported in that object, with the stage they
happened in (load, latency, throughput, accuracy), never as a crash.

Spec kinds:
  bundle  - an exported bundle through the edge back end (`hemaedge.edge.backends`)
  keras   - the Keras fp32 source model (the baseline; needs TensorFlow)
  pipeline - the edge per-frame pipeline (segment + classify) on real frames
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np

from hemaedge.edge.metrics_runtime import peak_rss_mb


def _load_1m() -> float | None:
    """1-minute load average of the machine as the row ends (how busy it was while measuring)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows
        return None


class Stage:
    """Remembers which stage is running so a failure can say where it happened."""

    name = "start"


def _sample_images(spec: dict, n: int) -> list[np.ndarray]:
    """Real test images for timing when a test set is given, else a fixed synthetic smear-like image."""
    data = spec.get("sample_data") or (spec.get("accuracy") or {}).get("data")
    if data:
        from hemaedge.benchmarks.testset import open_test_set

        ts = open_test_set(data, "test", limit=max(n, 1))
        imgs = ts.images(0, n)
        return (imgs * n)[:n]
    rng = np.random.default_rng(0)
    img = rng.integers(150, 230, (128, 128, 3), dtype=np.uint8)
    return [img] * n


class _KerasModel:
    """The Keras fp32 baseline: `model.predict` (what users call; it builds a tf.data pipeline on
    every call) or `model.predict_on_batch` (the compiled graph alone: the fairest fp32 speed)."""

    def __init__(self, path: str, threads: int, call: str, output: dict):
        import tensorflow as tf

        # the thread count is the compute threads inside an op (as LiteRT's num_threads and ONNX
        # Runtime's intra_op_num_threads); inter-op stays TensorFlow's default, since predict's
        # tf.data steps stall when squeezed into one inter-op thread
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        import keras

        self.model = keras.models.load_model(path, compile=False)
        self.call, self.output = call, output

    def predict(self, x):
        if self.call == "predict":
            out = self.model.predict(x, batch_size=len(x), verbose=0)
        elif self.call == "predict_on_batch":
            out = self.model.predict_on_batch(x)
        else:
            raise ValueError(f"unknown Keras call {self.call!r}")
        from hemaedge.edge.preprocess import output_probabilities

        return output_probabilities(out, self.output)


def _load(spec: dict):
    """-> (runtime with .predict(batch) -> probabilities, input contract, class list)."""
    from hemaedge.edge.preprocess import InputContract

    if spec["kind"] == "keras":
        contract = InputContract.from_dict(spec["contract"])
        model = _KerasModel(spec["keras"], spec["threads"], spec.get("call", "predict"), spec.get("output") or {})
        return model, contract, list(spec["classes"])
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle

    bundle = load_bundle(spec["bundle"])
    return load_backend(bundle, threads=int(spec["threads"])), bundle.contract, bundle.classes


def _check_probabilities(p: np.ndarray, n: int, n_classes: int) -> None:
    if p.shape != (n, n_classes):
        raise ValueError(f"output shape {p.shape}, expected ({n}, {n_classes})")
    if not np.all(np.isfinite(p)):
        raise ValueError("output holds NaN or infinite values")


def measure_model(spec: dict, stage: Stage) -> dict:
    from hemaedge.benchmarks import stats
    from hemaedge.edge.preprocess import prepare_batch

    timing = spec.get("timing") or {}
    tp_batch = int(spec.get("throughput_batch", 32))
    images = _sample_images(spec, max(tp_batch, 1))
    result: dict = {}

    stage.name = "load"
    t0 = time.perf_counter()
    runtime, contract, classes = _load(spec)
    t1 = time.perf_counter()
    x1 = prepare_batch(images[:1], contract)
    first = runtime.predict(x1)
    t2 = time.perf_counter()
    stage.name = "validate-output"
    _check_probabilities(np.asarray(first), 1, len(classes))
    result["init"] = {"load_ms": (t1 - t0) * 1e3, "first_inference_ms": (t2 - t1) * 1e3,
                      "total_ms": (t2 - t0) * 1e3}

    stage.name = "latency"
    samples = stats.time_runs(lambda: runtime.predict(x1), **timing)
    result["latency"] = stats.latency_summary(samples)
    result["latency_samples_ms"] = [v * 1e3 for v in stats.downsample(samples)]
    pre = stats.time_runs(lambda: prepare_batch(images[:1], contract), warmup=3, min_runs=50,
                          min_seconds=0.2, max_seconds=2.0)
    result["preprocess_p50_ms"] = stats.latency_summary(pre)["p50_ms"]

    stage.name = "throughput"
    if tp_batch > 1:
        xb = prepare_batch(images[:tp_batch], contract)
        tp_timing = {k: v for k, v in timing.items() if k in ("min_seconds", "max_seconds")}
        result["throughput"] = stats.throughput(lambda: runtime.predict(xb), tp_batch, **tp_timing)
    result["peak_rss_mb"] = peak_rss_mb()

    acc = spec.get("accuracy") or {}
    if acc.get("data"):
        stage.name = "accuracy"
        result["accuracy"] = score(runtime, contract, classes, acc, tp_batch)
        result["peak_rss_with_eval_mb"] = peak_rss_mb()
    return result


def score(runtime, contract, classes, acc: dict, batch: int) -> dict:
    """Accuracy and macro F1 over the test split, streamed in batches."""
    from tqdm import tqdm

    from hemaedge.benchmarks import stats
    from hemaedge.benchmarks.testset import label_map, open_test_set
    from hemaedge.edge.preprocess import prepare_batch

    ts = open_test_set(acc["data"], acc.get("split", "test"), limit=acc.get("limit"))
    lut, how = label_map(ts.class_names, classes)
    preds, trues = [], []
    batch = max(1, batch)
    for imgs, labels in tqdm(ts.chunks(batch), total=-(-len(ts) // batch), desc="accuracy",
                             unit="batch", leave=False, file=sys.stderr, disable=not acc.get("progress")):
        p = np.asarray(runtime.predict(prepare_batch(imgs, contract)))
        _check_probabilities(p, len(imgs), len(classes))
        preds.append(p.argmax(axis=1))
        trues.append(lut[labels])
    out = stats.classification_scores(np.concatenate(trues), np.concatenate(preds), len(classes))
    out.update(split=acc.get("split", "test"), data=ts.source, labels_matched=how,
               limit=acc.get("limit"))
    return out


def measure_pipeline(spec: dict, stage: Stage) -> dict:
    """The edge per-frame pipeline on real frames: per-stage p50/p99 and frames per second."""
    from hemaedge.benchmarks.pipeline_bench import run_pipeline

    return run_pipeline(spec, stage)


def run(spec: dict) -> dict:
    stage = Stage()
    t0 = time.perf_counter()
    try:
        measure = measure_pipeline if spec.get("kind") == "pipeline" else measure_model
        out = {"ok": True, **measure(spec, stage)}
    except Exception as exc:  # reported, not raised: the runner turns it into the row's status
        out = {"ok": False, "stage": stage.name, "error": f"{type(exc).__name__}: {exc}".strip(),
               "traceback": traceback.format_exc(limit=8)}
    out["wall_s"] = time.perf_counter() - t0
    out["load_average_1m"] = _load_1m()
    out.setdefault("peak_rss_mb", peak_rss_mb())
    return out


def main() -> int:
    # Keep stdout for the one JSON answer: everything else printed (by us or by native
    # libraries) goes to stderr.
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.loads(sys.stdin.read())
    out = run(spec)
    with os.fdopen(answer_fd, "w") as fh:
        fh.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
