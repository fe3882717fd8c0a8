"""Where the device's time goes: each call of the per-cell preprocessing, and every function of a
whole counting run, on real BCCD frames with the packaged default bundle.

    python -m hemaedge.benchmarks.tools.speed_profile --frames 60
    python -m hemaedge.benchmarks.tools.speed_profile --baseline-src DIR   # the same beside a checkout

1. **Per cell** (`--frames` frames, every crop `edge run` cuts from them, `--repeat` rounds, best
   round per call): thread CPU time (`time.thread_time`, OpenCV at one thread: the work itself,
   far steadier than wall-clock on a shared machine) of each step of `prepare_batch` with the
   bundle's input contract, called as the device calls them: resize to the input side, the
   colour normalisation (`normalize_colour`: RGB->Lab, anchors, table, Lab->RGB, and the
   anchors alone), CLAHE (`clahe`), the whole `apply_preprocess` and `prepare_batch` of the one
   crop, `prepare_batch_frame` (the crop's whole frame in one batch, as the device calls it:
   its time shared by that frame's crops), and the model call at batch 1 for scale.
2. **Per function**: cProfile of `CountingSession.process` over the same frames as one slide
   (stage motion, focus gate, running ruler, tracker: a live feed) and as an image folder; the
   functions with the most own time, per frame (cProfile's overhead inflates small Python
   functions: read the ranking, not the absolute figures).

With `--baseline-src` (a checkout, e.g. `git worktree add --detach DIR <commit>`), part 1 also runs
that checkout's code in a child process (round by round, interleaved), for a same-run ratio; steps
the checkout does not have are left out. Results: benchmarks/results/speed_profile.{md,json}.
"""
from __future__ import annotations

import cProfile
import datetime as dt
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"
HERE = Path(__file__).resolve()


def _crops(frames: int, source: Path):
    """The frames and every crop the device classifies in them (per-field ruler, as an image folder)."""
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.preprocess import read_image_rgb

    model = load_model(None)
    clf = CellClassifier(model, backend=None)
    images = [read_image_rgb(f) for f in sorted(source.glob("*.jpg"))[:frames]]
    if hasattr(clf, "find_cells"):
        per_frame = [clf.find_cells(img)[3] for img in images]
    else:  # an older checkout (--baseline-src): its segmentation and crops
        from hemaedge.edge.backends import load_backend
        from hemaedge.edge.segment import extract_crops

        clf = CellClassifier(model, load_backend(model, threads=1))
        per_frame = [extract_crops(img, clf.process(img).detections) for img in images]
    crops = [c for cs in per_frame for c in cs]
    frame_of = [i for i, cs in enumerate(per_frame) for _ in cs]  # the frame of each crop
    return model, images, crops, (per_frame, frame_of)


def per_cell(frames: int, source: Path, repeat: int) -> dict:
    """Thread-CPU ms per crop of each preprocessing step (p50 over crops of the best round)."""
    from hemaedge.edge import preprocess as pp
    from hemaedge.edge.backends import load_backend

    cv2.setNumThreads(1)
    model, _, crops, (per_frame, frame_of) = _crops(frames, source)
    contract = model.contract
    backend = load_backend(model, threads=1)
    size, spec = contract.size, contract.normalize
    resized = [pp.resize(c, size) for c in crops]
    labs = [cv2.cvtColor(r, cv2.COLOR_RGB2LAB) for r in resized]
    normalised = [pp.normalize_colour(r, spec) if spec else r for r in resized]
    steps = {  # name -> (what, call on crop index k)
        "resize": ("resize the crop to the input side (INTER_AREA)", lambda k: pp.resize(crops[k], size)),
        "rgb2lab": ("one RGB->Lab conversion (cv2.cvtColor)", lambda k: cv2.cvtColor(resized[k], cv2.COLOR_RGB2LAB)),
        "lab2rgb": ("one Lab->RGB conversion (cv2.cvtColor)", lambda k: cv2.cvtColor(labs[k], cv2.COLOR_LAB2RGB)),
        "clahe": (f"CLAHE on L (RGB->Lab, CLAHE {contract.clahe_clip}/{contract.clahe_tiles}, Lab->RGB)",
                  lambda k: pp.clahe(normalised[k], contract.clahe_clip, contract.clahe_tiles)),
        "batch_tensor": ("uint8 batch of 1 -> model input tensor", lambda k: pp.batch_tensor(resized[k][None], contract)),
        "apply_preprocess": ("the whole per-crop preprocessing", lambda k: pp.apply_preprocess(crops[k], contract)),
        "prepare_batch": ("`prepare_batch([crop])`: what a cell costs before the model", lambda k: pp.prepare_batch([crops[k]], contract)),
        "prepare_batch_frame": ("`prepare_batch` of the crop's whole frame (one batch, as the device calls it), "
                                "per crop of that frame", lambda k: pp.prepare_batch(per_frame[frame_of[k]], contract)),
        "model_call": ("model call, batch 1, 1 thread (for scale)", None),
    }
    if spec:
        steps["colour_anchors"] = ("normalisation: the crop's background / red-cell anchors (given its Lab)",
                                   lambda k: pp.colour_anchors(resized[k], lab=labs[k]))
        steps["normalize_colour"] = ("the whole colour normalisation (RGB->Lab, anchors, table, Lab->RGB)",
                                     lambda k: pp.normalize_colour(resized[k], spec))
        if contract.preprocess == "clahe" and "one_lab_pass" in pp.InputContract.__dataclass_fields__:  # (a baseline lacks it)
            one = pp.InputContract.from_dict({**contract.to_dict(), "one_lab_pass": True})
            steps["apply_preprocess_one_lab_pass"] = (
                "`apply_preprocess` with `one_lab_pass` (normalisation + CLAHE in one Lab conversion; "
                "not the default's pixels, see lab_round_trip.md)", lambda k: pp.apply_preprocess(crops[k], one))
    tensors = [pp.prepare_batch([c], contract) for c in crops]
    steps["model_call"] = (steps["model_call"][0], lambda k: backend.predict(tensors[k]))
    best = {name: np.full(len(crops), np.inf) for name in steps}
    shared = {"prepare_batch_frame": [len(per_frame[f]) for f in frame_of]}  # a call's crops share its time
    for _ in range(repeat):
        for name, (_, fn) in steps.items():
            t = best[name]
            for k in range(len(crops)):
                t0 = time.thread_time()
                fn(k)
                t[k] = min(t[k], (time.thread_time() - t0) / (shared[name][k] if name in shared else 1))
    return {"crops": len(crops), "crop_side_p50": float(np.median([c.shape[0] for c in crops])),
            "input_side": size, "normalize": bool(spec), "preprocess": contract.preprocess,
            "steps": {name: {"what": what, "p50_ms": round(float(np.median(best[name])) * 1e3, 4),
                             "mean_ms": round(float(np.mean(best[name])) * 1e3, 4)}
                      for name, (what, _) in steps.items()}}


def per_function(frames: int, source: Path, top: int) -> dict:
    """cProfile of CountingSession.process (one slide, then an image folder): top functions by own time."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.counting import CountingSession
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.sources import Frame

    cv2.setNumThreads(1)
    model, images, _, _ = _crops(frames, source)
    backend = load_backend(model, threads=1)
    CellClassifier(model, backend).process(images[0])  # warm-up: the model's one-off set-up
    out = {}
    for one_slide in (True, False):
        # as `edge run` builds it (cells cut by the frame edge are not classified)
        session = CountingSession(CellClassifier(model, backend, same_slide=one_slide, classify_cut_cells=False),
                                  one_slide=one_slide)
        prof = cProfile.Profile(time.thread_time)
        prof.enable()
        for i, img in enumerate(images):
            session.process(Frame(i, img, f"{i}.jpg", 0.0))
        prof.disable()
        st = pstats.Stats(prof)
        rows = []
        total = 0.0
        for (file, line, name), (cc, nc, tt, ct, _) in st.stats.items():
            total += tt
            rows.append({"function": f"{Path(file).name}:{line}({name})" if line else name,
                         "calls_per_frame": round(nc / len(images), 2), "own_ms_per_frame": tt / len(images) * 1e3,
                         "cumulative_ms_per_frame": ct / len(images) * 1e3})
        rows.sort(key=lambda r: -r["own_ms_per_frame"])
        for r in rows:
            r["own_ms_per_frame"] = round(r["own_ms_per_frame"], 3)
            r["cumulative_ms_per_frame"] = round(r["cumulative_ms_per_frame"], 3)
        out["one slide" if one_slide else "image folder"] = {"profiled_ms_per_frame": round(total / len(images) * 1e3, 2),
                                                             "top": rows[:top]}
    return out


def _baseline_rounds(baseline_src: Path, frames: int, source: Path, repeat: int, rounds: int, here: dict) -> dict:
    """Part 1 in a child process on the checkout's code, `rounds` times alternating with this code's."""
    from hemaedge.benchmarks.tools.counting_speed import baseline_package

    theirs, ours = [], [here]
    with tempfile.TemporaryDirectory(prefix="hemaedge-profile-") as tmp:
        pkg = baseline_package(baseline_src.resolve(), Path(tmp) / "pkg")
        for k in range(rounds):
            for who in ("baseline", "this") if k else ("baseline",):
                js = Path(tmp) / f"{who}-{k}.json"
                env = dict(os.environ)
                if who == "baseline":
                    env["PYTHONPATH"] = str(pkg)
                subprocess.run([sys.executable, str(HERE), "--child-cells", str(js), "--frames", str(frames),
                                "--source", str(source), "--repeat", str(repeat)], env=env, check=True,
                               stdout=subprocess.DEVNULL)
                (theirs if who == "baseline" else ours).append(json.loads(js.read_text()))
    return {"baseline": theirs, "this": ours}


def _median_steps(runs: list[dict]) -> dict:
    names = runs[0]["steps"]
    return {n: float(np.median([r["steps"][n]["p50_ms"] for r in runs if n in r["steps"]])) for n in names}


def to_markdown(r: dict) -> str:
    c = r["per_cell"]
    lines = [f"# Where the device's time goes ({r['date']})", "", f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']}; load average at start {r['load_average']} (a shared machine: absolute "
             "times are noisy; thread CPU time, one OpenCV thread, best of the rounds per call)  ",
             f"Weights: {r['bundle']} (the packaged default).  ",
             f"Data: the first {r['frames']} BCCD frames of `{r['source']}`, {c['crops']} crops (every cell `edge run` "
             f"classifies in them as an image folder; crop side p50 {c['crop_side_p50']:.0f} px, resized to "
             f"{c['input_side']} px).", "", "## Per cell: each step of the preprocessing (thread CPU ms per crop)", ""]
    base = r.get("baseline")
    if base:
        lines += [f"Baseline: checkout {base['commit']} ({len(base['runs'])} runs of its code, interleaved with "
                  f"{len(base['this_runs'])} of this code; median of the runs' p50).", "",
                  "| step | what | this code p50 | baseline p50 | baseline / this |", "|---|---|---|---|---|"]
        ours, theirs = base["this"], base["theirs"]
        for name, s in c["steps"].items():
            b = theirs.get(name)
            lines.append(f"| {name} | {s['what']} | {ours[name]:.3f} | {'-' if b is None else f'{b:.3f}'} | "
                         f"{'-' if b is None else f'{b / ours[name]:.2f}x'} |")
    else:
        lines += ["| step | what | p50 ms | mean ms |", "|---|---|---|---|"]
        for name, s in c["steps"].items():
            lines.append(f"| {name} | {s['what']} | {s['p50_ms']:.3f} | {s['mean_ms']:.3f} |")
    for mode, m in r["per_function"].items():
        lines += ["", f"## Per function: `CountingSession.process`, {mode} (cProfile, thread CPU)", "",
                  f"Profiled total {m['profiled_ms_per_frame']} ms per frame (cProfile's overhead included).", "",
                  "| function | calls/frame | own ms/frame | cumulative ms/frame |", "|---|---|---|---|"]
        lines += [f"| `{x['function']}` | {x['calls_per_frame']} | {x['own_ms_per_frame']:.3f} | "
                  f"{x['cumulative_ms_per_frame']:.3f} |" for x in m["top"]]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--source", default="../shared/data/bccd/JPEGImages", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--frames", default=60, show_default=True, type=click.IntRange(2))
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1, 50), help="Rounds per call (best kept).")
@click.option("--top", default=25, show_default=True, type=click.IntRange(1, 200))
@click.option("--baseline-src", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A checkout whose per-cell steps to time beside this code's (child processes, interleaved).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 20),
              help="With --baseline-src: runs of each side.")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
@click.option("--child-cells", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
def main(source, frames, repeat, top, baseline_src, rounds, out, child_cells):
    """Per-call CPU of the per-cell preprocessing and a cProfile of the counting pipeline."""
    if child_cells:  # one run of part 1 for --baseline-src (this file run by path under another checkout)
        child_cells.write_text(json.dumps(per_cell(frames, source, repeat)))
        return
    from hemaedge.benchmarks.tools.result_files import write_result
    from hemaedge.benchmarks.tools.segmentation_bccd import machine
    from hemaedge.edge.cli_support import command_line
    from hemaedge.edge.defaults import load_model

    load = [round(v, 2) for v in os.getloadavg()]
    cells = per_cell(frames, source, repeat)
    report = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "load_average": load, "command": command_line("python -m hemaedge.benchmarks.tools.speed_profile"),
              "bundle": load_model(None).manifest.get("name"), "source": str(source), "frames": frames,
              "per_cell": cells}
    if baseline_src:
        runs = _baseline_rounds(baseline_src, frames, source, repeat, rounds, cells)
        commit = subprocess.run(["git", "-C", str(baseline_src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
        report["baseline"] = {"commit": commit, "runs": runs["baseline"], "this_runs": runs["this"],
                              "theirs": _median_steps(runs["baseline"]), "this": _median_steps(runs["this"])}
    report["per_function"] = per_function(frames, source, top)
    write_result(out / "speed_profile", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
