"""Calibration of a bundle on BloodMNIST-128: ECE raw, the temperature fitted on val, ECE with it.

    python -m hemaedge.benchmarks.tools.bundle_calibration --bundle src/hemaedge/models/default --name default

The bundle runs as on the device (`prepare_batch` + its backend, with the manifest's own
temperature if it has one). T is fitted on the validation split only; the test split is scored
with that T for reporting. Also the confidence distribution (share of cells above 0.999999 and
the median top probability), to show over- or under-confidence. Writes
benchmarks/results/calibration_NAME.{json,md}.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import click
import numpy as np

from hemaedge.benchmarks.tools.pbc_end_to_end import class_index
from hemaedge.edge.atomic import atomic_write_text
from hemaedge.benchmarks.tools.segmentation_bccd import machine
from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
from hemaedge.edge.sources import IMAGE_EXTS

RESULTS = Path(__file__).resolve().parents[1] / "results"


def split_probs(bundle, backend, root: Path, split: str):
    idx = class_index(bundle.classes, [c for c in bundle.classes if (root / split / c).is_dir()])
    files, ys = [], []
    for c, i in idx.items():
        # any image tree: BloodMNIST's are .jpg, the red-cell crops (`hemaedge data rbc-crops`) .png
        f = sorted(p for p in (root / split / c).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        files += f
        ys += [i] * len(f)
    out = [backend.predict(prepare_batch([read_image_rgb(f) for f in files[k:k + 64]], bundle.contract))
           for k in range(0, len(files), 64)]
    return np.concatenate(out), np.array(ys)


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=lambda: os.environ.get("HEMAEDGE_BLOODMNIST128", "../shared/data/bloodmnist128"),
              show_default="../shared/data/bloodmnist128")
@click.option("--name", required=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(bundle, data, name, threads, out):
    """ECE of a bundle before/after temperature scaling fitted on val."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.train.evaluate import apply_temperature, expected_calibration_error, fit_temperature

    b = load_bundle(bundle)
    be = load_backend(b, threads=threads)
    res = {"date": dt.date.today().isoformat(), "machine": machine(), "bundle": str(bundle),
           "command": f"python -m hemaedge.benchmarks.tools.bundle_calibration --bundle {bundle} --name {name}",
           "manifest_temperature": b.manifest.get("output", {}).get("temperature")}
    p_val, y_val = split_probs(b, be, data, "val")
    t = fit_temperature(y_val, p_val)
    res["temperature_fitted_on_val"] = round(t, 4)
    for split, (p, y) in {"val": (p_val, y_val), "test": split_probs(b, be, data, "test")}.items():
        pt = apply_temperature(p, t)
        res[split] = {"n": int(len(y)), "accuracy": round(float((p.argmax(1) == y).mean()), 4),
                      "ece": round(expected_calibration_error(y, p), 4),
                      "ece_with_val_temperature": round(expected_calibration_error(y, pt), 4),
                      "median_top_probability": round(float(np.median(p.max(1))), 4),
                      "share_above_0.999999": round(float((p.max(1) > 0.999999).mean()), 4)}
    md = [f"# Calibration of `{bundle}` ({res['date']})", "", f"Command: `{res['command']}`  ",
          f"Machine: {res['machine']}  ", f"Temperature fitted on val: T = {t:.3f} (manifest temperature: "
          f"{res['manifest_temperature']})", "",
          "| split | n | accuracy | ECE raw | ECE with T | median top probability | share > 0.999999 |",
          "|---|---|---|---|---|---|---|"]
    for split in ("val", "test"):
        v = res[split]
        md.append(f"| {split} | {v['n']} | {100 * v['accuracy']:.2f}% | {100 * v['ece']:.2f}% | "
                  f"{100 * v['ece_with_val_temperature']:.2f}% | {v['median_top_probability']} | "
                  f"{100 * v['share_above_0.999999']:.1f}% |")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"calibration_{name}.json", json.dumps(res, indent=1))
    atomic_write_text(out / f"calibration_{name}.md", "\n".join(md) + "\n")
    click.echo("\n".join(md))


if __name__ == "__main__":
    main()
