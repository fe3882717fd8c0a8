"""Test-time views (`edge.tta`) of a bundle: accuracy and calibration on BloodMNIST-128 val and
test, and the per-cell cost, each view set measured in the same run.

    python -m hemaedge.benchmarks.tools.views_check --bundle src/hemaedge/models/default

For each view set (off = one view, flips = 4, dihedral = 8) every val and test image goes through
`prepare_batch` + the backend + `tta.predict_views`, exactly as `CellClassifier` runs a frame's
cells. Val is for choosing, test is reported. Cost: wall time of `predict_views` on batches of
`--batch` real prepared crops (a BCCD frame has ~2-3 cells), the view sets interleaved round by
round so machine load hits them alike; p50 per cell and the ratio to "off" in the same run.

Writes benchmarks/results/views_check_NAME.{json,md}.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.pbc_end_to_end import class_index
from hemaedge.benchmarks.tools.result_files import result_name, write_result
from hemaedge.benchmarks.tools.segmentation_bccd import machine
from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
from hemaedge.edge.tta import VIEW_SETS, predict_views
from hemaedge.train.evaluate import expected_calibration_error

RESULTS = Path(__file__).resolve().parents[1] / "results"


def split_tensors(bundle, root: Path, batch: int = 64):
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    idx = class_index(list(bundle.classes), classes)
    files = [(f, idx[c]) for c in classes for f in sorted((root / c).glob("*.jpg"))]
    xs = [prepare_batch([read_image_rgb(f) for f, _ in files[i:i + batch]], bundle.contract)
          for i in range(0, len(files), batch)]
    return xs, np.array([y for _, y in files])


def cost(backend, xs, view_sets: dict, batch: int, rounds: int) -> dict:
    cells = np.concatenate(xs)[: batch * rounds]
    times = {k: [] for k in view_sets}
    for r in range(rounds):
        b = cells[r * batch:(r + 1) * batch]
        for k, v in view_sets.items():
            t0 = time.perf_counter()
            predict_views(backend.predict, b, v)
            times[k].append((time.perf_counter() - t0) * 1e3 / len(b))
    base = float(np.median(times["off"]))
    return {k: {"p50_ms_per_cell": round(float(np.median(t)), 3), "ratio_to_off": round(float(np.median(t)) / base, 2)}
            for k, t in times.items()}


def to_markdown(r: dict) -> str:
    lines = [f"# Test-time views of `{r['bundle']}` ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Bundle: {r['bundle_name']} (int8); threads {r['threads']}; load average {r['load_end']} at the end. "
             "Views applied to the prepared input tensor (`edge.tta.predict_views`), probabilities averaged after "
             "the bundle's temperature. ECE: 15 equal-width bins (`train.evaluate.expected_calibration_error`). Cost: p50 wall ms per cell over "
             f"{r['rounds']} interleaved rounds of {r['batch']} real crops (noisy on this shared machine; the ratio "
             "is the figure to read).", "",
             "| views | model calls per cell | val accuracy | val ECE | test accuracy | test ECE | p50 ms per cell | ratio to off |",
             "|---|---|---|---|---|---|---|---|"]
    for k, v in r["views"].items():
        c = r["cost"][k]
        lines.append(f"| {k} | {v['calls']} | {100 * v['val']['accuracy']:.2f}% | {100 * v['val']['ece']:.2f}% | "
                     f"{100 * v['test']['accuracy']:.2f}% | {100 * v['test']['ece']:.2f}% | {c['p50_ms_per_cell']} | "
                     f"{c['ratio_to_off']}x |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--bloodmnist128", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default="../shared/data/bloodmnist128", show_default=True)
@click.option("--batch", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--rounds", type=click.IntRange(5, 10000), default=200, show_default=True)
@click.option("--name", default=None, help="Result file suffix [default: 'default' for the packaged default bundle, else the bundle folder's name, so another bundle never overwrites the default's table].")
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(bundle, bloodmnist128, batch, rounds, name, threads, out):
    """Accuracy, ECE and per-cell cost of each test-time view set of a bundle."""
    name = name or result_name(bundle)
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle

    b = load_bundle(bundle)
    backend = load_backend(b, threads=threads)
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "bundle": str(bundle),
              "bundle_name": b.manifest.get("name"), "threads": threads, "batch": batch, "rounds": rounds,
              "command": f"python -m hemaedge.benchmarks.tools.views_check --bundle {bundle} --batch {batch} "
                         f"--rounds {rounds} --name {name}", "views": {}}
    data = {s: split_tensors(b, bloodmnist128 / s) for s in ("val", "test")}
    for k, v in VIEW_SETS.items():
        row = {"calls": len(v)}
        for s, (xs, y) in data.items():
            p = np.concatenate([predict_views(backend.predict, x, v) for x in tqdm(xs, desc=f"{k} {s}", unit="batch")])
            row[s] = {"images": int(len(y)), "accuracy": round(float(np.mean(p.argmax(1) == y)), 4),
                      "ece": round(expected_calibration_error(y, p), 4)}
        report["views"][k] = row
    report["cost"] = cost(backend, data["val"][0], VIEW_SETS, batch, rounds)
    report["load_end"] = round(os.getloadavg()[0], 2)
    write_result(out / f"views_check_{name}", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
