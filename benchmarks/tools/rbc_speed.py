"""Speed of red-cell analysis on whole frames, and what it adds to the white-cell pipeline.

    python -m hemaedge.benchmarks.tools.rbc_speed --rbc BUNDLE [--rbc OTHER ...] --chula ../shared/data/chula_rbc12 \
        [--bccd ../shared/data/bccd] [--frames 40] [--threads 2]

Per frame, in the same process and interleaved (so both see the same machine load):
  * the white-cell pipeline alone (`CellClassifier.process`, packaged default bundle unless
    --bundle): segment + crop + classify;
  * the same with red cells (`--rbc` path): + detect red cells + cut + classify them in one batch.
Reported: p50/p90 of each stage, the added time (with - without), red cells per frame, and the
per-red-cell classification cost; rows for all frames and for frames with 30-60 red cells (the
issue's reference frame). Wall clock on a shared machine: compare rows, not machines. Several
--rbc bundles (e.g. a candidate and the packaged one) run interleaved frame by frame too, and the
table gives each one's red-cell time as a ratio of the first's, measured under the same load.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import click
import numpy as np

from hemaedge.benchmarks.machine import describe_machine, one_line
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.edge.preprocess import read_image_rgb

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _frames(chula: Path | None, bccd: Path | None, n: int):
    out = []
    if chula:
        from hemaedge.train.rbc_crops import chula_frames

        out += [("chula", f.image) for f in chula_frames(chula, "test")[:n]]
    if bccd:
        from hemaedge.benchmarks.tools.segmentation_bccd import frame_ids

        out += [("bccd", bccd / "JPEGImages" / f"{i}.jpg") for i in frame_ids(bccd, "test")[:n]]
    return out


def _p(values, q):
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def measure(frames, wbc_model, rbc_models: dict, backends: dict, warmup: int = 3,
            without_layer: frozenset = frozenset()) -> list[dict]:
    """`rbc_models`: name -> red-cell model; `backends`: (name, threads) -> (white-cell back end,
    red-cell back end). Every frame runs through every setting, white-only and with red cells, one
    right after the other (same load), in the reverse order on every other frame. Names in `without_layer` run without the bundle's size layer."""
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.rbc_morphology import RedCellClassifier

    pipes = {key: (CellClassifier(wbc_model, wb),
                   CellClassifier(wbc_model, wb, red_cells=RedCellClassifier(rbc_models[key[0]], rb,
                                                                             layer=key[0] not in without_layer)))
             for key, (wb, rb) in backends.items()}
    rows = []
    images = [(src, path, read_image_rgb(path)) for src, path in frames]
    for src, path, img in images[:warmup]:
        for plain, with_rbc in pipes.values():
            plain.process(img), with_rbc.process(img)
    settings = list(pipes.items())
    for k, (src, path, img) in enumerate(images):
        # every other frame in the reverse order: no setting always runs first on a frame (cold caches)
        for (name, threads), (plain, with_rbc) in (settings if k % 2 == 0 else settings[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            plain.process(img)
            t1, c1 = time.perf_counter(), time.process_time()
            res = with_rbc.process(img)
            t2, c2 = time.perf_counter(), time.process_time()
            rows.append({"source": src, "frame": path.name, "rbc": name, "threads": threads, "width": img.shape[1],
                         "height": img.shape[0], "red_cells": len(res.red.cells), "white_ms": (t1 - t0) * 1e3,
                         "with_rbc_ms": (t2 - t1) * 1e3, "white_cpu_ms": (c1 - c0) * 1e3,
                         "with_rbc_cpu_ms": (c2 - c1) * 1e3, **{k: v for k, v in res.red.timings_ms.items()}})
    return rows


def table(rows) -> dict:
    cols = ("white_ms", "rbc_detect", "rbc_preprocess", "rbc_inference", "rbc_total", "with_rbc_ms")
    out = {"frames": len(rows), "red_cells_median": _p([r["red_cells"] for r in rows], 50) if rows else None}
    for c in cols:
        v = [r[c] for r in rows]
        out[c] = {"p50": _p(v, 50), "p90": _p(v, 90)}
    added = [r["with_rbc_ms"] - r["white_ms"] for r in rows]
    out["added_ms"] = {"p50": _p(added, 50), "p90": _p(added, 90)}
    added_cpu = [r["with_rbc_cpu_ms"] - r["white_cpu_ms"] for r in rows]
    out["added_cpu_ms"] = {"p50": _p(added_cpu, 50), "p90": _p(added_cpu, 90)}
    out["white_cpu_ms"] = {"p50": _p([r["white_cpu_ms"] for r in rows], 50)}
    per_cell = [(r["rbc_preprocess"] + r["rbc_inference"]) / r["red_cells"] for r in rows if r["red_cells"]]
    out["classify_ms_per_red_cell_p50"] = _p(per_cell, 50)
    layer = [r.get("rbc_layer", 0.0) for r in rows]
    out["rbc_layer"] = {"p50": _p(layer, 50), "p90": _p(layer, 90)}
    return out


def markdown(rep) -> str:
    lines = [f"# Red-cell analysis speed ({rep['date']})", "", f"Command: `{rep['command']}`  ",
             f"Machine: {rep['machine']}  ", f"Load average at start / end: {rep['load_start']} / {rep['load_end']}  ",
             f"White-cell model: {rep['wbc_model']}  ",
             *(f"Red-cell model `{name}`: {desc}  " for name, desc in rep["rbc_models"].items()),
             f"Threads: {', '.join(map(str, rep['threads']))}. Wall clock on a shared 2-core machine: absolute numbers are noisy; "
             "the white-only and with-red-cells timings are interleaved frame by frame, so their difference is fair.", "",
             "CPU ms = process CPU time (all threads), far less sensitive to other processes than wall clock: with "
             "--threads 1 it is what the stage would take alone on one core.", "",
             "| red-cell model | frames | threads | n | red cells/frame (median) | white pipeline p50 ms | red-cell detect p50 | red-cell crop+preprocess p50 | "
             "red-cell inference p50 | red-cell total p50 (p90) | added to the frame p50 (p90) | classify ms per red cell | "
             "white pipeline CPU ms p50 | added CPU ms p50 (p90) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in rep["tables"].items():
        if not t["frames"]:
            continue
        lines.append(f"| {t['rbc']} | {t['name']} | {t['threads']} | {t['frames']} | {t['red_cells_median']:.0f} | {t['white_ms']['p50']} | "
                     f"{t['rbc_detect']['p50']} | {t['rbc_preprocess']['p50']} | {t['rbc_inference']['p50']} | "
                     f"{t['rbc_total']['p50']} ({t['rbc_total']['p90']}) | {t['added_ms']['p50']} ({t['added_ms']['p90']}) | "
                     f"{t['classify_ms_per_red_cell_p50']} | {t['white_cpu_ms']['p50']} | "
                     f"{t['added_cpu_ms']['p50']} ({t['added_cpu_ms']['p90']}) |")
    if len(rep["rbc_models"]) > 1:
        first = next(iter(rep["rbc_models"]))
        lines += ["", f"Red-cell total p50 as a ratio of `{first}`'s on the same frames (interleaved, same load):", ""]
        for t in rep["tables"].values():
            base = rep["tables"].get(f"{first}, {t['name']}, {t['threads']} threads")
            if t["rbc"] != first and t["frames"] and base and base["rbc_total"]["p50"]:
                lines.append(f"- `{t['rbc']}`, {t['name']}, {t['threads']} threads: "
                             f"{t['rbc_total']['p50'] / base['rbc_total']['p50']:.2f}x "
                             f"(inference {t['rbc_inference']['p50'] / base['rbc_inference']['p50']:.2f}x)")
    layered = [t for t in rep["tables"].values() if t.get("rbc_layer") and t["rbc_layer"]["p50"]]
    if layered:
        lines += ["", "Size layer (edge/rbc_layer.py, inside the red-cell total), ms per frame p50 (p90):", ""]
        lines += [f"- `{t['rbc']}`, {t['name']}, {t['threads']} threads: {t['rbc_layer']['p50']} ({t['rbc_layer']['p90']})"
                  for t in layered]
    lines += ["", "Goal (issue 15): red-cell analysis of a 640x480 frame with 30-60 red cells <= 30 ms p50 with the int8 model."]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--rbc", "rbc_bundles", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Red-cell bundle; repeat to compare (interleaved; ratios against the first).")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="White-cell bundle (default: the packaged default).")
@click.option("--chula", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--bccd", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--frames", "n", default=40, show_default=True, help="Frames per data set (test split).")
@click.option("--threads", "threads", type=click.IntRange(1), multiple=True,
              help="Inference threads; repeat to compare (each frame runs through every setting) "
                   "[default: all cores].")
@click.option("--without-layer", is_flag=True,
              help="Also run each --rbc bundle that has a size layer without it (what the layer costs).")
@click.option("--out", "prefix", type=click.Path(path_type=Path), default=RESULTS / "rbc_speed", show_default=True)
def main(rbc_bundles, bundle, chula, bccd, n, threads, without_layer, prefix):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.defaults import load_model

    if not (chula or bccd):
        raise click.UsageError("pass --chula and/or --bccd")
    wbc = load_model(bundle)
    names = [b.name if b.name != "rbc" else "packaged" for b in rbc_bundles]
    if len(set(names)) != len(names):
        raise click.UsageError("two --rbc bundles share a folder name; give each its own")
    rbc = {name: load_bundle(b) for name, b in zip(names, rbc_bundles)}
    bare = frozenset(f"{name} without layer" for name, m in rbc.items()
                     if without_layer and (m.manifest.get("red_cells") or {}).get("layer"))
    rbc.update({name: rbc[name[:-len(" without layer")]] for name in bare})
    threads = tuple(threads) or (os.cpu_count() or 1,)
    load_start = [round(v, 2) for v in os.getloadavg()]
    rows = measure(_frames(chula, bccd, n), wbc, rbc,
                   {(name, t): (load_backend(wbc, threads=t), load_backend(m, threads=t))
                    for name, m in rbc.items() for t in threads}, without_layer=bare)
    rep = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": one_line(describe_machine()),
           "load_start": load_start, "load_end": [round(v, 2) for v in os.getloadavg()],
           "command": "python -m hemaedge.benchmarks.tools.rbc_speed" + "".join(f" --rbc {b}" for b in rbc_bundles) + (" --chula CHULA" if chula else "")
                      + (" --bccd BCCD" if bccd else "") + f" --frames {n}" + "".join(f" --threads {t}" for t in threads)
                      + (" --without-layer" if without_layer else ""),
           "threads": list(threads), "wbc_model": wbc.describe(),
           "rbc_models": {name: m.describe() for name, m in rbc.items()},
           "tables": {}, "rows": rows}
    for model in rbc:
        for t in threads:
            mine = [r for r in rows if r["threads"] == t and r["rbc"] == model]
            for name, sel in (("chula", [r for r in mine if r["source"] == "chula"]),
                              ("bccd", [r for r in mine if r["source"] == "bccd"]),
                              ("30-60 red cells", [r for r in mine if 30 <= r["red_cells"] <= 60])):
                rep["tables"][f"{model}, {name}, {t} threads"] = {"rbc": model, "name": name, "threads": t, **table(sel)}
    write_result(prefix, rep, markdown(rep))
    click.echo(markdown(rep))


if __name__ == "__main__":
    main()
