"""Calibrate a bundle's two OOD levels on its own device outputs over the training domain's
validation split, and (with --write) store them in the bundle's manifest `ood` section.

    python -m hemaedge.benchmarks.tools.ood_calibrate --bundle src/hemaedge/models/default --write

Every BloodMNIST-128 val image (the training domain; never BCCD or a test split) goes through
the bundle exactly as on the device (`prepare_batch` + the backend, with the bundle's
temperature); `edge.confidence.ood_section` then sets the review level (`threshold`, the score
95 % of the correctly classified cells stay below) and the unidentified level
(`unidentified_threshold`, 99.5 %). Training writes the same section from the float model's
outputs; this tool re-derives it from the exported (int8) model the device runs, and upgrades a
bundle exported before the two tiers. The manifest's other sections and the model file are
untouched (the files' checksums stay valid). Writes benchmarks/results/ood_calibrate_NAME.{json,md}.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.pbc_end_to_end import class_index
from hemaedge.benchmarks.tools.result_files import result_name, write_result
from hemaedge.benchmarks.tools.segmentation_bccd import machine
from hemaedge.edge.atomic import atomic_write_json
from hemaedge.edge.confidence import DEFAULT_QUANTILE, UNIDENTIFIED_QUANTILE, ood_scores, ood_section
from hemaedge.edge.domain import ood_limit
from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
from hemaedge.edge.tta import VIEW_SETS, bundle_views, predict_views

RESULTS = Path(__file__).resolve().parents[1] / "results"


def val_probabilities(bundle, backend, val_dir: Path, views=(0,), batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's probabilities (averaged over `views`, `edge.tta`) and the labels (bundle class
    indices) of every val image."""
    classes = sorted(p.name for p in val_dir.iterdir() if p.is_dir())
    idx = class_index(list(bundle.classes), classes)
    files = [(f, idx[c]) for c in classes for f in sorted((val_dir / c).glob("*.jpg"))]
    out = []
    for i in tqdm(range(0, len(files), batch), desc="val", unit="batch"):
        batch_x = prepare_batch([read_image_rgb(f) for f, _ in files[i:i + batch]], bundle.contract)
        out.append(predict_views(backend.predict, batch_x, views))
    return np.concatenate(out), np.array([y for _, y in files])


def calibrate(probs: np.ndarray, labels: np.ndarray, quantile: float, unidentified_quantile: float) -> dict:
    sec = ood_section(probs, labels, quantile, unidentified_quantile)
    sec["calibrated_on"] = "BloodMNIST-128 val, the bundle's own outputs (benchmarks/tools/ood_calibrate.py)"
    return sec


def tier_rates(probs: np.ndarray, labels: np.ndarray, sec: dict) -> dict:
    s = ood_scores(probs)
    right = probs.argmax(1) == labels
    rate = lambda m, t: round(float(np.mean(s[m] > t)), 4) if m.any() else None
    return {"cells": int(len(s)), "right": int(right.sum()), "wrong": int((~right).sum()),
            "right_above_review": rate(right, sec["threshold"]), "wrong_above_review": rate(~right, sec["threshold"]),
            "right_above_unidentified": rate(right, sec["unidentified_threshold"]),
            "wrong_above_unidentified": rate(~right, sec["unidentified_threshold"])}


def to_markdown(r: dict) -> str:
    o, n, t = r["ood"], r.get("previous") or {}, r["rates"]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    return "\n".join([
        f"# OOD levels of `{r['bundle']}` ({r['date']})", "",
        f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
        f"Bundle: {r['bundle_name']}; BloodMNIST-128 val, {t['cells']} images ({t['right']} right, {t['wrong']} "
        f"wrong, accuracy {100 * r['accuracy']:.2f}%), the bundle's own (int8, temperature-scaled) outputs with "
        f"test-time views `{o['views']}`. Score: -log of the top probability.", "",
        "| level | quantile of right val cells | score | top probability below | right val cells above | wrong val cells above |",
        "|---|---|---|---|---|---|",
        f"| review (counted, flagged) | {o['quantile']:g} | {o['threshold']:.6f} | {np.exp(-o['threshold']):.4f} | "
        f"{pct(t['right_above_review'])} | {pct(t['wrong_above_review'])} |",
        f"| unidentified (not counted) | {o['unidentified_quantile']:g} | {o['unidentified_threshold']:.6f} | "
        f"{np.exp(-o['unidentified_threshold']):.4f} | {pct(t['right_above_unidentified'])} | "
        f"{pct(t['wrong_above_unidentified'])} |", "",
        f"Previous section: threshold {n.get('threshold')} at quantile {n.get('quantile')} "
        f"({n.get('calibrated_on', 'from training, float model outputs')}); "
        f"{'written to the manifest' if r['written'] else 'manifest not changed (no --write)'}. Run-level OOD "
        f"limit (domain.ood, mean of {r['domain_ood']['group']} cells): val mean {r['domain_ood']['val_mean']}, "
        f"limit {r['domain_ood']['limit']}.", ""])


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--bloodmnist128", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default="../shared/data/bloodmnist128", show_default=True)
@click.option("--quantile", type=click.FloatRange(0.5, 1.0, max_open=True), default=DEFAULT_QUANTILE, show_default=True)
@click.option("--unidentified-quantile", type=click.FloatRange(0.5, 1.0, max_open=True), default=UNIDENTIFIED_QUANTILE,
              show_default=True)
@click.option("--views", type=click.Choice(["auto", *VIEW_SETS]), default="auto", show_default=True,
              help="Test-time views the levels are set for (auto: the bundle's inference.views); with --write "
                   "they become the bundle's inference.views, so the levels match what the device runs.")
@click.option("--write", is_flag=True, help="Store the levels (ood), the views (inference.views) and the run-level "
                                            "OOD limit (domain.ood) in the bundle's manifest.json.")
@click.option("--name", default=None, help="Result file suffix [default: 'default' for the packaged default bundle, else the bundle folder's name, so another bundle never overwrites the default's table].")
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(bundle, bloodmnist128, quantile, unidentified_quantile, views, write, name, threads, out):
    """Set a bundle's OOD review and unidentified levels on BloodMNIST val (its own outputs)."""
    name = name or result_name(bundle)
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle

    if unidentified_quantile < quantile:
        raise click.BadParameter("must be at least --quantile", param_hint="--unidentified-quantile")
    b = load_bundle(bundle)
    views_name, view_ids = bundle_views(b.manifest, views)
    probs, labels = val_probabilities(b, load_backend(b, threads=threads), bloodmnist128 / "val", view_ids)
    sec = calibrate(probs, labels, quantile, unidentified_quantile)
    sec["views"] = views_name
    previous = b.manifest.get("ood")
    run_limit = ood_limit(ood_scores(probs))
    if write:
        path = Path(bundle) / "manifest.json"
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["ood"] = sec
        manifest["inference"] = {**(manifest.get("inference") or {}), "views": views_name}
        if isinstance(manifest.get("domain"), dict):
            manifest["domain"]["ood"] = run_limit
        atomic_write_json(path, manifest)
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "bundle": str(bundle),
              "bundle_name": b.manifest.get("name"), "ood": sec, "domain_ood": run_limit,
              "accuracy": round(float(np.mean(probs.argmax(1) == labels)), 4), "previous": previous, "written": bool(write),
              "rates": tier_rates(probs, labels, sec),
              "command": "python -m hemaedge.benchmarks.tools.ood_calibrate " + " ".join(
                  [f"--bundle {bundle}", f"--quantile {quantile:g}", f"--unidentified-quantile {unidentified_quantile:g}",
                   f"--views {views}", *(["--write"] if write else []), f"--name {name}"])}
    write_result(out / f"ood_calibrate_{name}", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
