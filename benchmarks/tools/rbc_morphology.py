"""Red-cell morphology on Chula RBC-12: the imbalance comparison (val) and the int8 bundle on the
device path (frame-level test split), next to the Chula paper's EfficientNet-B1.

    python -m hemaedge.benchmarks.tools.rbc_morphology --chula ../shared/data/chula_rbc12 \
        --crops CROPS --bundle src/hemaedge/models/rbc --runs RUN [RUN ...]

* Training runs (`hemaedge train finetune` folders with metrics.json): one row each, val and test
  of their Keras checkpoint; the imbalance handling is chosen on VAL macro-F1 only.
* `--compare BUNDLE` (repeatable): other bundles measured the same way on the same frames, one summary
  row each beside the bundle (e.g. the packaged bundle against a candidate, on val, to choose).
* The bundle, through the device's code (`prepare_batch` + the LiteRT/ONNX back end, no
  TensorFlow), two ways on the test frames:
    - "labelled crops": the test split of CROPS (crops centred on the labelled points);
    - "end to end": edge/rbc.py detects the red cells of each test frame, each labelled point
      takes the detection whose box holds it (nearest centre), that detection's crop is
      classified; points without a detection count as wrong (coverage is reported).
Metrics: accuracy (bootstrap 95% interval), macro-F1, kappa, per-class table (train/evaluate.py).
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import click
import numpy as np

from hemaedge.benchmarks.machine import describe_machine, one_line
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
from hemaedge.train.rbc_points import matched_points

RESULTS = Path(__file__).resolve().parents[1] / "results"
PAPER = {"model": "EfficientNet-B1 + augmentation (Naruenatthanaset et al., arXiv:2012.01321)",
         "accuracy": 0.921, "macro_f1": 0.868}


def _predict(backend, contract, images, batch=256) -> np.ndarray:
    out = [backend.predict(prepare_batch(images[i:i + batch], contract)) for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def labelled_crops(bundle, backend, crops: Path, split="test"):
    from hemaedge.train.datasets import open_dataset

    ds = open_dataset(crops)
    if list(ds.classes) != list(bundle.classes):
        raise click.UsageError(f"{crops} classes {list(ds.classes)} differ from the bundle's {bundle.classes}")
    images = [read_image_rgb(p) for p in ds.files(split)]
    return ds.split(split).labels, _predict(backend, bundle.contract, images)


def end_to_end(bundle, backend, chula: Path, split="test", scale="auto", layer=True):
    """(labels, probabilities, coverage) of the labelled points of the split's frames (`matched_points`);
    a point without a detection counts as a wrong answer. `layer=False`: without the bundle's size layer."""
    n_classes = len(bundle.classes)
    y, probs, found = [], [], 0
    for label, res, k, _ in matched_points(bundle, backend, chula, split, scale, layer):
        y.append(label)
        if k is None:  # missed cell: counted as a wrong answer
            wrong = np.zeros(n_classes)
            wrong[(label + 1) % n_classes] = 1.0
            probs.append(wrong)
        else:
            probs.append(res.probabilities[k])
            found += 1
    return np.asarray(y), np.asarray(probs), found / max(1, len(y))


def run_row(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    cfg = m.get("config", {})
    parts = [name for key, name in (("weighted_sampling", "weighted sampling"), ("weighted_loss", "weighted loss"))
             if cfg.get(key)]
    if cfg.get("loss") == "focal":
        parts.append(f"focal loss (gamma {cfg.get('focal_gamma')})")
    handling = " + ".join(parts) or "none"
    return {"run": run.name, "imbalance": handling, "mixup_p": cfg.get("mixup_p"), "backbone": m["backbone"], "input": m["input_size"],
            "epochs": m["epochs_trained"], "best_epoch": m.get("best_epoch"), "train_min": round(m["train_seconds"] / 60, 1),
            "machine": m.get("machine"), "date": m.get("date"), "commands": m.get("commands", []),
            **{f"{s}_{k}": m[s][k] for s in ("val", "test") if s in m for k in ("accuracy", "macro_f1", "kappa")}}


def _metrics_md(title, m, coverage=None) -> list[str]:
    ci = m.get("accuracy_ci95") or [None, None]
    lines = [f"### {title}", "", f"n = {m['n']}; accuracy {m['accuracy']:.4f}"
             + (f" (95% bootstrap {ci[0]:.4f}-{ci[1]:.4f})" if ci[0] is not None else "")
             + f"; macro-F1 {m['macro_f1']:.4f}; kappa {m['kappa']:.4f}"
             + (f"; labelled points with a detection: {coverage:.3f}" if coverage is not None else ""), "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for c, r in m["per_class"].items():
        lines.append(f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    return lines + [""]


def markdown(rep) -> str:
    lines = [f"# Red-cell morphology, Chula RBC-12 ({rep['date']})", "", f"Command: `{rep['command']}`  ",
             f"Machine (evaluation): {rep['machine']}  ", f"Bundle: {rep['bundle']}  ",
             f"Crops: {rep['crops_readme']}", ""]
    if rep["runs"]:
        lines += ["## Training runs (Keras checkpoints; chosen on val)", "",
                  "| run | imbalance | mixup p | backbone | input | epochs (best) | train min | val acc | val macro-F1 | test acc | test macro-F1 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        lines.append(f"| {r['run']} | {r['imbalance']} | {r.get('mixup_p')} | {r['backbone']} | {r['input']} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['train_min']} | {r.get('val_accuracy', float('nan')):.4f} | {r.get('val_macro_f1', float('nan')):.4f} | "
                     f"{r.get('test_accuracy', float('nan')):.4f} | {r.get('test_macro_f1', float('nan')):.4f} |")
    if rep["runs"]:
        lines += ["", "Training machine/date per run: " + "; ".join(f"{r['run']}: {r['machine']}, {r['date']}" for r in rep["runs"]),
                  "", "Commands per run (training, then evaluation of a stopped run):", ""] + [
            f"- {r['run']}: `{c}`" for r in rep["runs"] for c in r["commands"]]
    if rep.get("compared"):
        lines += ["", f"## Bundles compared on the device path ({rep.get('split', 'test')} frames, accuracy / macro-F1)", "",
                  "| bundle | labelled crops | end to end | end to end, model alone |", "|---|---|---|---|"]
        for c in [{"bundle": rep["bundle"], **{k: rep.get(k) for k in ("labelled_crops", "end_to_end", "end_to_end_model_alone")}},
                  *rep["compared"]]:
            cell = [f"{c[k]['accuracy']:.4f} / {c[k]['macro_f1']:.4f}" if c.get(k) else "-"
                    for k in ("labelled_crops", "end_to_end", "end_to_end_model_alone")]
            lines.append(f"| {c['bundle']} | " + " | ".join(cell) + " |")
    lines += ["", f"## The int8 bundle on the device path ({rep.get('split', 'test')} frames)", "",
              f"Paper for comparison: {PAPER['model']}: accuracy {PAPER['accuracy']}, macro-F1 {PAPER['macro_f1']} "
              "(their own split and 12 classes; ours is a frame-level split of the 500 public frames, so the "
              "comparison is indicative, not like for like).", ""]
    lines += _metrics_md("Labelled crops (centred on the labelled points)", rep["labelled_crops"])
    if rep.get("end_to_end"):
        layer = rep.get("size_layer")
        if layer:
            lines += [f"Size layer of the bundle (edge/rbc_layer.py): features {', '.join(layer['features'])}, C = "
                      f"{layer['c']}, fitted on {layer['points']} {layer['fitted_on']} ({layer['fitted']}).", ""]
        lines += _metrics_md(f"End to end (detected red cells, ruler from the run, --rbc-scale {rep.get('scale', 'field')}"
                             + (", with the size layer" if layer else "") + ")", rep["end_to_end"], rep["coverage"])
        if layer:
            lines += _metrics_md("End to end, the same frames without the size layer (the model alone)",
                                 rep["end_to_end_model_alone"], rep["coverage"])
    return "\n".join(lines) + "\n"


def device_metrics(b, backend, chula, split, scale, labelled) -> dict:
    """Labelled crops, end to end and (with a size layer) end to end without it, of one bundle."""
    from hemaedge.train.evaluate import compute_metrics

    out = {"labelled_crops": compute_metrics(*labelled, b.classes, bootstrap=1000)}
    y2, p2, cov = end_to_end(b, backend, chula, split, scale)
    out["end_to_end"], out["coverage"] = compute_metrics(y2, p2, b.classes, bootstrap=1000), cov
    layer = (b.manifest.get("red_cells") or {}).get("layer")
    if layer:  # the same frames without it: what the size layer changes
        out["size_layer"] = {k: layer.get(k) for k in ("features", "c", "points", "fitted_on", "fitted")}
        y3, p3, _ = end_to_end(b, backend, chula, split, scale, layer=False)
        out["end_to_end_model_alone"] = compute_metrics(y3, p3, b.classes, bootstrap=1000)
    return out


@click.command()
@click.option("--chula", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--crops", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The `hemaedge data rbc-crops` tree the runs trained on.")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--runs", "runs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--compare", "compare", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Other bundles measured on the same frames (one summary row each).")
@click.option("--split", type=click.Choice(["val", "test"]), default="test", show_default=True,
              help="Frames the bundle is measured on (val: to choose a bundle; test: to report it, once).")
@click.option("--scale", type=click.Choice(["auto", "field", "bundle"]), default="auto", show_default=True,
              help="The device's --rbc-scale for the end-to-end rows (docs/redcells.md).")
@click.option("--threads", type=int, default=None)
@click.option("--out", "prefix", type=click.Path(path_type=Path), default=RESULTS / "rbc_morphology", show_default=True)
def main(chula, crops, bundle, runs, compare, split, scale, threads, prefix):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle

    b = load_bundle(bundle)
    backend = load_backend(b, threads=threads)
    y, p = labelled_crops(b, backend, crops, split)
    rep = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": one_line(describe_machine()),
           "load_average": [round(v, 2) for v in os.getloadavg()],
           "command": f"python -m hemaedge.benchmarks.tools.rbc_morphology --chula CHULA --crops {crops.name} --bundle {bundle}"
                      + "".join(f" --runs {r.name}" for r in runs) + "".join(f" --compare {c}" for c in compare)
                      + f" --split {split} --scale {scale}",
           "split": split, "scale": scale,
           "bundle": b.describe(), "crops_readme": (crops / "README.md").read_text().splitlines()[2] if (crops / "README.md").is_file() else "",
           "paper": PAPER, "runs": [run_row(r) for r in runs if (r / "metrics.json").is_file()],
           **device_metrics(b, backend, chula, split, scale, labelled=(y, p))}
    rep["compared"] = []
    for other in compare:
        o = load_bundle(other)
        ob = load_backend(o, threads=threads)
        rep["compared"].append({"bundle": o.describe(), "path": str(other),
                                **device_metrics(o, ob, chula, split, scale, labelled=labelled_crops(o, ob, crops, split))})
    write_result(prefix, rep, markdown(rep))
    click.echo(markdown(rep))


if __name__ == "__main__":
    main()
