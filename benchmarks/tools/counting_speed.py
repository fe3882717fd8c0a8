"""Speed and memory of a whole `edge run` with the counting stages, beside the pipeline before
them, measured in one run on the same frames (interleaved, so machine load hits all alike).

    git worktree add --detach /tmp/hemaedge-main main     # the code before issue 12
    python -m hemaedge.benchmarks.tools.counting_speed --baseline-src /tmp/hemaedge-main \\
        --source ../shared/data/bccd/JPEGImages --frames 200 --repeats 3

Three pipelines: *before* (the baseline checkout), *fields* (this code on an image folder:
per-field ruler, kind/class rules, differential) and *tracking* (this code with `--same-slide`:
stage motion, focus gate and tracker as on a live feed). Each is run as its own process
(`hemaedge edge run -q --threads 2`), so peak RSS is the whole process's. Results:
benchmarks/results/counting_speed.{json,md}.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

from hemaedge.benchmarks.tools.segmentation_bccd import machine, write_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUN = "import sys; sys.argv[0] = 'hemaedge'; from hemaedge.cli import main; main()"


def baseline_package(src: Path, where: Path) -> Path:
    """A `hemaedge` package folder made of links into a checkout (its src/hemaedge, edge/, ...),
    put first on PYTHONPATH so the baseline's code runs instead of the installed one."""
    pkg = where / "hemaedge"
    pkg.mkdir(parents=True, exist_ok=True)
    for f in (src / "src" / "hemaedge").iterdir():
        (pkg / f.name).symlink_to(f)
    for sub in ("edge", "train", "export", "benchmarks"):
        (pkg / sub).symlink_to(src / sub)
    return where


def run_once(kind: str, source: str, frames: int, out: Path, pythonpath: str | None) -> dict:
    args = ["edge", "run", "-q", "--source", source, "--max-frames", str(frames), "--threads", "2", "--out", str(out)]
    if kind == "tracking":
        args.append("--same-slide")
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    subprocess.run([sys.executable, "-c", RUN, *args], check=True, env=env, capture_output=True, text=True)
    s = json.loads((out / "summary.json").read_text())
    lat = s["latency_ms"]
    return {"total_p50": lat["total"]["p50"], "total_p90": lat["total"]["p90"],
            "segment_p50": lat["segment"]["p50"], "inference_p50": lat["inference"]["p50"],
            "preprocess_p50": lat["preprocess"]["p50"], "fps": s["fps"], "peak_rss_mb": s["memory_mb"]["peak"],
            "cells_per_frame": round(s["cells"] / max(1, s["frames"]), 2)}


def to_markdown(r: dict) -> str:
    lines = [f"# Whole `edge run` speed with the counting stages ({r['date']})", "", f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']}; load average at start {r['load_average']}  ",
             f"Frames: {r['frames']} of `{r['source']}` per run, {r['repeats']} runs per pipeline, interleaved. "
             "Absolute times are noisy on this shared machine; compare the rows, measured side by side.", "",
             "| pipeline | total p50 ms (runs) | median of runs | segment p50 | preprocess p50 | inference p50 | frames/s | peak RSS MB | cells/frame |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in r["pipelines"].items():
        med = lambda k: f"{np.median([x[k] for x in runs]):.2f}"
        each = " / ".join(f"{x['total_p50']:.1f}" for x in runs)
        lines.append(f"| {name} | {each} | {med('total_p50')} | "
                     f"{med('segment_p50')} | {med('preprocess_p50')} | {med('inference_p50')} | {med('fps')} | "
                     f"{max(x['peak_rss_mb'] for x in runs):.1f} | {runs[0]['cells_per_frame']} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--baseline-src", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A checkout of the code to compare against (e.g. `git worktree add --detach DIR main`).")
@click.option("--source", default="../shared/data/bccd/JPEGImages", show_default=True)
@click.option("--frames", default=200, show_default=True, type=click.IntRange(1))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(baseline_src, source, frames, repeats, out):
    """Per-frame latency and peak memory: before the counting stages, with them, and with tracking."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    res = {"before": [], "fields": [], "tracking": []}
    with tempfile.TemporaryDirectory(prefix="hemaedge-speed-") as tmp:
        base_path = str(baseline_package(baseline_src.resolve(), Path(tmp) / "pkg"))
        for k in range(repeats):
            for name in res:
                r = run_once(name, source, frames, Path(tmp) / f"{name}-{k}", base_path if name == "before" else None)
                res[name].append(r)
                click.echo(f"{name} run {k + 1}: total p50 {r['total_p50']} ms, peak {r['peak_rss_mb']} MB")
    report = {"date": dt.date.today().isoformat(), "machine": machine(),
              "load_average": [round(v, 2) for v in load] if load else None,
              "command": f"python -m hemaedge.benchmarks.tools.counting_speed --baseline-src <checkout of main> "
                         f"--source {source} --frames {frames} --repeats {repeats}",
              "source": source, "frames": frames, "repeats": repeats, "pipelines": res}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "counting_speed.json", json.dumps(report, indent=2))
    write_atomic(out / "counting_speed.md", to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
