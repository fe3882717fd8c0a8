"""Red-cell morphology away from its microscope: what the model calls foreign red cells, whether
the red-cell domain check notices, and whether frame colour normalisation helps.

    python -m hemaedge.benchmarks.tools.rbc_domain --bundle BUNDLE [--bundle BUNDLE2] \
        --chula ../shared/data/chula_rbc12 --bccd ../shared/data/bccd --pbc ../shared/data/pbc_raw_val \
        [--frames 40]

BCCD and PBC have no red-cell labels; a morphology model trained on Chula's normal-rich smears that
calls a large share of their red cells schistocytes (fragments) is wrong on them, so the share called
schistocyte is a sanity proxy, not an accuracy. Each data set is one run through the device's
red-cell stage (`RedCellClassifier`, the ruler of `edge run` on an image folder): red cells, % called
schistocyte and each class, and the run's red-cell domain check (edge/domain.py against the bundle's
`domain` section: does the summary say "morphology not validated for this microscope"?). Chula VAL
frames are the in-domain control (accuracy and macro-F1 on their labelled points; the test split is
not used here). With `--rbc-normalize` (rows "frame normalisation: on") each frame's background and
red-cell colour is mapped to the training slides' before the crops are cut.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.machine import describe_machine, one_line
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.edge.preprocess import read_image_rgb

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _sets(chula: Path, bccd: Path | None, pbc: Path | None, n: int) -> dict:
    from hemaedge.train.rbc_crops import chula_frames

    out = {"chula val (in domain)": [(f.image, f.points) for f in chula_frames(chula, "val")]}
    if bccd:
        from hemaedge.benchmarks.tools.segmentation_bccd import frame_ids

        out["bccd test"] = [(bccd / "JPEGImages" / f"{i}.jpg", None) for i in frame_ids(bccd, "test")[:n]]
    if pbc:
        files = sorted(pbc.glob("*.jpg"))
        step = max(1, len(files) // n)
        out["pbc fields"] = [(f, None) for f in files[::step][:n]]
    return out


def run_set(bundle, backend, frames, normalize: bool, progress: bool = True) -> dict:
    from hemaedge.edge.rbc_morphology import RedCellClassifier, qualify
    from hemaedge.edge.ruler import Ruler
    from hemaedge.edge.segment import centre_in
    from hemaedge.train.rbc_crops import CHULA_TYPES

    device = RedCellClassifier(bundle, backend, normalize_frames=normalize)
    ruler = Ruler(same_slide=False)  # as `edge run` on an image folder: every frame its own field
    index = {c: i for i, c in enumerate(bundle.classes)}
    counts = {c: 0 for c in bundle.classes}
    y, pred = [], []
    for path, points in tqdm(frames, disable=not progress, unit="frame", leave=False):
        img = read_image_rgb(path)
        res = device.process(img, ruler.read(img).diameter)
        for label in res.labels:
            counts[label] = counts.get(label, 0) + 1
        for x, yy, t in points or ():
            if CHULA_TYPES[t] not in index:
                continue
            holding = [k for k, c in enumerate(res.cells) if centre_in(c.box, (x, yy))]
            y.append(index[CHULA_TYPES[t]])
            if not holding:  # a missed cell counts as wrong
                pred.append(-1)
                continue
            k = min(holding, key=lambda k: (res.cells[k].centre[0] - x) ** 2 + (res.cells[k].centre[1] - yy) ** 2)
            pred.append(int(res.probabilities[k].argmax()))
    total = sum(counts.values())
    row = {"frames": len(frames), "red_cells": total, "normalize": normalize,
           "percent": {c: round(100 * v / total, 2) if total else 0.0 for c, v in counts.items()}}
    row["schistocyte_percent"] = row["percent"].get("schistocyte")
    summary = qualify({"classified": total, "flags": []}, device.domain.report())
    row["morphology_validated"] = summary["morphology_validated"]
    row["validation_note"] = summary.get("validation_note", "")
    row["domain"] = summary["domain"]
    if y:
        from sklearn.metrics import f1_score

        y, pred = np.asarray(y), np.asarray(pred)
        row["accuracy"] = round(float(np.mean(y == pred)), 4)
        row["macro_f1"] = round(float(f1_score(y, pred, labels=list(range(len(bundle.classes))), average="macro",
                                               zero_division=0)), 4)
        row["labelled_points"] = int(len(y))
    return row


def markdown(rep) -> str:
    lines = [f"# Red-cell morphology on other microscopes ({rep['date']})", "", f"Command: `{rep['command']}`  ",
             f"Machine: {rep['machine']}  ", "",
             "BCCD and PBC carry no red-cell labels: the share of their red cells called schistocyte is a sanity "
             "proxy (a normal-looking smear called 20-40% fragments is wrong), not an accuracy. Chula val frames are "
             "the in-domain control (accuracy / macro-F1 end to end on their labelled points).", "",
             "| bundle | frames | frame normalisation | n frames | red cells | % called schistocyte | most called (%) | "
             "Chula val accuracy / macro-F1 | summary says |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        acc = f"{r['accuracy']:.3f} / {r['macro_f1']:.3f}" if "accuracy" in r else "-"
        top = ", ".join(f"{c} {p:.0f}" for c, p in sorted(r["percent"].items(), key=lambda kv: -kv[1])[:3])
        says = ("validated" if r["morphology_validated"] else
                ("not checked (no domain section)" if r["morphology_validated"] is None else "**not validated**: "
                 + "; ".join(r["domain"].get("reasons") or [])))
        lines.append(f"| {r['bundle']} | {r['set']} | {'on' if r['normalize'] else 'off'} | {r['frames']} | "
                     f"{r['red_cells']} | {r['schistocyte_percent']} | {top} | {acc} | {says} |")
    lines += ["", "Bundles: " + "; ".join(f"{k}: {v}" for k, v in rep["bundles"].items())]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bundle", "bundles", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--chula", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--bccd", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pbc", type=click.Path(exists=True, file_okay=False, path_type=Path), help="pbc_raw_val fields.")
@click.option("--frames", "n", default=40, show_default=True, help="BCCD test frames / PBC fields (spread evenly).")
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--out", "prefix", type=click.Path(path_type=Path), default=RESULTS / "rbc_domain", show_default=True)
@click.option("--quiet", is_flag=True)
def main(bundles, chula, bccd, pbc, n, threads, prefix, quiet):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.rbc_morphology import frame_reference

    sets = _sets(chula, bccd, pbc, n)
    rep = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": one_line(describe_machine()), "load_average": [round(v, 2) for v in os.getloadavg()],
           "command": "python -m hemaedge.benchmarks.tools.rbc_domain " + " ".join(f"--bundle {b}" for b in bundles)
                      + " --chula CHULA" + (" --bccd BCCD" if bccd else "") + (" --pbc PBC_RAW_VAL" if pbc else "")
                      + f" --frames {n}", "bundles": {}, "rows": []}
    for path in bundles:
        b = load_bundle(path)
        backend = load_backend(b, threads=threads)
        rep["bundles"][path.name] = b.describe()
        for normalize in ((False, True) if frame_reference(b) else (False,)):
            for name, frames in sets.items():
                row = run_set(b, backend, frames, normalize, progress=not quiet)
                rep["rows"].append({"bundle": path.name, "set": name, **row})
    write_result(prefix, rep, markdown(rep))
    click.echo(markdown(rep))


if __name__ == "__main__":
    main()
