"""How much to review: wrong and right answers flagged by `edge run`'s own rule at several
`--review-level`s and with the `--review-classes erythroblast,ig` policy.

    python -m hemaedge.benchmarks.tools.review_levels --bundle src/hemaedge/models/default --name default

Each cell is classified once, as `edge run` classifies it (the bundle's test-time views), on
BloodMNIST-128 val (the training domain), PBC fields end to end (`pbc_raw_val`, the training
microscope) and BCCD val frames end to end (another microscope). Each setting is then a
`CellClassifier` built with those options, whose `decide` (the device's code, `identify.decide`)
says per cell: unidentified, flagged for review, or neither. Right/wrong = the top class against
the label; flagged = unidentified or flagged; a white cell the segmenter did not find counts as
wrong and flagged. The levels are a lab's choice, listed a priori; none is chosen on these sets
(no test split is read). Writes benchmarks/results/review_levels_NAME.{json,md}.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click
import numpy as np

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.data_options import evaluation_sets

RESULTS = Path(__file__).resolve().parents[1] / "results"
LEVELS = (0.62, 0.8, 0.95, 0.98)  # around the packaged default's own review level (0.902)
POLICY = "erythroblast,ig"


def settings(levels) -> list[tuple[str, dict]]:
    """(row name, CellClassifier options) of each setting compared; the first is the default."""
    rows = [("bundle's review level (default)", {})]
    rows += [(f"--review-level {p:g}", {"review_level": p}) for p in levels]
    rows += [(f"--review-classes {POLICY}", {"review_classes": POLICY})]
    return rows


def rates(cells: list[dict], clf) -> dict:
    """Right / wrong answers flagged (unidentified or flagged for review) under `clf`'s rule."""
    n = {"right": 0, "wrong": 0, "right_flagged": 0, "wrong_flagged": 0, "right_unidentified": 0}
    for c in cells:
        if not c["found"]:
            n["wrong"] += 1
            n["wrong_flagged"] += 1
            continue
        d = clf.decide("wbc", np.asarray(c["probabilities"], np.float32))
        flagged = d.label == "unidentified" or bool(d.flag)
        side = "right" if c["top"] == c["label"] else "wrong"
        n[side] += 1
        n[f"{side}_flagged"] += flagged
        n["right_unidentified"] += side == "right" and d.label == "unidentified"
    for side in ("right", "wrong"):
        n[f"{side}_flagged_share"] = round(n[f"{side}_flagged"] / n[side], 4) if n[side] else None
    return n


def to_markdown(r: dict) -> str:
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    names = list(r["sets"])
    lines = [f"# How much to review: review levels and the class policy ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Bundle: `{r['bundle']}` ({r['weights']}); test-time views `{r['views']}`. The bundle's own levels: "
             f"review below top probability {r['bundle_review_level']:.3f}, unidentified below "
             f"{r['bundle_unidentified_level']:.3f} (and `--review-threshold` 0.6 / `--unidentified-below` 0.4, "
             "unchanged in every row).", "",
             "Each row is `edge run` with that option (its `CellClassifier.decide`); cells are classified once. "
             "Flagged = unidentified or flagged for review; a white cell not found counts as wrong and flagged. "
             "Cells per set: " + "; ".join(f"{k} {v['cells']} ({v['rows'][0]['right']} right, "
                                           f"{v['rows'][0]['wrong']} wrong)" for k, v in r["sets"].items()) + ".",
             "", "| setting | " + " | ".join(f"{k}: wrong / right flagged" for k in names) + " |",
             "|---|" + "---|" * len(names)]
    for i, (name, _) in enumerate(settings(r["levels"])):
        cells = []
        for k in names:
            v = r["sets"][k]["rows"][i]
            cells.append(f"{pct(v['wrong_flagged_share'])} / {pct(v['right_flagged_share'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Goal (issue 13, BCCD): >= 90% of wrong answers flagged with <= 15% of right ones. BCCD val has "
                  f"{r['sets'][names[-1]]['rows'][0]['wrong']} wrong answers: one cell is "
                  f"{100 / max(1, r['sets'][names[-1]]['rows'][0]['wrong']):.1f} points.", ""]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Results go to benchmarks/results/review_levels_NAME.{json,md}.")
@evaluation_sets
@click.option("--val-spread", type=click.IntRange(1), default=800, show_default=True)
@click.option("--pbc-spread", type=click.IntRange(1), default=700, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(bundle, name, bccd, pbc, bloodmnist128, val_spread, pbc_spread, threads, out):
    """Wrong / right answers flagged at several --review-level values and with --review-classes."""
    from hemaedge.benchmarks.tools.bccd_wbc import _Model, frames, score_frames
    from hemaedge.benchmarks.tools.ood_rule import bloodmnist_val, pbc_fields
    from hemaedge.benchmarks.tools.segmentation_bccd import machine
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier

    b = load_bundle(bundle)
    model = _Model(list(b.classes), b.contract, b.manifest)
    clf = CellClassifier(model, load_backend(b, threads=threads))
    load = os.getloadavg()[0]
    data = {"BloodMNIST-128 val": bloodmnist_val(clf, bloodmnist128 / "val", val_spread),
            "PBC fields": pbc_fields(clf, pbc, pbc_spread),
            "BCCD val": score_frames(bccd, frames(bccd, "val"), clf)["per_frame"]}
    rules = [CellClassifier(model, None, **opts) for _, opts in settings(LEVELS)]
    ood = clf.ood_rule.to_dict()
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "load_average_at_start": round(load, 2),
              "bundle": str(bundle), "weights": (b.manifest.get("source") or {}).get("weights", "unknown weights"),
              "views": clf.views_name, "levels": list(LEVELS), "policy": POLICY,
              "bundle_review_level": ood["review_level"], "bundle_unidentified_level": ood["unidentified_level"],
              "command": f"python -m hemaedge.benchmarks.tools.review_levels --bundle {bundle} --name {name} "
                         f"--val-spread {val_spread} --pbc-spread {pbc_spread}",
              "sets": {k: {"cells": len(cells), "rows": [rates(cells, r) for r in rules]} for k, cells in data.items()}}
    write_result(out / f"review_levels_{name}", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
