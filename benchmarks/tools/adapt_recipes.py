"""Choosing the adaptation recipe on BCCD TRAIN cells only (never the test split).

    python -m hemaedge.benchmarks.tools.adapt_recipes --base BUNDLE_OR_KERAS --bccd ../shared/data/bccd \
        --replay ../shared/data/bloodmnist128 --work ~/hemaedge-runs/review/recipes \
        --out benchmarks/results/adapt_recipes --cells 100 \
        --recipe "v0:" --recipe "b4:blocks=4" --recipe "b4-robust:blocks=4,augment=robust,epochs=12"

The reviewed BCCD train run of `hemaedge.train.adapt_bccd` (the reviewer simulated from
wbc_subtypes.csv) is split once, seeded: --cells cells to adapt on (of which `train adapt` holds
out its own 20% to choose the epoch) and every other train cell as the development set that
compares recipes; --splits repeats this for several seeded splits (the seed also seeds `train adapt`),
and the summary gives each recipe's mean and standard deviation over them. Each recipe (`name:key=value,...`, keys of AdaptConfig: blocks, lr, epochs,
augment, new_weight, replay_ratio, replay_pool, batch_size, holdout, distill, bn, balance, views) is one
`train adapt`; the table reports the
development-set accuracy and the change on PBC val (the old microscope), and the wall time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

_TUNABLE = ("fit", "blocks", "lr", "epochs", "augment", "new_weight", "replay_ratio", "replay_pool", "batch_size", "holdout",
            "distill", "bn", "balance", "views", "max_old_drop", "old_check")
_INT = ("blocks", "epochs", "batch_size", "replay_pool", "old_check")


def parse_recipe(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    opts = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        k, _, v = item.partition("=")
        if k not in _TUNABLE:
            raise SystemExit(f"recipe {name!r}: unknown setting {k!r}; expected some of {', '.join(_TUNABLE)}")
        opts[k] = v if k in ("augment", "bn", "fit", "views") else v.lower() in ("1", "true", "yes") if k == "balance" \
            else int(v) if k in _INT else float(v)
    return name, opts


def dev_split(run_dir: Path, classes: list[str], n: int, seed: int, root: Path) -> tuple[Path, Path, dict]:
    """Two class-folder trees of links to the reviewed crops: n cells to adapt on, the rest to compare on."""
    from hemaedge.edge.crops import CROPS_DIR
    from hemaedge.review.rundata import RunReview

    cells = [c for c in RunReview.open(run_dir).cells if c.reviewed and c.current in classes and c.crop]
    order = np.random.default_rng(seed).permutation(len(cells))
    parts = {"adapt": [cells[i] for i in order[:n]], "dev": [cells[i] for i in order[n:]]}
    for part, members in parts.items():
        for c in members:
            link = root / part / c.current / c.crop
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink((run_dir / CROPS_DIR / c.crop).resolve(), link)
    counts = {p: {k: sum(c.current == k for c in m) for k in classes if any(c.current == k for c in m)}
              for p, m in parts.items()}
    return root / "adapt", root / "dev", counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--bccd", type=Path, required=True)
    ap.add_argument("--replay", required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="Table prefix: OUT.md and OUT.json")
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="The split's seed (one split)")
    ap.add_argument("--splits", help="Several splits: their seeds, comma-separated (e.g. 0,1,2); overrides --seed")
    ap.add_argument("--recipe", action="append", required=True, help="name:key=value,... (see the module doc)")
    args = ap.parse_args(argv)

    from hemaedge.train.adapt_bccd import base_classes, labelled_run

    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.base if (Path(args.base) / "manifest.json").is_file() else None
    train_run, train_stats = labelled_run(args.bccd, "train", args.work, bundle)
    classes = base_classes(args.base)
    seeds = [int(x) for x in args.splits.split(",")] if args.splits else [args.seed]
    command = "python -m hemaedge.benchmarks.tools.adapt_recipes " + " ".join(
        argv if argv is not None else sys.argv[1:])
    rows, cache, counts = [], {}, {}
    recipes = [parse_recipe(text) for text in args.recipe]
    for seed in seeds:  # split by split: a stopped series has whole splits for every recipe
        adapt_tree, dev_tree, counts[seed] = dev_split(train_run, classes, args.cells, seed,
                                                       args.work / f"dev-{args.cells}-seed{seed}")
        for name, opts in recipes:
            rows.append(one_recipe(args, name, opts, seed, adapt_tree, dev_tree, command, cache))
            write_tables(args, rows, train_stats, counts, seeds, command)
    return 0


def one_recipe(args, name, opts, seed, adapt_tree, dev_tree, command, cache) -> dict:
    from hemaedge.train.adapt import AdaptConfig, adapt
    from hemaedge.train.adapt_bccd import cached_result

    # split 0 keeps the single-split folder name, so earlier finished recipes are read back
    out = args.work / (f"recipe-{name}" if seed == 0 else f"recipe-{name}-split{seed}")
    # --fit head from a bundle: the adapted bundle is the model (no Keras file), and costs one parity pass
    from_bundle = (Path(args.base) / "manifest.json").is_file() and opts.get("fit", "head") == "head"
    cfg = AdaptConfig(base=args.base, data=[str(adapt_tree)], out=str(out), replay=args.replay,
                      test=[str(dev_tree)], seed=seed, export=from_bundle, **opts)
    result = cached_result(out, cfg) or adapt(cfg, logf=print, command=command, before_cache=cache)
    p = result["provenance"]
    b, a = p["accuracy_before"], p["accuracy_after"]
    return {"recipe": name, "split": seed, "settings": opts, "chosen_epoch": p["training"]["chosen_epoch"],
            "epochs": p["training"]["epochs"], "fit": p["training"].get("fit", "tail"),
            "held_out": a["held_out"]["accuracy"], "held_out_n": a["held_out"]["n"],
            "dev_before": b["test:dev"]["accuracy"], "dev_after": a["test:dev"]["accuracy"],
            "dev_n": a["test:dev"]["n"], "dev_recall": a["test:dev"]["per_class_recall"],
            "pbc_before": b["pbc_val"]["accuracy"], "pbc_after": a["pbc_val"]["accuracy"],
            "pbc_n": a["pbc_val"]["n"], "train_s": p["training"]["train_seconds"],
            "wall_s": result["wall_seconds"]}


def summary(rows: list[dict]) -> list[dict]:
    """Per recipe, over the splits it has run on: mean and sample sd of the dev accuracy, of its gain
    over the base on the same split, and of the PBC val change (pt)."""
    out = []
    for name in dict.fromkeys(r["recipe"] for r in rows):
        rs = [r for r in rows if r["recipe"] == name]
        dev = np.asarray([r["dev_after"] for r in rs])
        gain = np.asarray([r["dev_after"] - r["dev_before"] for r in rs])
        pbc = np.asarray([100 * (r["pbc_after"] - r["pbc_before"]) for r in rs])

        def sd(x):
            return float(x.std(ddof=1)) if len(x) > 1 else None  # one split has no spread
        out.append({"recipe": name, "settings": rs[0]["settings"], "splits": [r["split"] for r in rs],
                    "dev_mean": float(dev.mean()), "dev_sd": sd(dev), "gain_mean": float(gain.mean()),
                    "gain_sd": sd(gain), "pbc_pt_mean": float(pbc.mean()), "pbc_pt_sd": sd(pbc),
                    "wall_s_mean": float(np.mean([r["wall_s"] for r in rs]))})
    return out


def _chosen(r) -> str:
    return f"step {r['chosen_epoch']}" if r.get("fit") == "head" else f"{r['chosen_epoch']} of {r['epochs']}"


def write_tables(args, rows, train_stats, counts, seeds, command):
    from_bundle = (Path(args.base) / "manifest.json").is_file() and all(r["fit"] == "head" for r in rows)
    from hemaedge.benchmarks.tools.result_files import write_result
    from hemaedge.train.finetune import machine

    summ = summary(rows)
    data = {"rows": rows, "summary": summ, "base": args.base, "train_run": train_stats,
            "split": {str(k): v for k, v in counts.items()}, "cells": args.cells, "splits": seeds,
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": os.getloadavg(), "command": command}
    n_dev = sum(next(iter(counts.values()))["dev"].values())
    lines = ["# Choosing the adaptation recipe on BCCD train cells (development set, not the test split)", "",
             f"Base `{args.base}`; machine {data['machine']}; {data['date']}; load average "
             f"{data['load_average'][0]:.1f} (shared machine: other engineers' work runs beside it).", "",
             f"Command: `{command}`", "",
             f"BCCD train: {train_stats['matched']} of {train_stats['frames']} single-label frames' white cells found and "
             f"'reviewed'. Each split (seed {', '.join(map(str, seeds))}): {args.cells} cells to adapt on, the other "
             f"{n_dev} the development set; per split: "
             + "; ".join(f"seed {k}: adapt {v['adapt']}, dev {v['dev']}" for k, v in counts.items()) + ".", "",
             "## Summary over splits (mean ± sd)", "",
             "| recipe | settings | splits | dev accuracy | gain over the base | PBC val change | wall s |",
             "|---|---|---|---|---|---|---|"]
    for m in summ:
        settings = ", ".join(f"{k}={v}" for k, v in m["settings"].items()) or "defaults"
        def pm(sd, fmt, scale=1):
            return "" if sd is None else f" ± {format(scale * sd, fmt)}"
        lines.append(f"| {m['recipe']} | {settings} | {len(m['splits'])} | **{m['dev_mean']:.3f}**{pm(m['dev_sd'], '.3f')} | "
                     f"{100 * m['gain_mean']:+.1f}{pm(m['gain_sd'], '.1f', 100)} pt | "
                     f"{m['pbc_pt_mean']:+.2f}{pm(m['pbc_pt_sd'], '.2f')} pt | {m['wall_s_mean']:.0f} |")
    lines += ["", "## Every run", "",
              "| recipe | split | dev before -> after | dev recall per class | PBC val before -> after | "
              "held-out (chooses) | chosen | train s / wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        recall = ", ".join(f"{k[:4]} {v:.2f}" for k, v in r["dev_recall"].items())
        lines.append(f"| {r['recipe']} | {r['split']} | {r['dev_before']:.3f} -> **{r['dev_after']:.3f}** (n={r['dev_n']}) | "
                     f"{recall} | {r['pbc_before']:.4f} -> {r['pbc_after']:.4f} ({100 * (r['pbc_after'] - r['pbc_before']):+.2f} pt) | "
                     f"{r['held_out']:.3f} (n={r['held_out_n']}) | {_chosen(r)} | "
                     f"{r['train_s']:.0f} / {r['wall_s']:.0f} |")
    lines += ["", "Defaults (`hemaedge train adapt`, since 2026-12-02): fit=head with replay_ratio=12 and distill=0.5, "
              "and since 2026-12-03 max_old_drop=0.005 (800 replay-data train images kept out of the replay sample "
              "watch the old microscope: a step losing more than 0.5 pt of the base's accuracy on them is not chosen; "
              "1 = not watched) (a recipe of only `fit=head` is that), new_weight=0.5, holdout=0.2, balance off; fit=head refits only the "
              "classifier layer, on the frozen features of the 8 flips/rotations of each cell, pulled toward the "
              "base's weights (pull and step chosen on the held-out cells; 'chosen' is that step). fit=tail (the default "
              "before): blocks=2, lr=3e-4, epochs=8, augment=dihedral, replay_ratio=2, distill=0, bn=frozen. One dev cell is "
              f"about {100 / n_dev:.1f} pt; a single split's rows within ~4 pt are not told apart, so recipes are "
              "compared by their mean over splits, with the sd as the split-to-split spread (the splits share "
              "cells, so the sd understates a new lab's spread). PBC val: the whole split ("
              + ("the base bundle's int8 features through the fitted classifier layer, the bundle's views: "
                 "`--fit head` from the bundle alone" if from_bundle else "Keras model") + "). Wall time: "
              "loading, training and evaluation" + (" and the adapted bundle's export (its parity check on PBC val)"
                                                    if from_bundle else ", no int8 export")
              + "; noisy on this shared machine. A recipe whose "
              "adaptation already finished in --work is read back, not run again (its settings must match); the "
              "load average above is the one at writing.", ""]
    write_result(args.out, data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
