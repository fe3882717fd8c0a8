"""What each platelet rule of `edge.segment.find_platelets` does to what the whole pipeline counts on BCCD.

    python -m hemaedge.benchmarks.tools.platelet_rules --bundle src/hemaedge/models/default

An ablation: the whole pipeline (`edge.pipeline.CellClassifier` with the bundle's own rules, as
`segmentation_bccd --bundle`) with every rule on, then with one rule off at a time, then with
the rules of the previous default. Platelet recall/precision at IoU >= 0.5 and >= 0.3 against every VOC box
(`edge run --count-edge-cells`), on train + val (where the rules were chosen) and on test (only
reported). Writes benchmarks/results/platelet_rules.{json,md}.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import evaluate_pipeline, frame_ids, machine, rates
from hemaedge.edge.segment import SegmentParams

ROOT = Path(__file__).resolve().parents[2]
# (name, what the rule does, the SegmentParams changes that turn it off)
VARIANTS = [
    ("every rule (default)", "", {}),
    ("- split too wide / too long bodies", "a body of a platelet's area too wide or too long for one is dropped, "
     "not split into its cores", {"split_misshapen": False}),
    ("- split ragged bodies", "a ragged body (solidity < 0.8) is dropped, not split into its cores",
     {"split_ragged": False}),
    ("- solidity", "no shape rule: ragged bodies are kept whole", {"platelet_min_solidity": 0.0}),
    ("- on a red cell", "a candidate lying on a red cell is counted", {"platelet_on_red_cell": 1.0}),
    ("- large and pale", "a large pale body is kept", {"pale_platelet_side_rbc": 9.0}),
    ("- blue-violet", "a pink-magenta speck is kept", {"platelet_min_blue": -99.0}),
    ("- stain in all", "a body holding little stain in all (area x mean stain < 0.13 d² SDs) is kept",
     {"platelet_min_stain": 0.0}),
    ("- large and pale at 3.5 SDs", "the large-and-pale level at its former 4 robust SDs", {"pale_platelet_z": 4.0}),
    ("- faint rescue", "a faint or small body with a stained centre is dropped, as before the seventh pass",
     {"faint_rescue": False}),
    ("- pale colour tier", "a pale candidate (mean below 4 robust SDs) passes the common blue-violet level (0.6), "
     "and so does a rescued one", {"pale_min_blue": 0.6}),
    ("- rescue: clear of red cells", "a faint body may lie at a red cell's edge (ring share up to 0.5 as others)",
     {"faint_max_ring": 0.5}),
    ("- rescue: a disc", "a faint body needs only the common solidity (0.8)", {"faint_min_solidity": 0.8}),
    ("previous default (sixth pass, 2026-12-02)", "no faint rescue, no pale colour tier",
     {"faint_rescue": False, "pale_min_blue": 0.6}),
    ("fifth pass (2026-12-02)", "no stain-in-all rule, large-and-pale at 4 SDs, no faint rescue, no pale colour tier",
     {"platelet_min_stain": 0.0, "pale_platelet_z": 4.0, "faint_rescue": False, "pale_min_blue": 0.6}),
]
SPLITS = {"train + val": ("train", "val"), "test": ("test",)}


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=lambda: os.environ.get("HEMAEDGE_BCCD", "../shared/data/bccd"), show_default="../shared/data/bccd")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The bundle whose classifier confirms the candidates (run_all: the packaged default).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results",
              show_default="benchmarks/results")
def main(data, bundle, threads, out):
    """Platelet recall/precision of the whole pipeline with each platelet rule off in turn."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier

    b = load_bundle(bundle)
    backend = load_backend(b, threads=threads)
    rows = []
    for name, what, change in VARIANTS:
        params = SegmentParams(**change)
        row = {"variant": name, "what": what, "params": change}
        for label, splits in SPLITS.items():
            # one fresh per-field ruler per split, as segmentation_bccd
            parts = [evaluate_pipeline(data, frame_ids(data, s), CellClassifier(b, backend, params), progress=False)
                     for s in splits]
            c = {k: sum(p["platelet_every"][k] for p in parts) for k in ("gt", "pred", "tp", "pred_iou30", "tp_iou30")}
            row[label] = {**c, **rates(c["tp"], c["gt"], c["pred"]),
                          **{f"{k}_iou30": v for k, v in rates(c["tp_iou30"], c["gt"], c["pred_iou30"]).items()}}
        rows.append(row)
        click.echo(f"{name}: " + "; ".join(f"{lb} {row[lb]['recall']:.3f}/{row[lb]['precision']:.3f} (IoU>=0.5), "
                                           f"{row[lb]['recall_iou30']:.3f}/{row[lb]['precision_iou30']:.3f} (IoU>=0.3)"
                                           for lb in SPLITS))
    weights = (b.manifest.get("source") or {}).get("weights", "unknown weights")
    cmd = f"python -m hemaedge.benchmarks.tools.platelet_rules --bundle {bundle}"
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "command": cmd,
              "bundle": b.manifest.get("name"), "weights": weights, "rows": rows}
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"# Platelet rules on BCCD: what each does to the whole pipeline's count ({report['date']})", "",
             f"Command: `{cmd}`  ", f"Machine: {report['machine']}  ",
             f"Bundle: `{report['bundle']}` ({weights}).  ",
             "Whole pipeline (`edge.pipeline.CellClassifier`, the bundle's rules and test-time views), platelets "
             "counted against every VOC platelet box, one-to-one at IoU ≥ 0.5 and at IoU ≥ 0.3 (as "
             "`segmentation_bccd --bundle`, *every cell*). Rules chosen on train + val; test only reported. BCCD's "
             "platelet boxes are incomplete (most remaining false alarms on the contact sheet "
             "`platelet_false_alarms.jpg` are unboxed platelets), so precision here is a lower bound.", "",
             "| variant | what changes | train + val recall / precision, IoU ≥ 0.5 | IoU ≥ 0.3 | counted / TP (IoU ≥ 0.5) | "
             "test recall / precision, IoU ≥ 0.5 | IoU ≥ 0.3 | counted / TP (IoU ≥ 0.5) |", "|---|---|---|---|---|---|---|---|"]
    both = lambda c, k="": f"{pct(c['recall' + k])} / {pct(c['precision' + k])}"  # noqa: E731
    for r in rows:
        tv, te = r["train + val"], r["test"]
        lines.append(f"| {r['variant']} | {r['what']} | {both(tv)} | {both(tv, '_iou30')} | {tv['pred']} / {tv['tp']} | "
                     f"{both(te)} | {both(te, '_iou30')} | {te['pred']} / {te['tp']} |")
    write_result(out / "platelet_rules", report, "\n".join(lines) + "\n")
    click.echo(f"wrote {out / 'platelet_rules.md'}")


if __name__ == "__main__":
    main()
