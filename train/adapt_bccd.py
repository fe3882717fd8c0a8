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


RECIPE = ("fit", "blocks", "lr", "epochs", "augment", "new_weight", "replay_ratio", "replay_pool", "distill", "bn",
          "balance", "views", "max_old_drop")
RECIPE_KEYS = (*RECIPE, "export")


def base_classes(base) -> list[str]:
    """The class list of a base: a bundle's manifest, or a Keras model's sidecar."""
    if (Path(base) / "manifest.json").is_file():
        return list(json.loads((Path(base) / "manifest.json").read_text(encoding="utf-8"))["classes"])
    from hemaedge.export.source import read_sidecar
    from hemaedge.train.adapt import resolve_base

    return list(read_sidecar(resolve_base(base)[0]).get("classes") or [])


def model_answers(model, images, views):
    """Probabilities of a bundle (the device's back end) or a Keras model on uint8 crops at its input size,
    averaged over test-time `views` as the device does."""
    import numpy as np

    from hemaedge.edge.preprocess import prepare_batch

    if (Path(model) / "manifest.json").is_file():
        from hemaedge.edge.backends import load_backend
        from hemaedge.edge.bundle import load_bundle
        from hemaedge.edge.tta import predict_views

        b = load_bundle(model)
        return predict_views(load_backend(b, threads=2).predict, prepare_batch(np.asarray(images), b.contract), views)
    from hemaedge.export.source import load_source
    from hemaedge.train.adapt import Cells, predict

    source = load_source(model)
    return predict(source.model, Cells(np.asarray(images), np.zeros(len(images), np.int64), []), source.contract,
                   views=views)


def cached_result(out: Path, cfg) -> dict | None:
    """A finished adaptation in `out` (a series resumes where it stopped), if it ran with `cfg`'s recipe."""
    if not (out / "adapt.json").is_file():
        return None
    from hemaedge.train.adapt import resolved_views

    result = json.loads((out / "adapt.json").read_text())
    done = {"views": "off", **result["provenance"]["training"]}  # adaptations before views were one-view
    cfg = cfg.resolved()  # unset settings take the fit's defaults, as `adapt` records them
    want = {k: getattr(cfg, k) for k in RECIPE_KEYS}
    want["views"] = resolved_views(cfg.base, cfg.views)[0]  # "auto" as `adapt` resolves and records it
    differ = [k for k in RECIPE_KEYS if k in done and done[k] != want[k]]
    if differ:
        raise SystemExit(f"{out} holds an adaptation made with other settings ({', '.join(differ)}); "
                         "remove it or choose another --work folder")
    return result


def edge_run(frames_of: dict[str, str], bccd: Path, work: Path, name: str, bundle=None) -> Path:
    """`hemaedge edge run --save-crops all` on the listed BCCD frames (once; a finished run is kept)."""
    from click.testing import CliRunner

    from hemaedge.cli import main

    split = name.split("-")[-1]
    frames = work / f"frames-{split}"
    run_dir = work / name
    if not (run_dir / "summary.json").is_file():
        frames.mkdir(parents=True, exist_ok=True)
        for f in frames_of:
            link = frames / f"{f}.jpg"
            if not link.exists():
                os.symlink((bccd / "JPEGImages" / f"{f}.jpg").resolve(), link)
        args = ["edge", "run", "--source", str(frames), "--out", str(run_dir), "--save-crops", "all", "-q"]
        if bundle:
            args += ["--bundle", str(bundle)]
        res = CliRunner().invoke(main, args, catch_exceptions=False)
        if res.exit_code:
            raise RuntimeError(res.output)
    return run_dir


def match_white_cells(run_dir: Path, frames_of: dict[str, str], bccd: Path) -> dict[str, tuple[str, str] | None]:
    """Per labelled frame: (cell key, the device's class) of the detection that best overlaps the
    annotated WBC box (IoU >= 0.3), or None when the device found no such cell. Every detection
    counts, whatever kind the device gave it: a white cell the model called a platelet is a wrong
    answer (the reviewer corrects it), not a cell to leave out."""
    from hemaedge.benchmarks.tools.segmentation_bccd import read_voc

    with open(run_dir / "cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_frame: dict[str, list] = {}
    for r in rows:
        by_frame.setdefault(Path(r["name"]).stem, []).append(r)
    out = {}
    for f in sorted(frames_of):
        gt = read_voc(bccd / "Annotations" / f"{f}.xml").get("WBC", [])
        scored = [(iou(tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1")), gt[0]), r) for r in by_frame.get(f, [])] \
            if gt else []
        best = max(scored, key=lambda t: t[0], default=(0.0, None))
        out[f] = (f"{int(best[1]['frame'])}:{int(best[1]['cell'])}", best[1]["class"]) if best[0] >= 0.3 else None
    return out


def labelled_run(bccd: Path, split: str, work: Path, bundle=None) -> tuple[Path, dict]:
    """Run the edge pipeline on one split's frames and 'review' it from the annotations."""
    from hemaedge.review.rundata import RunReview

    labels = single_label_frames(bccd, split)
    run_dir = edge_run(labels, bccd, work, f"run-{split}", bundle)
    run = RunReview.open(run_dir)
    done = {f"{r['frame']}:{r['cell']}" for r in run.log}
    found = match_white_cells(run_dir, labels, bccd)
    for f, hit in found.items():
        if hit and hit[0] not in done:
            run.correct(hit[0], labels[f], reviewer="simulated from wbc_subtypes.csv")
    matched = sum(h is not None for h in found.values())
    return run_dir, {"frames": len(labels), "matched": matched, "missed": len(labels) - matched}


def end_to_end(bundle, bccd: Path, work: Path, name: str, split: str = "test") -> dict:
    """The device's answer on every labelled white cell of a split, with `bundle`: right when the
    detection over the annotated cell has the frame's label; a missed cell counts as wrong."""
    labels = single_label_frames(bccd, split)
    run_dir = edge_run(labels, bccd, work, f"e2e-{name}-{split}", bundle)
    found = match_white_cells(run_dir, labels, bccd)
    right = sum(bool(h) and h[1] == labels[f] for f, h in found.items())
    top = top_classes(bundle, run_dir, {h[0] for h in found.values() if h})
    right_top = sum(bool(h) and top.get(h[0]) == labels[f] for f, h in found.items())
    unidentified = sum(bool(h) and h[1] == "unidentified" for h in found.values())
    dom = json.loads((run_dir / "summary.json").read_text()).get("domain") or {}
    return {"domain_unlike": dom.get("unlike_training"), "domain_reasons": dom.get("reasons", []),
            "bundle": str(bundle), "split": split, "frames": len(labels), "right": right,
            "found": sum(h is not None for h in found.values()), "accuracy": round(right / max(1, len(labels)), 4),
            "unidentified": unidentified, "right_top_class": right_top,
            "accuracy_top_class": round(right_top / max(1, len(labels)), 4), "run": str(run_dir)}


def top_classes(bundle, run_dir: Path, keys: set[str]) -> dict[str, str]:
    """The bundle's top class (before the platelet/unidentified rules) on the crops the run saved
    for these cells: what the model itself answered, the device's answer apart from the OOD rule,
    so averaged over the bundle's test-time views as `edge run` on stills does (flips for the default)."""
    import numpy as np

    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.crops import CROPS_DIR
    from hemaedge.edge.defaults import packaged_default_bundle
    from hemaedge.edge.preprocess import prepare_batch, read_image_rgb, resize
    from hemaedge.edge.tta import bundle_views, predict_views
    from hemaedge.review.rundata import RunReview

    b = load_bundle(bundle or packaged_default_bundle())
    cells = [c for c in RunReview.open(run_dir).cells if c.key in keys and c.crop]
    if not cells:
        return {}
    images = [resize(read_image_rgb(run_dir / CROPS_DIR / c.crop), b.contract.size) for c in cells]
    _, views = bundle_views(b.manifest)
    probs = predict_views(load_backend(b, threads=1).predict, prepare_batch(images, b.contract), views)
    return {c.key: b.classes[int(k)] for c, k in zip(cells, np.argmax(probs, axis=1))}


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
    ap.add_argument("--fit", choices=("tail", "head"), help="Recipe: what is fitted [train adapt's default: tail]")
    ap.add_argument("--blocks", type=int, help="Recipe: trailing backbone blocks trained [train adapt's default]")
    ap.add_argument("--lr", type=float, help="Recipe: learning rate")
    ap.add_argument("--augment", help="Recipe: dihedral, light, full or robust")
    ap.add_argument("--new-weight", type=float, help="Recipe: share of the loss carried by the new cells")
    ap.add_argument("--replay-ratio", type=float, help="Recipe: replay images per new training cell")
    ap.add_argument("--replay-pool", type=int, help="Recipe: draw each epoch's replay afresh from this many")
    ap.add_argument("--distill", type=float, help="Recipe: share of the replay targets from the base's answers")
    ap.add_argument("--bn", choices=("frozen", "new", "mixed"), help="Recipe: BatchNorm statistics")
    ap.add_argument("--balance", action="store_true", default=None, help="Recipe: class-balanced new cells")
    ap.add_argument("--max-old-drop", type=float,
                    help="Recipe: largest share of the base's accuracy on old-microscope check images a fit may lose")
    ap.add_argument("--views", choices=("auto", "off", "flips", "dihedral"),
                    help="Recipe: test-time views of the adapted bundle [train adapt's default: auto, the base's]")
    ap.add_argument("--label", default="", help="Name of the base in the table (which weights ran)")
    args = ap.parse_args(argv)

    from hemaedge.train.adapt import AdaptConfig, adapt

    recipe = {k: v for k in RECIPE if k != "epochs" and (v := getattr(args, k)) is not None}

    args.work.mkdir(parents=True, exist_ok=True)
    # The device's own crops: a bundle base runs the edge pipeline itself; a .keras base, the packaged default.
    bundle = args.base if (Path(args.base) / "manifest.json").is_file() else None
    train_run, train_stats = labelled_run(args.bccd, "train", args.work, bundle)
    test_run, test_stats = labelled_run(args.bccd, "test", args.work, bundle)
    rows, cache = [], {}
    export_steps = {x.strip() for x in args.export_steps.split(",") if x.strip()}
    command = "python -m hemaedge.train.adapt_bccd " + " ".join(argv if argv is not None else sys.argv[1:])
    before_e2e = end_to_end(bundle, args.bccd, args.work, "base") if bundle else None
    for step in [s.strip() for s in args.steps.split(",")]:
        n = None if step == "all" else int(step)  # "all": every labelled train cell (the multi-domain model)
        out = args.work / f"adapt-{step}-seed{args.seed}"
        cfg = AdaptConfig(base=args.base, data=[str(train_run)], out=str(out), replay=args.replay,
                          test=[str(test_run)], limit=n, epochs=args.epochs, seed=args.seed,
                          eval_limit=args.eval_limit, export=step in export_steps, **recipe)
        result = cached_result(out, cfg) or adapt(cfg, logf=print, command=command, before_cache=cache)
        after_e2e = None
        if result.get("bundle") and result["bundle"].get("status") != "failed":
            after_e2e = end_to_end(result["bundle"]["path"], args.bccd, args.work, f"adapt-{step}-seed{args.seed}")
        p = result["provenance"]
        b, a = p["accuracy_before"], p["accuracy_after"]
        rows.append({"step": step, "cells": p["counts"]["new_cells"], "train": p["counts"]["new_train"],
                     "end_to_end_before": before_e2e, "end_to_end_after": after_e2e,
                     "recipe": {k: p["training"].get(k) for k in RECIPE},
                     "held_out": p["counts"]["held_out"], "replay": p["counts"]["replay"],
                     "bccd_test_before": b[f"test:{test_run.name}"]["accuracy"],
                     "bccd_test_after": a[f"test:{test_run.name}"]["accuracy"],
                     "bccd_test_n": a[f"test:{test_run.name}"]["n"],
                     "pbc_val_before": b["pbc_val"]["accuracy"], "pbc_val_after": a["pbc_val"]["accuracy"],
                     "pbc_val_n": a["pbc_val"]["n"],
                     "pbc_val_int8": (result.get("bundle") or {}).get("pbc_val_accuracy_int8"),
                     "pbc_val_int8_n": (result.get("bundle") or {}).get("pbc_val_n_int8"),
                     "chosen_epoch": p["training"]["chosen_epoch"], "wall_s": result["wall_seconds"],
                     # --fit head from a bundle: the figures are the fitted head on the bundle's own int8 features
                     "figures": "bundle" if p["training"].get("features") else "keras",
                     "cpu_s": result.get("cpu_seconds"),
                     "train_s": p["training"]["train_seconds"]})
        write_tables(args, rows, train_stats, test_stats, command)  # after every step: partial results count
    return 0


def _domain_word(e2e: dict | None) -> str:
    """The run's domain check in a word or two: like, or unlike and why (colour / confidence)."""
    if not e2e or e2e.get("domain_unlike") is None:
        return "-"
    why = [w for w, key in (("colour", "colour"), ("confidence", "unsure")) if any(key in r for r in e2e["domain_reasons"])]
    return "unlike (" + ", ".join(why) + ")" if e2e["domain_unlike"] else "like"


def write_tables(args, rows, train_stats, test_stats, command):
    from hemaedge.benchmarks.tools.result_files import write_result
    from hemaedge.train.finetune import machine

    data = {"rows": rows, "train_run": train_stats, "test_run": test_stats, "base": args.base, "label": args.label,
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": os.getloadavg(), "command": command}
    recipe = rows[0]["recipe"] if rows else {}
    # where the before/after figures come from: the Keras model, or (a bundle base, --fit head) the bundle's own
    # int8 backbone's features under the base and the fitted classifier layer (what the adapted bundle computes)
    model = "int8 features" if rows and rows[0].get("figures") == "bundle" else "Keras"
    lines = ["# Adapting to BCCD (\"your microscope\")", "",
             f"Base {args.label + ': ' if args.label else ''}`{args.base}`; machine {data['machine']}; {data['date']}; "
             f"load average {data['load_average'][0]:.1f} (shared machine: wall times are noisy).", "",
             f"Command: `{data['command']}`", "",
             "Recipe: " + ", ".join(f"{k}={v}" for k, v in recipe.items()) + " (chosen on BCCD train cells and "
             "PBC val only: benchmarks/history/adapt-keras-source/adapt_recipes.md).", "",
             f"BCCD train: {train_stats['frames']} single-label frames, white cell found in {train_stats['matched']} "
             f"(missed {train_stats['missed']}); BCCD test: {test_stats['frames']} frames, {test_stats['matched']} "
             "found (the test set).", "",
             f"| labelled cells | train / held out | replay | BCCD test before -> after ({model}, device crops) "
             "| BCCD test end to end, int8 bundle (`edge run`) | same cells, int8 top class (no OOD rule) "
             f"| PBC val before -> after ({model}) "
             "| PBC val int8 bundle | chosen epoch | train s / wall s / CPU s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        int8 = "-" if r["pbc_val_int8"] is None else f"{r['pbc_val_int8']:.4f} (n={r['pbc_val_int8_n']})"
        eb, ea = r.get("end_to_end_before"), r.get("end_to_end_after")
        e2e = "-" if not ea else (f"{eb['accuracy']:.3f} -> " if eb else "") + \
            f"**{ea['accuracy']:.3f}** ({ea['right']} of {ea['frames']} right, {ea['found']} found" + \
            (f", {ea['unidentified']} unidentified)" if "unidentified" in ea else ")") + \
            ("" if ea.get("domain_unlike") is None else
             f"; domain check: {_domain_word(ea)}" + (f" (base: {_domain_word(eb)})" if eb else ""))
        top = "-" if not ea or "accuracy_top_class" not in ea else \
            (f"{eb['accuracy_top_class']:.3f} -> " if eb and "accuracy_top_class" in eb else "") + \
            f"**{ea['accuracy_top_class']:.3f}**"
        whole = r.get("step") == "all" or (r.get("step", "").isdigit() and int(r["step"]) > r["cells"])
        cells = (f"{r['step']} asked: all {r['cells']}" if r.get("step") != "all" else f"all {r['cells']}") + \
            " (the multi-domain model)" if whole else str(r["cells"])
        chosen = f"step {r['chosen_epoch']}" if r["recipe"].get("fit") == "head" else \
            f"{r['chosen_epoch']} of {r['recipe'].get('epochs') or args.epochs}"
        lines.append(f"| {cells} | {r['train']} / {r['held_out']} | {r['replay']} | "
                     f"{r['bccd_test_before']:.3f} -> **{r['bccd_test_after']:.3f}** (n={r['bccd_test_n']}) | {e2e} | {top} | "
                     f"{r['pbc_val_before']:.4f} -> {r['pbc_val_after']:.4f} "
                     f"({100 * (r['pbc_val_after'] - r['pbc_val_before']):+.2f} pt, n={r['pbc_val_n']}) | {int8} | "
                     f"{chosen} | {r['train_s']:.0f} / {r['wall_s']:.0f} / "
                     f"{'-' if r.get('cpu_s') is None else format(r['cpu_s'], '.0f')} |")
    lines += ["", "Goals (issue #14): >= 95% on BCCD test after 100 cells, PBC val drop <= 0.5 pt, <= 10 min wall per "
              "adaptation. BCCD test: the device's crop of every annotated white cell of the test split's single-label "
              "frames (whatever kind the device gave it; never used to choose anything). End to end: `hemaedge edge run` "
              "with the exported int8 bundle on the test frames, right when the detection over the annotated cell has "
              "its label (a missed cell is wrong, and so is one the OOD rule made *unidentified*); the next column is the same "
              "bundle's top class on the crops that run saved (what the model answered before the unidentified rule). "
              "PBC val: "
              + (f"{args.eval_limit} images per class (seeded), " if args.eval_limit else "the whole split, ")
              + ("Keras model" if model == "Keras" else "the base bundle's int8 features through the base and the "
                 "fitted classifier layer, view-averaged as the device runs them (`train adapt --fit head` from the "
                 "bundle alone; the adapted bundle is the base's model file with that layer written in)")
              + " before and after; the int8 column is the exported bundle on PBC val as the export's "
              "parity check draws it (one view). Wall time covers loading, training, evaluation and (where exported) the "
              "bundle's export, not the end-to-end run; train s is the fitting alone; CPU s: processor seconds of all the "
              "adaptation's threads (on an idle 2-core machine the wall time would be at least half of it).", ""]
    write_result(args.out, data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
