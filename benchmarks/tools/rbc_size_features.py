"""Does a red cell's size relative to its field help the morphology model? (issue 15)

A crop cut at a fixed side keeps a cell's size only relative to that side. This measures whether
the bundle's size layer (edge/rbc_layer.py: a multinomial logistic layer over [the int8 model's
log-probabilities, the detected cell's size features], fitted by `export.rbc_layer.fit_layer` and
applied with the device's own `SizeLayer`) beats the model alone on Chula VAL, end to end (the
device's detection, crops and bundle; train/val frames only, the test split is not read):

    python -m hemaedge.benchmarks.tools.rbc_size_features --chula ../shared/data/chula_rbc12 \
        --bundle src/hemaedge/models/rbc --scale auto

Features (edge/rbc_layer.py FEATURES) of the detection whose box holds the labelled point:
  relative_area    log(area / median area of the frame's whole detected cells)
  relative_length  log(box long side / the frame's median)
  absolute_area    log(area / the area of a red cell of the bundle's training diameter)
  relative_centre_light, relative_cell_light   green light at the cell's centre / over the cell,
                   against the frame's median cell (tried for hypochromia, the largest loss on val)
Each arm's layer (C = 1, no tuning) is fitted on the labelled points of Chula TRAIN frames and scored
on VAL; a second column fits it with 5-fold cross-validation grouped by frame on VAL itself (the
model's own training crops are easier for it than new ones, so a layer fitted on train may trust the
model too much). The model's probabilities are its own (a bundle's layer is not applied). Per
`--scale`, the device's `--rbc-scale`. Points without a detection count as wrong in every row.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click
import numpy as np

from hemaedge.benchmarks.machine import describe_machine, one_line
from hemaedge.benchmarks.tools.rbc_morphology import RESULTS
from hemaedge.benchmarks.tools.result_files import write_result

ALL = ["relative_area", "relative_length", "absolute_area", "relative_centre_light", "relative_cell_light"]
ARMS = {"model alone (argmax)": None, "layer: log-probabilities only": [],
        "layer: + relative area": ["relative_area"],
        "layer: + relative area + relative long side": ["relative_area", "relative_length"],
        "layer: + absolute area": ["absolute_area"],
        "layer: + all three sizes": ALL[:3],
        "layer: + relative sizes + relative light": ["relative_area", "relative_length", "relative_centre_light",
                                                     "relative_cell_light"]}
CHOSEN = "layer: + relative area + relative long side"  # export.rbc_layer.DEFAULT_FEATURES
LIGHT = "layer: + relative sizes + relative light"  # tried for hypochromia, the largest loss on val


def columns(d: dict, k: int, which: list[str]) -> np.ndarray:
    """The layer input rows of one arm: the k log-probabilities, then its features."""
    return d["x"][:, list(range(k)) + [k + ALL.index(w) for w in which]]


def scores(y, pred, found, classes) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.where(found, pred, (y + 1) % len(classes))  # a missed cell is a wrong answer
    f1 = f1_score(y, pred, average=None, labels=range(len(classes)), zero_division=0)
    return {"accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", labels=range(len(classes)), zero_division=0)),
            "f1": {c: float(f1[i]) for i, c in enumerate(classes)}}


def evaluate(train: dict, val: dict, classes) -> list[dict]:
    from sklearn.model_selection import GroupKFold

    from hemaedge.edge.rbc_layer import SizeLayer
    from hemaedge.export.rbc_layer import fit_layer

    k = len(classes)

    def predict(fit_x, fit_y, which, x):
        layer = SizeLayer(fit_layer(fit_x, fit_y, classes, which), classes)
        return layer.from_inputs(x).argmax(1)

    out = []
    for arm, which in ARMS.items():
        if which is None:
            pred = val["x"][:, :k].argmax(1)
            out.append({"arm": arm, "fit_train": scores(val["y"], pred, val["found"], classes), "cv_val": None})
            continue
        m = train["found"]
        xv, y = columns(val, k, which), val["y"]
        row = {"arm": arm, "features": which,
               "fit_train": scores(y, predict(columns(train, k, which)[m], train["y"][m], which, xv), val["found"],
                                   classes)}
        pred = np.zeros_like(y)
        for tr, te in GroupKFold(5).split(xv, y, val["frame"]):
            tr = tr[val["found"][tr]]
            pred[te] = predict(xv[tr], y[tr], which, xv[te])
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
             "logistic regression on standardised [log-probabilities, features], C = 1 (export.rbc_layer.fit_layer, "
             "applied by edge.rbc_layer.SizeLayer).", ""]
    for block in rep["scales"]:
        lines += [f"## --rbc-scale {block['scale']} ({block['train_points']} train / {block['val_points']} val "
                  f"labelled points)", "",
                  "| arm | val acc / macro-F1 (fit on train) | val acc / macro-F1 (5-fold CV on val, by frame) |",
                  "|---|---|---|"]
        for r in block["arms"]:
            lines.append(f"| {r['arm']} | {_cell(r['fit_train'])} | {_cell(r['cv_val'])} |")
        arms = {r["arm"]: r for r in block["arms"]}
        a, b = arms["model alone (argmax)"]["fit_train"]["f1"], arms[CHOSEN]["fit_train"]["f1"]
        li = arms[LIGHT]["fit_train"]["f1"]
        lines += ["", f"Per-class val F1, model alone -> {CHOSEN} (the packaged layer's features), fit on train; "
                  "last column the arm with the light features:", "",
                  "| class | model alone | with the layer | change | + relative light |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {a[c]:.3f} | {b[c]:.3f} | {b[c] - a[c]:+.3f} | {li[c]:.3f} |" for c in a]
        lines.append("")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--chula", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--scale", "scales", multiple=True, type=click.Choice(["auto", "field", "bundle"]),
              default=("auto",), show_default=True)
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
    from hemaedge.export.rbc_layer import labelled_inputs

    for scale in scales:
        train, val = (labelled_inputs(b, backend, chula, s, ALL, scale) for s in ("train", "val"))
        rep["scales"].append({"scale": scale, "train_points": len(train["y"]), "val_points": len(val["y"]),
                              "arms": evaluate(train, val, list(b.classes))})
    write_result(prefix, rep, markdown(rep))
    click.echo(markdown(rep))


if __name__ == "__main__":
    main()
