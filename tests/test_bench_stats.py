"""Statistics of the benchmark: percentiles, timing-loop stop rules, throughput, ratios, scores."""
import math

import numpy as np
import pytest

from hemaedge.benchmarks import stats
from hemaedge.benchmarks.plots import pareto_front


class FakeClock:
    """A clock that advances by `step` seconds each time the timed function runs."""

    def __init__(self, step):
        self.t, self.step, self.calls = 0.0, step, 0

    def __call__(self):
        return self.t

    def work(self):
        self.calls += 1
        self.t += self.step


def test_latency_summary_percentiles_in_milliseconds():
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    s = stats.latency_summary(samples)
    assert s["n"] == 100
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(100.0)
    # numpy "linear" interpolation: p50 of 1..100 is 50.5, p90 is 90.1, p99 is 99.01
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["std_ms"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))


def test_latency_summary_one_sample_and_bad_input():
    assert stats.latency_summary([0.002])["std_ms"] == 0.0
    with pytest.raises(ValueError):
        stats.latency_summary([])
    with pytest.raises(ValueError):
        stats.latency_summary([0.1, float("nan")])


def test_time_runs_fast_model_needs_both_min_runs_and_min_seconds():
    clock = FakeClock(0.001)  # 1 ms per call
    samples = stats.time_runs(clock.work, warmup=5, min_runs=100, min_seconds=0.5, max_seconds=10, clock=clock)
    assert len(samples) == 500  # 100 runs take 0.1 s: keep going until 0.5 s
    assert clock.calls == 505  # warm-up runs are not timed
    assert all(s == pytest.approx(0.001) for s in samples)


def test_time_runs_slow_model_stops_at_max_seconds():
    clock = FakeClock(0.5)  # 500 ms per call: 100 runs would take 50 s
    samples = stats.time_runs(clock.work, warmup=0, min_runs=100, min_seconds=1, max_seconds=10, clock=clock)
    assert len(samples) == 20


def test_time_runs_floor_runs_even_past_max_seconds():
    clock = FakeClock(3.0)
    samples = stats.time_runs(clock.work, warmup=0, min_runs=100, min_seconds=1, max_seconds=1, floor_runs=4,
                              clock=clock)
    assert len(samples) == 4


def test_throughput_images_per_second():
    clock = FakeClock(0.25)  # a batch of 8 takes 0.25 s -> 32 images/s
    tp = stats.throughput(clock.work, 8, min_runs=5, min_seconds=1.0, max_seconds=10, clock=clock)
    assert tp["images_per_s"] == pytest.approx(32.0)
    assert tp["ms_per_image"] == pytest.approx(1000 / 32)
    assert tp["batch"] == 8 and tp["runs"] >= 5


def test_ratios():
    assert stats.ratio(2.0, 8.0) == 0.25
    assert stats.ratio(None, 1.0) is None and stats.ratio(1.0, None) is None
    assert stats.ratio(1.0, 0.0) is None and stats.ratio(1.0, float("nan")) is None
    r = stats.latency_ratios({"mean_ms": 1, "p50_ms": 2, "p90_ms": 3, "p99_ms": 4},
                             {"mean_ms": 4, "p50_ms": 4, "p90_ms": 6, "p99_ms": 16})
    assert r == {"mean": 0.25, "p50": 0.5, "p90": 0.5, "p99": 0.25}
    assert stats.latency_ratios(None, {"p50_ms": 1}) is None


def test_classification_scores_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 8, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 8, 300))
    p[p == 7] = 6  # class 7 is never predicted: its F1 is 0
    s = stats.classification_scores(y, p, 8)
    assert s["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", labels=list(range(8)), zero_division=0))
    assert s["n"] == 300


def test_classification_scores_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        stats.classification_scores([0, 1], [0], 2)


def test_downsample_keeps_extremes_and_order():
    x = list(np.random.default_rng(0).random(5000))
    d = stats.downsample(x, 100)
    assert len(d) == 100 and d == sorted(d)
    assert d[0] == min(x) and d[-1] == max(x)
    assert stats.downsample([3, 1, 2], 100) == [1, 2, 3]


def test_pareto_front():
    # (latency ms, accuracy %)
    pts = [(10, 90), (5, 80), (20, 85), (1, 70), (6, 80), (30, 95)]
    assert [pts[i] for i in pareto_front(pts)] == [(1, 70), (5, 80), (10, 90), (30, 95)]
    assert math.isclose(len(pareto_front([(1, 1)])), 1)
