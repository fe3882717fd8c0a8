"""Choosing the adaptation recipe on BCCD TRAIN cells only (never the test split).

    python -m hemaedge.benchmarks.tools.adapt_recipes --base BUNDLE_OR_KERAS --bccd ../shared/data/bccd \
        --replay ../shared/data/bloodmnist128 --work ~/hemaedge-runs/review/recipes \
        --out benchmarks/results/adapt_recipes --cells 100 \
        --recipe "v0:" --recipe "b4:blocks=4" --recipe "b4-robust:blocks=4,augment=robust,epochs=12"

The reviewed BCCD train run of `hemaedge.train.adapt_bccd` (the reviewer simulated from
wbc_subtypes.csv) is split once, seeded: --cells cells to adapt on (of which `train adapt` holds
out its own 20% to choose the epoch) and every other train cell as the development set that
compares recipes. Each recipe (`name:key=value,...`, keys of AdaptConfig: blocks, lr, epochs,
augment, new_weight, replay_ratio, replay_pool, batch_size, holdout, distill, bn, balance) is one
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

_TUNABLE = ("blocks", "lr", "epochs", "augment", "new_weight", "replay_ratio", "replay_pool", "batch_size", "holdout",
            "distill", "bn", "balance")
_INT = ("blocks", "epochs", "batch_size", "replay_pool")


def parse_recipe(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    opts = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        k, _, v = item.partition("=")
        if k not in _TUNABLE:
            raise SystemExit(f"recipe {name!r}: unknown setting {k!r}; expected some of {', '.join(_TUNABLE)}")
        opts[k] = v if k in ("augment", "bn") else v.lower() in ("1", "true", "yes") if k == "balance" \
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", action="append", required=True, help="name:key=value,... (see the module doc)")
    args = ap.parse_args(argv)

    from hemaedge.export.source import read_sidecar
    from hemaedge.train.adapt import AdaptConfig, adapt, resolve_base
    from hemaedge.train.adapt_bccd import cached_result, labelled_run

    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.base if (Path(args.base) / "manifest.json").is_file() else None
    train_run, train_stats = labelled_run(args.bccd, "train", args.work, bundle)
    classes = list(read_sidecar(resolve_base(args.base)[0]).get("classes") or [])
    adapt_tree, dev_tree, counts = dev_split(train_run, classes, args.cells, args.seed,
                                             args.work / f"dev-{args.cells}-seed{args.seed}")
    command = "python -m hemaedge.benchmarks.tools.adapt_recipes " + " ".join(
        argv if argv is not None else sys.argv[1:])
    rows, cache = [], {}
    for text in args.recipe:
        name, opts = parse_recipe(text)
        out = args.work / f"recipe-{name}"
        cfg = AdaptConfig(base=args.base, data=[str(adapt_tree)], out=str(out), replay=args.replay,
                          test=[str(dev_tree)], seed=args.seed, export=False, **opts)
        result = cached_result(out, cfg) or adapt(cfg, logf=print, command=command, before_cache=cache)
        p = result["provenance"]
        b, a = p["accuracy_before"], p["accuracy_after"]
        rows.append({"recipe": name, "settings": opts, "chosen_epoch": p["training"]["chosen_epoch"],
                     "epochs": p["training"]["epochs"],
                     "held_out": a["held_out"]["accuracy"], "held_out_n": a["held_out"]["n"],
                     "dev_before": b["test:dev"]["accuracy"], "dev_after": a["test:dev"]["accuracy"],
                     "dev_n": a["test:dev"]["n"], "dev_recall": a["test:dev"]["per_class_recall"],
                     "pbc_before": b["pbc_val"]["accuracy"], "pbc_after": a["pbc_val"]["accuracy"],
                     "pbc_n": a["pbc_val"]["n"], "train_s": p["training"]["train_seconds"],
                     "wall_s": result["wall_seconds"]})
        write_tables(args, rows, train_stats, counts, command)
    return 0


def write_tables(args, rows, train_stats, counts, command):
    from hemaedge.benchmarks.tools.result_files import write_result
    from hemaedge.train.finetune import machine

    data = {"rows": rows, "base": args.base, "train_run": train_stats, "split": counts, "cells": args.cells,
            "seed": args.seed, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": os.getloadavg(), "command": command}
    lines = ["# Choosing the adaptation recipe on BCCD train cells (development set, not the test split)", "",
             f"Base `{args.base}`; machine {data['machine']}; {data['date']}; load average "
             f"{data['load_average'][0]:.1f} (shared machine: the new default trains beside it at higher priority).", "",
             f"Command: `{command}`", "",
             f"BCCD train: {train_stats['matched']} of {train_stats['frames']} single-label frames' white cells found and "
             f"'reviewed'; {args.cells} to adapt on ({counts['adapt']}), the other "
             f"{sum(counts['dev'].values())} are the development set ({counts['dev']}).", "",
             "| recipe | settings | dev before -> after | dev recall per class | PBC val before -> after | "
             "held-out (chooses epoch) | chosen epoch | train s / wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
        recall = ", ".join(f"{k[:4]} {v:.2f}" for k, v in r["dev_recall"].items())
        lines.append(f"| {r['recipe']} | {settings} | {r['dev_before']:.3f} -> **{r['dev_after']:.3f}** (n={r['dev_n']}) | "
                     f"{recall} | {r['pbc_before']:.4f} -> {r['pbc_after']:.4f} ({100 * (r['pbc_after'] - r['pbc_before']):+.2f} pt) | "
                     f"{r['held_out']:.3f} (n={r['held_out_n']}) | {r['chosen_epoch']} of {r['epochs']} | "
                     f"{r['train_s']:.0f} / {r['wall_s']:.0f} |")
    lines += ["", "Defaults (`hemaedge train adapt`): blocks=2, lr=3e-4, epochs=8, augment=dihedral, new_weight=0.5, "
              "replay_ratio=2, holdout=0.2, distill=0, bn=frozen, balance off. The development set is small: one "
              "cell is 1.1 pt of 92, and a 77 % accuracy has a standard error of about 4.4 pt, so rows closer "
              "than that are not told apart. PBC val: the whole split (Keras model). Wall time: loading, training and "
              "evaluation, no int8 export. A recipe whose adaptation already finished in --work is read back, not run "
              "again (its settings must match); the load average above is the one at writing.", ""]
    write_result(args.out, data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
