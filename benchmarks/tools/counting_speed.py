"""Speed and memory of a whole `edge run` with the counting stages, beside the pipeline before
them, measured in one run on the same frames (interleaved, so machine load hits all alike).

    git worktree add --detach /tmp/hemaedge-main main     # the code before issue 12
    python -m hemaedge.benchmarks.tools.counting_speed --baseline-src /tmp/hemaedge-main \\
        --source ../shared/data/bccd/JPEGImages --frames 200 --repeats 3

Three pipelines: *before* (the baseline checkout), *fields* (this code on an image folder:
per-field ruler, kind/class rules, differential) and *tracking* (this code with `--same-slide`:
stage motion, focus gate and tracker as on a live feed). Each is run as its own process
(`hemaedge edge run -q --threads 2`), so peak RSS is the whole process's. Then
`--stage-rounds` rounds of `counting_stages --threads 1` per pipeline (one thread, short runs,
interleaved): CPU per frame and per stage, the figure that a machine shared by many jobs
distorts least (two-thread runs there burn CPU in workers waiting for a descheduled partner).
Results: benchmarks/results/counting_speed.{json,md}.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import machine

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUN = "import sys; sys.argv[0] = 'hemaedge'; from hemaedge.cli import main; main()"


def bundle_name(checkout: Path) -> str:
    """The name of a checkout's packaged default bundle (which weights a pipeline ran)."""
    try:
        return json.loads((checkout / "src" / "hemaedge" / "models" / "default" / "manifest.json").read_text())["name"]
    except (OSError, ValueError, KeyError):
        return "unknown"


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


def _short_commit(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"


def run_once(kind: str, source: str, frames: int, out: Path, pythonpath: str | None) -> dict:
    args = ["edge", "run", "-q", "--source", source, "--max-frames", str(frames), "--threads", "2", "--out", str(out)]
    if kind == "tracking":
        args.append("--same-slide")
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", RUN, *args], check=True, env=env, capture_output=True, text=True)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    s = json.loads((out / "summary.json").read_text())
    lat = s["latency_ms"]
    return {"total_p50": lat["total"]["p50"], "total_p90": lat["total"]["p90"],
            "segment_p50": lat["segment"]["p50"], "inference_p50": lat["inference"]["p50"],
            "preprocess_p50": lat["preprocess"]["p50"], "fps": s["fps"], "peak_rss_mb": s["memory_mb"]["peak"],
            "cells_per_frame": round(s["cells"] / max(1, s["frames"]), 2), "cpu_s": round(cpu_s, 3),
            "frames_run": s["frames"]}


def cpu_per_frame(run: dict, startup_cpu_s: float) -> float | None:
    """CPU ms per frame of a whole run, its start-up (a 1-frame run's CPU time) taken off: far less
    sensitive to the load of a shared machine than wall-clock latency."""
    n = run.get("frames_run", 0) - 1
    return round(1e3 * (run["cpu_s"] - startup_cpu_s) / n, 2) if n > 0 else None


STAGES_TOOL = Path(__file__).resolve().parent / "counting_stages.py"


def stage_cpu(base_path: str, source: str, frames: int, repeats: int, tmp: Path,
              before_bundle: Path | None = None, previous: tuple[str, str] | None = None) -> dict:
    """Single-thread CPU ms per frame of the pipeline before (image folder) and now (image folder,
    one slide), from `counting_stages --threads 1`: one thread (OpenCV and the model), so no worker
    thread burns CPU waiting for a descheduled partner; short runs, interleaved, `repeats` rounds.
    `before_bundle`: the baseline's packaged model, also run by this code with tracking (the
    pipeline's own cost apart from the model's: the default now has colour normalisation and two
    test-time views, the baseline's neither). `previous`: (commit, linked package) of an earlier
    version of this code, also run with tracking: what a change of this pipeline saved, measured
    in the same rounds (the load moves the ratio to `before` by more than one pass saves)."""
    jobs = {"before": (base_path, "folder", None), "fields": (None, "folder", None), "tracking": (None, "slide", None)}
    if before_bundle is not None:
        jobs["tracking, before's model"] = (None, "slide", before_bundle)
    if previous is not None:
        jobs[f"tracking, code of {previous[0]}"] = (previous[1], "slide", None)
    out = {name: [] for name in jobs}
    for k in range(repeats):
        for name, (pythonpath, mode, bundle) in jobs.items():
            env = dict(os.environ)
            if pythonpath:
                env["PYTHONPATH"] = pythonpath
            js = tmp / f"stages-{k}-{len(out[name])}-{mode}-{'own' if bundle is None else 'base'}.json"
            proc = subprocess.run([sys.executable, str(STAGES_TOOL), "--source", source, "--frames", str(frames),
                                   "--threads", "1", "--mode", mode, "--json", str(js),
                                   *(["--bundle", str(bundle)] if bundle is not None else [])],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise click.ClickException(f"counting_stages ({name}) failed:\n{proc.stderr[-2000:]}")
            (mode_result,) = json.loads(js.read_text())["modes"].values()
            out[name].append(mode_result)
        click.echo("single-thread CPU round {}: ".format(k + 1)
                   + ", ".join(f"{n} {v[-1]['total_ms']:.2f} ms/frame" for n, v in out.items()))
    return out


def stage_markdown(r: dict) -> list[str]:
    st = r.get("stage_cpu")
    if not st:
        return []
    before = np.median([x["total_ms"] for x in st["before"]])
    before_best = min(x["total_ms"] for x in st["before"])
    lines = ["", f"## Single-thread CPU per frame (`counting_stages --threads 1`, {r['stage_frames']} frames, "
             f"{len(st['before'])} rounds)", "",
             "One thread per pipeline (OpenCV and the model): the work per frame, without worker threads that burn "
             "CPU waiting for a descheduled partner on a loaded machine; short runs, interleaved round by round. "
             "Stages of the median round; `classify` = prepare_batch + model call. `best`: the cheapest round "
             "(another job on the machine only adds CPU time to a round: cache and core sharing), a steadier "
             "ratio than the medians' when the load moves. Cells/frame: detections per frame, in brackets those the "
             "model classified (since 2026-12-04 `edge run` leaves cells cut by the frame edge unclassified).", "",
             "| pipeline | CPU ms/frame (rounds) | median | vs before | best | best vs before | stages (ms/frame) "
             "| cells/frame (classified) | fingerprint |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in st.items():
        totals = [x["total_ms"] for x in runs]
        med = sorted(runs, key=lambda x: x["total_ms"])[len(runs) // 2]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in med["stages_ms"].items())
        lines.append(f"| {name} | {' / '.join(f'{t:.2f}' for t in totals)} | {np.median(totals):.2f} | "
                     f"{np.median(totals) / before:.2f}x | {min(totals):.2f} | {min(totals) / before_best:.2f}x | "
                     f"{stages} | {med['cells_per_frame']} ({med.get('classified_per_frame', med['cells_per_frame'])}) | "
                     f"{med['fingerprint'][:12]} |")
    return lines


def to_markdown(r: dict) -> str:
    lines = [f"# Whole `edge run` speed with the counting stages ({r['date']})", "", f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']}; load average at start {r['load_average']}  ",
             f"Baseline (*before*): commit {r.get('baseline_commit', 'not recorded')}, the pipeline before the counting stages.  ",
             f"Weights: before = that checkout's packaged default ({r.get('bundles', {}).get('before', 'not recorded')}); "
             f"fields, tracking = this checkout's ({r.get('bundles', {}).get('now', 'not recorded')}).  ",
             f"Frames: {r['frames']} of `{r['source']}` per run, {r['repeats']} runs per pipeline, interleaved. "
             "Absolute times are noisy on this shared machine; compare the rows, measured side by side.", "",
             "CPU ms/frame: the run's CPU time (user + system, all threads) less a 1-frame run's (start-up), "
             "per frame after the first; it depends much less on the machine's load than the wall-clock p50.", "",
             "| pipeline | total p50 ms (runs) | median of runs | segment p50 | preprocess p50 | inference p50 | frames/s | "
             "CPU ms/frame | peak RSS MB | cells/frame |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in r["pipelines"].items():
        med = lambda k: f"{np.median([x[k] for x in runs]):.2f}"
        cpu = [x["cpu_ms_per_frame"] for x in runs if x.get("cpu_ms_per_frame") is not None]
        cpu_med = lambda runs: f"{np.median(cpu):.2f}" if cpu else "-"
        each = " / ".join(f"{x['total_p50']:.1f}" for x in runs)
        lines.append(f"| {name} | {each} | {med('total_p50')} | "
                     f"{med('segment_p50')} | {med('preprocess_p50')} | {med('inference_p50')} | {med('fps')} | "
                     f"{cpu_med(runs)} | "
                     f"{max(x['peak_rss_mb'] for x in runs):.1f} | {runs[0]['cells_per_frame']} |")
    lines += stage_markdown(r)
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--baseline-src", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A checkout of the code to compare against (e.g. `git worktree add --detach DIR main`).")
@click.option("--source", default="../shared/data/bccd/JPEGImages", show_default=True)
@click.option("--frames", default=200, show_default=True, type=click.IntRange(1))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--stage-rounds", default=3, show_default=True, type=click.IntRange(0, 20),
              help="Rounds of the single-thread CPU comparison (counting_stages; 0: none).")
@click.option("--stage-frames", default=100, show_default=True, type=click.IntRange(1))
@click.option("--previous-src", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A checkout of an earlier version of this code: one more single-thread row, with tracking.")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(baseline_src, source, frames, repeats, stage_rounds, stage_frames, previous_src, out):
    """Per-frame latency and peak memory: before the counting stages, with them, and with tracking."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    res = {"before": [], "fields": [], "tracking": []}
    with tempfile.TemporaryDirectory(prefix="hemaedge-speed-") as tmp:
        base_path = str(baseline_package(baseline_src.resolve(), Path(tmp) / "pkg"))
        previous = None
        if previous_src:
            previous = (_short_commit(previous_src), str(baseline_package(previous_src.resolve(), Path(tmp) / "previous")))
        startup = {name: run_once(name, source, 1, Path(tmp) / f"{name}-startup", base_path if name == "before" else None)["cpu_s"]
                   for name in res}
        for k in range(repeats):
            for name in res:
                r = run_once(name, source, frames, Path(tmp) / f"{name}-{k}", base_path if name == "before" else None)
                r["cpu_ms_per_frame"] = cpu_per_frame(r, startup[name])
                res[name].append(r)
                click.echo(f"{name} run {k + 1}: total p50 {r['total_p50']} ms, peak {r['peak_rss_mb']} MB")
        base_bundle = baseline_src.resolve() / "src/hemaedge/models/default"
        stages = stage_cpu(base_path, source, stage_frames, stage_rounds, Path(tmp),
                           base_bundle if (base_bundle / "manifest.json").exists() else None,
                           previous) if stage_rounds else None
    commit = _short_commit(baseline_src)
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "baseline_commit": commit,
              "load_average": [round(v, 2) for v in load] if load else None,
              "command": f"python -m hemaedge.benchmarks.tools.counting_speed --baseline-src <checkout of {commit}> "
                         f"--source {source} --frames {frames} --repeats {repeats} --stage-rounds {stage_rounds} "
                         f"--stage-frames {stage_frames}"
                         + (f" --previous-src <checkout of {previous[0]}>" if previous_src else ""),
              "source": source, "frames": frames, "repeats": repeats, "startup_cpu_s": startup, "pipelines": res,
              "stage_frames": stage_frames, "stage_cpu": stages,
              "bundles": {"before": bundle_name(baseline_src), "now": bundle_name(Path(__file__).resolve().parents[2])}}
    write_result(out / "counting_speed", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
