"""BCCD as "your microscope": label 25 / 50 / 100 / all white cells of the BCCD train split, adapt,
and report accuracy on the BCCD test split and the change on PBC val.

    python -m hemaedge.train.adapt_bccd --base BASE.keras --bccd ../shared/data/bccd \
        --replay ../shared/data/bloodmnist128 --work ~/hemaedge-runs/review/adapt-bccd \
        --out benchmarks/results/adapt_bccd

The workflow is the one a lab follows, with the reviewer simulated:
1. `hemaedge edge run --save-crops all` on the BCCD train frames (and, separately, the test frames)
   that show one white cell with one label (`bccd/wbc_subtypes.csv`);
2. the "reviewer" sets each detected white cell that overlaps the annotated WBC box (IoU >= 0.3)
   to the frame's label, in corrections.csv, through the review page's own code (RunReview);
3. `train adapt` on the first N reviewed train cells (seeded subset), replaying BloodMNIST-128
   train; the BCCD test run's reviewed cells are the test set (never used to choose anything).
BCCD train has 192 single-label frames, so the largest step uses all of its matched cells.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from hemaedge.edge.segment import iou

STEPS = (25, 50, 100, 200)


def single_label_frames(bccd: Path, split: str) -> dict[str, str]:
    with open(bccd / "wbc_subtypes.csv", newline="") as fh:
        return {r["frame"]: r["categories"] for r in csv.DictReader(fh)
                if r["split"] == split and r["n_labels"] == "1" and r["n_wbc_boxes"] == "1"}


def labelled_run(bccd: Path, split: str, work: Path, bundle=None) -> tuple[Path, dict]:
    """Run the edge pipeline on one split's frames and 'review' it from the annotations."""
    from click.testing import CliRunner

    from hemaedge.benchmarks.tools.segmentation_bccd import read_voc
    from hemaedge.cli import main
    from hemaedge.review.rundata import RunReview

    labels = single_label_frames(bccd, split)
    frames = work / f"frames-{split}"
    run_dir = work / f"run-{split}"
    if not (run_dir / "summary.json").is_file():
        frames.mkdir(parents=True, exist_ok=True)
        for f in labels:
            link = frames / f"{f}.jpg"
            if not link.exists():
                os.symlink((bccd / "JPEGImages" / f"{f}.jpg").resolve(), link)
        args = ["edge", "run", "--source", str(frames), "--out", str(run_dir), "--save-crops", "all", "-q"]
        if bundle:
            args += ["--bundle", str(bundle)]
        res = CliRunner().invoke(main, args, catch_exceptions=False)
        if res.exit_code:
            raise RuntimeError(res.output)
    run = RunReview.open(run_dir)
    done = {(r["frame"], r["cell"]) for r in run.log}
    stats = {"frames": len(labels), "matched": 0, "missed": 0}
    by_frame: dict[str, list] = {}
    for c in run.cells:
        by_frame.setdefault(Path(c.name).stem, []).append(c)
    for f, label in sorted(labels.items()):
        gt = read_voc(bccd / "Annotations" / f"{f}.xml").get("WBC", [])
        # Every detection of the frame, whatever kind the device gave it: a white cell the model
        # called a platelet is a wrong answer the reviewer corrects, not a cell to leave out.
        with open(run_dir / "cells.csv", newline="") as fh:
            boxes = {(int(r["frame"]), int(r["cell"])): tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1"))
                     for r in csv.DictReader(fh) if Path(r["name"]).stem == f}
        best = max(((iou(b, gt[0]), k) for k, b in boxes.items()), default=(0.0, None)) if gt else (0.0, None)
        if best[0] < 0.3:
            stats["missed"] += 1
            continue
        stats["matched"] += 1
        frame, cell = best[1]
        if (str(frame), str(cell)) not in done:
            run.correct(f"{frame}:{cell}", label, reviewer="simulated from wbc_subtypes.csv")
    return run_dir, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="PBC-trained Keras model (.keras + .json sidecar), or a bundle "
                    "whose Keras source lies in or next to it (the BCCD runs then use that bundle)")
    ap.add_argument("--bccd", type=Path, required=True)
    ap.add_argument("--replay", required=True, help="BloodMNIST-128 tree (replay train, PBC val)")
    ap.add_argument("--work", type=Path, required=True, help="Folder for runs and adapted models")
    ap.add_argument("--out", type=Path, required=True, help="Table prefix: writes OUT.md and OUT.json")
    ap.add_argument("--steps", default=",".join(map(str, STEPS)))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-limit", type=int, default=None, help="At most N PBC val images per class (quick runs)")
    ap.add_argument("--export-steps", default="100",
                    help="Steps whose adapted model is also exported to an int8 bundle ('' for none)")
    args = ap.parse_args(argv)

    from hemaedge.train.adapt import AdaptConfig, adapt

    args.work.mkdir(parents=True, exist_ok=True)
    # The device's own crops: a bundle base runs the edge pipeline itself; a .keras base, the packaged default.
    bundle = args.base if (Path(args.base) / "manifest.json").is_file() else None
    train_run, train_stats = labelled_run(args.bccd, "train", args.work, bundle)
    test_run, test_stats = labelled_run(args.bccd, "test", args.work, bundle)
    rows, cache = [], {}
    export_steps = {int(x) for x in args.export_steps.split(",") if x.strip()}
    command = "python -m hemaedge.train.adapt_bccd " + " ".join(argv if argv is not None else sys.argv[1:])
    for n in [int(s) for s in args.steps.split(",")]:
        out = args.work / f"adapt-{n}-seed{args.seed}"
        if (out / "adapt.json").is_file():
            result = json.loads((out / "adapt.json").read_text())
        else:
            cfg = AdaptConfig(base=args.base, data=[str(train_run)], out=str(out), replay=args.replay,
                              test=[str(test_run)], limit=n, epochs=args.epochs, seed=args.seed,
                              eval_limit=args.eval_limit, export=n in export_steps)
            result = adapt(cfg, logf=print, command=command, before_cache=cache)
        p = result["provenance"]
        b, a = p["accuracy_before"], p["accuracy_after"]
        rows.append({"cells": p["counts"]["new_cells"], "train": p["counts"]["new_train"],
                     "held_out": p["counts"]["held_out"], "replay": p["counts"]["replay"],
                     "bccd_test_before": b[f"test:{test_run.name}"]["accuracy"],
                     "bccd_test_after": a[f"test:{test_run.name}"]["accuracy"],
                     "bccd_test_n": a[f"test:{test_run.name}"]["n"],
                     "pbc_val_before": b["pbc_val"]["accuracy"], "pbc_val_after": a["pbc_val"]["accuracy"],
                     "pbc_val_n": a["pbc_val"]["n"],
                     "pbc_val_int8": (result.get("bundle") or {}).get("pbc_val_accuracy_int8"),
                     "pbc_val_int8_n": (result.get("bundle") or {}).get("pbc_val_n_int8"),
                     "chosen_epoch": p["training"]["chosen_epoch"], "wall_s": result["wall_seconds"],
                     "train_s": p["training"]["train_seconds"]})
        write_tables(args, rows, train_stats, test_stats, command)  # after every step: partial results count
    return 0


def write_tables(args, rows, train_stats, test_stats, command):
    from hemaedge.edge.atomic import atomic_write_json, atomic_write_text
    from hemaedge.train.finetune import machine

    data = {"rows": rows, "train_run": train_stats, "test_run": test_stats, "base": args.base,
            "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "load_average": os.getloadavg(),
            "command": command}
    atomic_write_json(args.out.with_suffix(".json"), data)
    lines = ["# Adapting to BCCD (\"your microscope\")", "",
             f"Base `{args.base}`; machine {data['machine']}; date {data['date']}; load average "
             f"{data['load_average'][0]:.1f} (shared machine: wall times are noisy).", "",
             f"Command: `{data['command']}`", "",
             f"BCCD train: {train_stats['frames']} single-label frames, white cell found in {train_stats['matched']} "
             f"(missed {train_stats['missed']}); BCCD test: {test_stats['frames']} frames, {test_stats['matched']} "
             "found (the test set).", "",
             "| labelled cells | train / held out | replay | BCCD test before -> after | PBC val before -> after (Keras) "
             "| PBC val int8 bundle | chosen epoch | train s / wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        int8 = "-" if r["pbc_val_int8"] is None else f"{r['pbc_val_int8']:.4f} (n={r['pbc_val_int8_n']})"
        lines.append(f"| {r['cells']} | {r['train']} / {r['held_out']} | {r['replay']} | "
                     f"{r['bccd_test_before']:.3f} -> {r['bccd_test_after']:.3f} (n={r['bccd_test_n']}) | "
                     f"{r['pbc_val_before']:.4f} -> {r['pbc_val_after']:.4f} (n={r['pbc_val_n']}) | {int8} | "
                     f"{r['chosen_epoch']} of {args.epochs} | {r['train_s']:.0f} / {r['wall_s']:.0f} |")
    lines += ["", "BCCD test: every matched white cell of the test split (never used to choose). PBC val: "
              + (f"{args.eval_limit} images per class (seeded), " if args.eval_limit else "the whole split, ")
              + "Keras model before and after; the int8 column is the exported bundle on PBC val as the export's "
              "parity check draws it (n images shown). "
              "Wall time covers loading, training, evaluation and (where exported) the int8 export; "
              "train s is the fitting alone.", ""]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
