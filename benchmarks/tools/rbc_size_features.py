"""Does a red cell's measured size help the morphology model? (issue 15)

A 64 px crop keeps a cell's size only relative to the crop side. This measures whether a small
multinomial logistic layer over [the int8 bundle's log-probabilities, size features of the
detected cell] beats the model alone on Chula VAL, end to end (the device's detection, crops and
bundle; train/val frames only, the test split is not read):

    python -m hemaedge.benchmarks.tools.rbc_size_features --chula ../shared/data/chula_rbc12 \
        --bundle src/hemaedge/models/rbc --scale field --scale auto

Features of the detection whose box holds the labelled point:
  relative  log(area / median area of the frame's whole detected cells)
  absolute  log(area / the area of a red cell of the bundle's reference diameter) (training magnification)
  shape     box aspect (short / long side) and fill (area / box area)
The layer (scikit-learn LogisticRegression on standardised features, C = 1, no tuning) is fitted
on the detected cells of Chula TRAIN frames and scored on VAL; a second column fits it with 5-fold
cross-validation grouped by frame on VAL itself (the model's own training crops are easier for it
than new ones, so a layer fitted on train may trust the model too much). Per `--scale`, the
device's `--rbc-scale`. Points without a detection count as wrong in every row.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click
import numpy as np

from hemaedge.benchmarks.machine import describe_machine, one_line
from hemaedge.benchmarks.tools.rbc_morphology import RESULTS, matched_points
from hemaedge.benchmarks.tools.result_files import write_result

ARMS = {"model alone (argmax)": None, "layer: log-probabilities only": [], "layer: + relative size": ["relative"],
        "layer: + absolute size": ["absolute"], "layer: + relative + absolute size": ["relative", "absolute"],
        "layer: + sizes + shape": ["relative", "absolute", "aspect", "fill"]}
WATCH = ("macrocyte", "microcyte", "spherocyte", "schistocyte")


def collect(bundle, backend, chula, split, scale) -> dict:
    """Arrays per labelled point: label, found, log-probabilities, size/shape features, frame."""
    from hemaedge.edge.rbc_morphology import manifest_reference_diameter

    ref = manifest_reference_diameter(bundle)
    ref_area = np.pi * (ref / 2) ** 2 if ref else np.nan
    rows = {k: [] for k in ("y", "found", "logp", "relative", "absolute", "aspect", "fill", "frame")}
    last, frame_no, median = None, -1, np.nan
    for label, res, k in matched_points(bundle, backend, chula, split, scale):
        if res is not last:
            last, frame_no = res, frame_no + 1
            whole = [c.area for c in res.cells if not c.edge] or [c.area for c in res.cells]
            median = float(np.median(whole)) if whole else np.nan
        rows["y"].append(label)
        rows["frame"].append(frame_no)
        rows["found"].append(k is not None)
        if k is None:
            rows["logp"].append(np.zeros(len(bundle.classes)))
            for f in ("relative", "absolute", "aspect", "fill"):
                rows[f].append(0.0)
            continue
        c = res.cells[k]
        w, h = c.box[2] - c.box[0], c.box[3] - c.box[1]
        rows["logp"].append(np.log(np.clip(res.probabilities[k], 1e-6, 1.0)))
        rows["relative"].append(np.log(c.area / median))
        rows["absolute"].append(np.log(c.area / ref_area))
        rows["aspect"].append(min(w, h) / max(w, h, 1))
        rows["fill"].append(c.area / max(1, w * h))
    return {k: np.asarray(v) for k, v in rows.items()}


def features(d: dict, which: list[str]) -> np.ndarray:
    return np.nan_to_num(np.hstack([d["logp"]] + [d[w][:, None] for w in which]))


def scores(y, pred, found, classes) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.where(found, pred, (y + 1) % len(classes))  # a missed cell is a wrong answer
    f1 = f1_score(y, pred, average=None, labels=range(len(classes)), zero_division=0)
    return {"accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", labels=range(len(classes)), zero_division=0)),
            "f1": {c: float(f1[classes.index(c)]) for c in WATCH if c in classes}}


def evaluate(train: dict, val: dict, classes) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def layer():
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))

    out = []
    for arm, which in ARMS.items():
        if which is None:
            pred = val["logp"].argmax(1)
            row = {"arm": arm, "fit_train": scores(val["y"], pred, val["found"], classes), "cv_val": None}
        else:
            m = train["found"]
            fitted = layer().fit(features(train, which)[m], train["y"][m])
            row = {"arm": arm, "fit_train": scores(val["y"], fitted.predict(features(val, which)), val["found"], classes)}
            X, y, pred = features(val, which), val["y"], np.zeros_like(val["y"])
            for tr, te in GroupKFold(5).split(X, y, val["frame"]):
                tr = tr[val["found"][tr]]
                pred[te] = layer().fit(X[tr], y[tr]).predict(X[te])
            row["cv_val"] = scores(y, pred, val["found"], classes)
        out.append(row)
    return out


def _cell(s):
    return "-" if s is None else f"{s['accuracy']:.4f} / {s['macro_f1']:.4f}"


def markdown(rep) -> str:
    lines = [f"# Red-cell size features over the morphology model, Chula val end to end ({rep['date']})", "",
             f"Command: `{rep['command']}`  ", f"Machine: {rep['machine']} (load average {rep['load_average']})  ",
             f"Bundle: {rep['bundle']}  ",
             "Frames: Chula RBC-12 train (fit) and val (score); the test split is not read. Layer: multinomial "
             "logistic regression on standardised [log-probabilities, features], C = 1.", ""]
    for block in rep["scales"]:
        lines += [f"## --rbc-scale {block['scale']} ({block['train_points']} train / {block['val_points']} val "
                  f"labelled points)", "",
                  "| arm | val acc / macro-F1 (fit on train) | val acc / macro-F1 (5-fold CV on val, by frame) | "
                  + " | ".join(f"{c} F1 (fit on train)" for c in WATCH) + " |",
                  "|---|---|---|" + "---|" * len(WATCH)]
        for r in block["arms"]:
            f1 = r["fit_train"]["f1"]
            lines.append(f"| {r['arm']} | {_cell(r['fit_train'])} | {_cell(r['cv_val'])} | "
                         + " | ".join(f"{f1.get(c, float('nan')):.3f}" for c in WATCH) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--chula", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--scale", "scales", multiple=True, type=click.Choice(["auto", "field", "bundle"]),
              default=("field", "auto"), show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--out", "prefix", type=click.Path(path_type=Path), default=RESULTS / "rbc_size_features",
              show_default=True)
def main(chula, bundle, scales, threads, prefix):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle

    b = load_bundle(bundle)
    backend = load_backend(b, threads=threads)
    rep = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": one_line(describe_machine()), "load_average": [round(v, 2) for v in os.getloadavg()],
           "command": f"python -m hemaedge.benchmarks.tools.rbc_size_features --chula CHULA --bundle {bundle}"
                      + "".join(f" --scale {s}" for s in scales),
           "bundle": b.describe(), "scales": []}
    for scale in scales:
        train, val = (collect(b, backend, chula, s, scale) for s in ("train", "val"))
        rep["scales"].append({"scale": scale, "train_points": len(train["y"]), "val_points": len(val["y"]),
                              "arms": evaluate(train, val, list(b.classes))})
    write_result(prefix, rep, markdown(rep))
    click.echo(markdown(rep))


if __name__ == "__main__":
    main()
