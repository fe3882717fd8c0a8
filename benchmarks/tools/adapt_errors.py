"""What an adapted model still gets wrong on BCCD train cells it did not adapt on (issue #14).

    python -m hemaedge.benchmarks.tools.adapt_errors --work ~/hemaedge-runs/adapt/recipes-flips \
        --bccd ../shared/data/bccd --recipe head --splits 0,1,2 --out benchmarks/results/adapt_errors

Reads the adaptations and development sets that `adapt_recipes` left in --work (it trains nothing):
for each split, the recipe's adapted Keras model answers every development cell (BCCD TRAIN cells,
never the test split) with the base's test-time views, and so does the base. Every cell is then
described by how the device cropped it against the annotated VOC box (overlap, size, kind the
segmenter gave it), so an error can be put down to the crop (the cell was cut wrongly) or to the
class; cells that are wrong for every split's model although the crop is good, and that the base
also calls the same other class, are listed as candidates for a label to check (BCCD's subtype
labels are known to be noisy), with a contact sheet of all wrong cells to look at.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

# A crop is "off" when the device's box and the annotated box overlap less than this, or their areas
# differ by more than this factor: the model then saw part of the cell, or the cell with much around it.
MIN_IOU = 0.5
MAX_AREA_RATIO = 2.0
# A crop "runs off the frame" when more than this share of it is the frame's replicated border
# (edge.segment.extract_crop): the model then sees stripes where the cell's surroundings should be.
MAX_PADDED = 0.05


def padded_share(box, side: int, width: int, height: int) -> float:
    """The share of a square crop of `side` centred on `box` that lies outside the frame. The device
    centres its crop on the cell's centroid, which cells.csv does not keep; the box centre is within a
    few pixels of it, so this is close, not exact."""
    cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    x0, y0 = cx - side // 2, cy - side // 2
    inside = max(0, min(width, x0 + side) - max(0, x0)) * max(0, min(height, y0 + side) - max(0, y0))
    return 1 - inside / float(side * side)


def crop_key(name: str) -> tuple[int, int]:
    """f000012_c0003.png -> (12, 3): the frame and cell numbers of cells.csv."""
    stem = Path(name).stem
    f, c = stem.split("_")
    return int(f[1:]), int(c[1:])


def crop_quality(run_dir: Path, bccd: Path) -> dict[tuple[int, int], dict]:
    """Per device cell of the reviewed run: its frame, kind and box against the frame's annotated WBC box."""
    from hemaedge.benchmarks.tools.segmentation_bccd import read_voc
    from hemaedge.edge.segment import iou

    import cv2

    with open(run_dir / "cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out, sizes = {}, {}
    for r in rows:
        frame = Path(r["name"]).stem
        gt = read_voc(bccd / "Annotations" / f"{frame}.xml").get("WBC", [])
        box = tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        if frame not in sizes:
            sizes[frame] = cv2.imread(str(bccd / "JPEGImages" / f"{frame}.jpg")).shape[:2]
        h, w = sizes[frame]
        q = {"frame": frame, "kind": r["kind"], "device_class": r["class"], "box": box,
             "padded": round(padded_share(box, int(r["crop_side"]), w, h), 3)}
        if gt:
            g = gt[0]
            area = max(1, (box[2] - box[0]) * (box[3] - box[1]))
            garea = max(1, (g[2] - g[0]) * (g[3] - g[1]))
            q.update(gt_box=g, iou=round(float(iou(box, g)), 3), area_ratio=round(area / garea, 3))
            others = [o for o in rows if o["name"] == r["name"] and o is not r and
                      iou(tuple(int(o[k]) for k in ("x0", "y0", "x1", "y1")), g) > 0.1]
            q["other_detections_on_cell"] = len(others)
            q["crop_off"] = bool(q["iou"] < MIN_IOU or not 1 / MAX_AREA_RATIO <= q["area_ratio"] <= MAX_AREA_RATIO)
        out[(int(r["frame"]), int(r["cell"]))] = q
    return out


def dev_cells(tree: Path, classes: list[str]) -> list[tuple[str, int, Path]]:
    return [(p.name, classes.index(c.name), p) for c in sorted(tree.iterdir()) if c.is_dir()
            for p in sorted(c.iterdir())]


def answers(model_path: Path, paths: list[Path], views, size: int) -> np.ndarray:
    """A bundle's (device back end) or Keras model's probabilities on the crops, over the views."""
    from hemaedge.edge.preprocess import read_image_rgb, resize
    from hemaedge.train.adapt_bccd import model_answers

    return model_answers(model_path, np.stack([resize(read_image_rgb(p), size) for p in paths]), views)


def contact_sheet(path: Path, cells: list[dict], run_dir: Path, classes: list[str]) -> None:
    """The wrong cells, each as the model's crop and the wider context view, titled true -> answer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hemaedge.edge.crops import CROPS_DIR
    from hemaedge.edge.preprocess import read_image_rgb

    cols = 6
    rows = max(1, -(-len(cells) // cols))
    fig, axes = plt.subplots(rows, cols * 2, figsize=(cols * 2 * 1.4, rows * 1.7), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, c in enumerate(cells):
        r, k = divmod(i, cols)
        crop = read_image_rgb(run_dir / CROPS_DIR / c["crop"])
        ctx_path = run_dir / "context" / c["crop"]
        axes[r, 2 * k].imshow(crop)
        if ctx_path.is_file():
            axes[r, 2 * k + 1].imshow(read_image_rgb(ctx_path))
        off = " CROP" if c.get("crop_off") else ""
        axes[r, 2 * k].set_title(f"{c['frame'][-5:]} {c['label'][:4]}>{c['answer'][:4]}{off}\n"
                                 f"wrong {c['wrong']}/{c['seen']}", fontsize=6)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72, pil_kwargs={"quality": 80})  # JPEG: photos of cells, a tenth of the PNG
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="adapt_recipes' --work folder (read only)")
    ap.add_argument("--bccd", type=Path, required=True)
    ap.add_argument("--base", required=True, help="the base adapt_recipes adapted (its --base)")
    ap.add_argument("--recipe", default="head")
    ap.add_argument("--cells", type=int, default=100, help="adapt_recipes' --cells (names its split folders)")
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--out", type=Path, required=True, help="OUT.md, OUT.json and OUT.jpg")
    args = ap.parse_args(argv)

    from hemaedge.benchmarks.tools.result_files import write_result
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.train.adapt import resolve_base, resolved_views
    from hemaedge.train.adapt_bccd import base_classes
    from hemaedge.train.finetune import machine

    run_dir = args.work / "run-train"
    seeds = [int(s) for s in args.splits.split(",")]
    first = args.work / f"recipe-{args.recipe}"
    base = args.base
    classes = base_classes(base)
    views_name, views = resolved_views(base)
    # the adapted models: their bundles where `train adapt --fit head` adapted a bundle alone, else Keras files
    bundle_base = (Path(base) / "manifest.json").is_file() and (first / "bundle" / "manifest.json").is_file()
    base_model = Path(base) if bundle_base else resolve_base(base)[0]
    size = load_bundle(base).contract.size if bundle_base else None
    quality = crop_quality(run_dir, args.bccd)

    per_cell: dict[str, dict] = {}
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    base_confusion = np.zeros_like(confusion)
    split_acc = {}
    for seed in seeds:
        model = args.work / (f"recipe-{args.recipe}" if seed == 0 else f"recipe-{args.recipe}-split{seed}") / \
            ("bundle" if bundle_base else "model.keras")
        cells = dev_cells(args.work / f"dev-{args.cells}-seed{seed}" / "dev", classes)
        paths = [p for _, _, p in cells]
        if size is None:
            from hemaedge.export.source import read_sidecar

            size = int(read_sidecar(model)["input"]["size"])
        p_after, p_before = answers(model, paths, views, size), answers(base_model, paths, views, size)
        split_acc[seed] = round(float(np.mean([p_after[i].argmax() == y for i, (_, y, _) in enumerate(cells)])), 4)
        for i, (name, y, _) in enumerate(cells):
            a, b = int(p_after[i].argmax()), int(p_before[i].argmax())
            confusion[y, a] += 1
            base_confusion[y, b] += 1
            c = per_cell.setdefault(name, {"crop": name, "label": classes[y], "seen": 0, "wrong": 0, "answers": [],
                                           "base_answer": classes[b], **{k: v for k, v in quality[crop_key(name)].items()
                                                                         if k not in ("box", "gt_box")}})
            c["seen"] += 1
            c["wrong"] += int(a != y)
            c["answers"].append([classes[a], round(float(p_after[i][a]), 3), round(float(p_after[i][y]), 3)])

    edge_pairs = [(c["seen"], c["wrong"]) for c in per_cell.values() if c["padded"] > MAX_PADDED]
    inner_pairs = [(c["seen"], c["wrong"]) for c in per_cell.values() if c["padded"] <= MAX_PADDED]
    by_padding = {k: {"cells": len(v), "answers": sum(s for s, _ in v), "wrong": sum(w for _, w in v)}
                  for k, v in (("runs off the frame", edge_pairs), ("inside the frame", inner_pairs))}
    wrong = [c for c in per_cell.values() if c["wrong"]]
    for c in wrong:
        c["answer"] = Counter(a for a, _, _ in c["answers"] if a != c["label"]).most_common(1)[0][0]
        # a label to check: every model that saw it disagrees, the crop is good and the PBC-only base
        # (which never saw a BCCD label) gives the same other answer
        c["label_to_check"] = bool(c["wrong"] == c["seen"] and not c.get("crop_off") and c["base_answer"] == c["answer"])
    wrong.sort(key=lambda c: (not c.get("crop_off"), c["label"], -c["wrong"], c["crop"]))
    runs_wrong = int(confusion.sum() - np.trace(confusion))
    by_cause = {"crop off the cell": sum(c["wrong"] for c in wrong if c.get("crop_off")),
                "label to check (good crop, every model and the base agree on another class)":
                    sum(c["wrong"] for c in wrong if c["label_to_check"]),
                "class (good crop, the rest)": sum(c["wrong"] for c in wrong
                                                   if not c.get("crop_off") and not c["label_to_check"])}
    pairs = Counter()
    for c in wrong:
        for a, _, _ in c["answers"]:
            if a != c["label"]:
                pairs[(c["label"], a)] += 1
    sheet = args.out.with_name(args.out.name + ".jpg")
    contact_sheet(sheet, wrong, run_dir, classes)

    command = "python -m hemaedge.benchmarks.tools.adapt_errors " + " ".join(argv if argv is not None else sys.argv[1:])
    data = {"work": str(args.work), "recipe": args.recipe, "base": base, "views": views_name, "splits": seeds,
            "split_accuracy": split_acc, "classes": classes, "confusion": confusion.tolist(),
            "base_confusion": base_confusion.tolist(), "runs": int(confusion.sum()), "runs_wrong": runs_wrong,
            "by_cause": by_cause, "by_padding": by_padding, "max_padded": MAX_PADDED, "pairs": [[t, a, n] for (t, a), n in pairs.most_common()], "wrong_cells": wrong,
            "min_iou": MIN_IOU, "max_area_ratio": MAX_AREA_RATIO, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg(),
            "command": command}
    shown = [k for k in range(len(classes)) if confusion[k].sum() or confusion[:, k].sum()]
    lines = ["# What the adapted model still gets wrong on BCCD train cells (development cells, not the test split)", "",
             f"Adaptations: recipe `{args.recipe}` of `adapt_recipes` in `{args.work}` (base `{base}`, views {views_name}); "
             f"splits {', '.join(map(str, seeds))}, each with its own development cells (BCCD train cells the split did "
             f"not adapt on); machine {data['machine']}; {data['date']}.", "",
             f"Command: `{command}`", "",
             f"Development answers: {int(confusion.sum())} (cell, split) pairs over {len(per_cell)} distinct cells; "
             f"wrong: {runs_wrong} ({100 * runs_wrong / max(1, confusion.sum()):.1f} %), by {len(wrong)} distinct cells. "
             "Accuracy per split: " + ", ".join(f"{k}: {v:.3f}" for k, v in split_acc.items()) + ".", "",
             "## Confusion, adapted (rows: BCCD label, columns: answer; summed over splits)", "",
             "| label \\ answer | " + " | ".join(classes[k][:5] for k in shown) + " | recall |",
             "|---|" + "---|" * (len(shown) + 1)]
    for k in shown:
        n = confusion[k].sum()
        if n:
            lines.append(f"| {classes[k]} | " + " | ".join(str(confusion[k, j]) for j in shown) +
                         f" | {confusion[k, k] / n:.2f} (base {base_confusion[k, k] / n:.2f}) |")
    lines += ["", "## Errors by cause (wrong (cell, split) answers)", "", "| cause | wrong answers | share |", "|---|---|---|"]
    for k, v in by_cause.items():
        lines.append(f"| {k} | {v} | {100 * v / max(1, runs_wrong):.0f} % |")
    lines += ["", f"Crops that run off the frame (more than {100 * MAX_PADDED:.0f} % replicated border): " + "; ".join(
        f"{k}: {v['cells']} cells, {v['wrong']} of {v['answers']} answers wrong "
        f"({100 * v['wrong'] / max(1, v['answers']):.0f} %)" for k, v in by_padding.items()) + "."]
    lines += ["", "Most frequent confusions: " + ", ".join(f"{t} -> {a} {n}" for (t, a), n in pairs.most_common(6)) + ".",
              "", "## Wrong cells", "",
              "| frame | crop | label | answer (wrong in / seen) | base (PBC only) | device box vs annotated: IoU, area ratio, "
              "other detections on the cell | crop share off the frame | device kind | label to check |", "|---|---|---|---|---|---|---|---|---|"]
    for c in wrong:
        lines.append(f"| {c['frame']} | {c['crop']} | {c['label']} | {c['answer']} ({c['wrong']}/{c['seen']}) | "
                     f"{c['base_answer']} | {c.get('iou', '-')}, {c.get('area_ratio', '-')}, "
                     f"{c.get('other_detections_on_cell', '-')}{' (crop off)' if c.get('crop_off') else ''} | "
                     f"{100 * c['padded']:.0f} % | {c['kind']} | {'yes' if c['label_to_check'] else ''} |")
    lines += ["", f"Contact sheet of these cells (model crop and context view): `{sheet.name}`. A crop is 'off' when "
              f"the device's box overlaps the annotated box less than IoU {MIN_IOU} or their areas differ by more than "
              f"{MAX_AREA_RATIO}x. 'Label to check' is a rule, not a verdict: good crop, wrong for every split's model "
              "that saw it, and the PBC-only base (which never saw a BCCD label) gives the same other class; docs/review.md "
              "says what looking at the sheet showed. The BCCD annotated box is itself loose (drawn by hand), so IoU "
              "0.5-0.7 is normal for a good crop.", ""]
    write_result(args.out, data, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
