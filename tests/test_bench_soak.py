"""The soak benchmark's verdicts (benchmarks/tools/soak.py) on made-up per-frame rows: a leak and a
slowdown are caught, a flat run passes. The soak itself is a benchmark, not a test."""
from __future__ import annotations

import numpy as np
import pytest

from hemaedge.benchmarks.tools.soak import analyse, markdown, soak_command


def rows(n=8000, rss=lambda i: 100.0, ms=lambda i: 10.0, seed=0):
    rng = np.random.default_rng(seed)
    return [{"total_ms": ms(i) * (1 + 0.05 * rng.standard_normal()), "rss_mb": rss(i)} for i in range(n)]


def test_a_flat_run_passes():
    r = analyse(rows(), warmup=1000, window=500, max_growth_mb=5, max_drift=0.15)
    assert r["verdict"]["memory_flat"] and r["verdict"]["no_latency_drift"]
    assert abs(r["rss_mb"]["growth_after_warmup"]) < 0.01 and r["quarter_frames"] == 1750


def test_a_leak_after_warm_up_is_caught_but_warm_up_growth_is_not():
    warm = analyse(rows(rss=lambda i: 80.0 + min(i, 999) * 0.02), 1000, 500, 5, 0.15)
    assert warm["verdict"]["memory_flat"]  # +20 MB while warming up does not count
    leak = analyse(rows(rss=lambda i: 100.0 + i * 0.001), 1000, 500, 5, 0.15)
    assert not leak["verdict"]["memory_flat"] and leak["rss_mb"]["growth_after_warmup"] > 5


def test_a_slowdown_is_caught():
    r = analyse(rows(ms=lambda i: 10.0 + i / 2000), 1000, 500, 5, 0.15)
    assert not r["verdict"]["no_latency_drift"] and r["total_ms"]["drift_last_vs_first"] > 0.15


def test_too_few_frames_is_an_error_not_a_verdict():
    with pytest.raises(SystemExit, match="too few"):
        analyse(rows(n=1500), 1000, 500, 5, 0.15)


def test_the_soak_runs_the_real_edge_run_and_the_table_says_how():
    cmd = soak_command(20000, "samples", "/tmp/x")
    assert cmd[1:6] == ["-m", "hemaedge.cli", "edge", "run", "-q"] and "--loop" in cmd and "20000" in cmd
    r = analyse(rows(), 1000, 500, 5, 0.15)
    machine = {"date": "2026-12-01T21:00:00+00:00", "cpu_model": "cpu", "architecture": "x86_64",
               "usable_cores": 2, "memory_gb": 24, "os": "Linux", "load_average": [3.0, 2.0, 1.0]}
    md = markdown(r, {"fps": 50.0, "cells": 10, "end_reason": "reached the frame limit (8000)"}, machine,
                  [4.0, 3.0, 2.0], "python -m hemaedge.benchmarks.tools.soak --frames 8000", 160.0)
    assert "python -m hemaedge.benchmarks.tools.soak --frames 8000" in md and "load average 3 at start" in md
    assert "| yes |" in md


def test_the_reading_tells_load_from_a_slower_run():
    from hemaedge.benchmarks.tools.soak import _reading

    base = analyse(rows(), 1000, 500, 5, 0.15)
    loaded = dict(base, verdict=dict(base["verdict"], no_latency_drift=False),
                  total_ms=dict(base["total_ms"], p10_first_quarter=6.0, p10_last_quarter=6.1),
                  cpu_ms_per_frame={"first_quarter": 9.8, "last_quarter": 10.1})
    assert "did not drift" in _reading(loaded)[0]
    slower = dict(loaded, cpu_ms_per_frame={"first_quarter": 9.8, "last_quarter": 14.0})
    assert "slowed down" in _reading(slower)[0]
    assert _reading(base) == []  # nothing to explain when the check passes
