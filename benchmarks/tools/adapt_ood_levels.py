"""The adapted models' unidentified level, old rule against new, on BCCD TRAIN cells they did not see (issue #14).

    python -m hemaedge.benchmarks.tools.adapt_ood_levels --work ~/hemaedge-runs/adapt/steps-flips-head-tiers \
        --steps 25,50,100 --out benchmarks/results/adapt_ood_levels

Reads the adaptations `adapt_bccd` left in --work (it trains nothing). Each adapted Keras model answers
the BCCD train cells its adaptation did not use (the same seeded subset `train adapt --limit` draws;
never the test split), with the base's test-time views and the model's own temperature. Both rules read
the levels each reference got (`ood.per_reference`): old (until 2026-12-02), both tiers from the
reference with the larger review level (usually the few held-out cells); new
(`train.adapt.levels_over_references`), each tier the larger over references. A right answer above the
unidentified level is lost from the count; a wrong one below it is counted (flagged when above the
review level, which the fix leaves as it was).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def old_levels(per: dict) -> dict:
    """The rule before the fix: both tiers from the reference with the larger review level."""
    return per[max(per, key=lambda k: per[k]["threshold"])]


def check_step(work: Path, step: str, seed: int) -> dict:
    from hemaedge.edge.confidence import ood_scores
    from hemaedge.export.source import load_source
    from hemaedge.train.adapt import bundle_views, levels_over_references, load_new_cells, predict
    from hemaedge.train.evaluate import apply_temperature

    d = work / f"adapt-{step}-seed{seed}"
    result = json.loads((d / "adapt.json").read_text())
    side = json.loads((d / "model.json").read_text())
    src = load_source(d / "model.keras")
    data = result["provenance"]["data"][0]["path"]
    cells = load_new_cells([data], list(src.classes), src.contract.size)
    used = np.ones(len(cells), bool)
    if int(step) < len(cells):  # train adapt --limit: a seeded subset (train.adapt.adapt)
        used[:] = False
        used[np.sort(np.random.default_rng(seed).permutation(len(cells))[:int(step)])] = True
    unseen = cells.subset(np.flatnonzero(~used))
    views = bundle_views({"inference": side.get("inference") or {}}, "auto")[1]  # as the adapted bundle runs
    p = apply_temperature(predict(src.model, unseen, src.contract, views=views), side["output"]["temperature"])
    s, right = ood_scores(p), p.argmax(1) == unseen.labels
    per = side["ood"]["per_reference"]
    row = {"step": step, "unseen": int(len(unseen)), "right": int(right.sum()), "views": list(views),
           "held_out": per["held_out"]["n"]}
    for name, lv in (("old", old_levels(per)), ("new", levels_over_references(per))):
        u, r = lv["unidentified_threshold"], lv["threshold"]
        row[name] = {"unidentified_level": u, "review_level": r,
                     "right_unidentified": int((s[right] > u).sum()),
                     "wrong_unidentified": int((s[~right] > u).sum()),
                     "wrong_counted_unflagged": int((s[~right] <= r).sum()),
                     "counted_right": int((s[right] <= u).sum())}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--steps", default="25,50,100")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from hemaedge.train.finetune import machine

    rows = [check_step(args.work, s.strip(), args.seed) for s in args.steps.split(",") if s.strip()]
    command = "python -m hemaedge.benchmarks.tools.adapt_ood_levels " + " ".join(argv or sys.argv[1:])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "date": when, "machine": machine(),
                                                         "rows": rows}, indent=1) + "\n")
    lines = ["# Adapted bundles: the unidentified level, old rule against new (issue #14)", "",
             f"Adaptations in `{args.work}` (`train adapt` defaults on the packaged default's flips bundle, see "
             f"adapt_bccd_default_v2_ep10_defaults.md); machine {machine()}; {when}.", "",
             f"Command: `{command}`", "",
             "Cells: the BCCD **train** cells each adaptation did not use (device crops, the base's views, the "
             "model's temperature; Keras, not the int8 bundle). Old: both tiers from the reference with the larger "
             "review level; new: each tier the larger over references (held-out new cells, PBC val).", "",
             "| labelled cells (held out) | unseen train cells (right) | unidentified level old -> new | right answers "
             "made unidentified old -> new | wrong answers made unidentified old -> new | wrong answers counted "
             "unflagged old -> new (review level) |", "|---|---|---|---|---|---|"]
    for r in rows:
        o, n = r["old"], r["new"]
        lines.append(f"| {r['step']} ({r['held_out']}) | {r['unseen']} ({r['right']}) | {o['unidentified_level']:.3f} -> "
                     f"{n['unidentified_level']:.3f} | {o['right_unidentified']} -> **{n['right_unidentified']}** | "
                     f"{o['wrong_unidentified']} -> {n['wrong_unidentified']} | {o['wrong_counted_unflagged']} -> "
                     f"{n['wrong_counted_unflagged']} ({n['review_level']:.3f}) |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
