"""The adapted bundles' OOD levels under three rules, on BCCD TRAIN cells they did not see (issue #14).

    python -m hemaedge.benchmarks.tools.adapt_ood_levels --work ~/hemaedge-runs/adapt/steps-packaged \
        --steps 25,50,100,200 --out benchmarks/results/adapt_ood_levels

Reads the adaptations `adapt_bccd` left in --work (it trains nothing). Each adapted bundle (OUT/bundle, run
through the device's back end with its test-time views and temperature) answers the BCCD train cells its
adaptation did not use (the same seeded subset `train adapt --limit` draws; never the test split; the
all-cells step has none). The rules read the levels each reference got (`ood.per_reference`): "old" (until
2026-12-02 13:30), both tiers from the reference with the larger review level (usually the few held-out
cells); "tiers" (until 2026-12-02 18:00), each tier the larger over the references however few their right
answers; "now" (`train.adapt.levels_over_references`), each tier the larger over the references with at
least 1 / (1 - quantile) right answers (20 for review, 200 for unidentified), else PBC val. A right answer
above the unidentified level is lost from the count; a wrong one below it is counted, flagged for review
when above the review level, unflagged below it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def old_levels(per: dict) -> dict:
    """The rule until 13:30: both tiers from the reference with the larger review level."""
    return per[max(per, key=lambda k: per[k]["threshold"])]


def tier_levels(per: dict) -> dict:
    """The rule until 18:00: each tier the larger over the references, whatever their size."""
    return {key: max(per[k][key] for k in per) for key in ("threshold", "unidentified_threshold")}


def check_step(work: Path, step: str, seed: int) -> dict:
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.confidence import ood_scores
    from hemaedge.edge.preprocess import prepare_batch
    from hemaedge.edge.tta import bundle_views, predict_views
    from hemaedge.train.adapt import levels_over_references, load_new_cells

    d = work / f"adapt-{step}-seed{seed}"
    result = json.loads((d / "adapt.json").read_text())
    bundle = load_bundle(d / "bundle")
    cells = load_new_cells([result["provenance"]["data"][0]["path"]], bundle.classes, bundle.contract.size)
    used = np.ones(len(cells), bool)
    if int(step) < len(cells):  # train adapt --limit: a seeded subset (train.adapt.adapt)
        used[:] = False
        used[np.sort(np.random.default_rng(seed).permutation(len(cells))[:int(step)])] = True
    unseen = cells.subset(np.flatnonzero(~used))
    views = bundle_views(bundle.manifest)[1]  # as the adapted bundle runs: its views, its temperature
    p = predict_views(load_backend(bundle, threads=2).predict, prepare_batch(unseen.images, bundle.contract), views) \
        if len(unseen) else np.zeros((0, len(bundle.classes)), np.float32)
    s, right = ood_scores(p), p.argmax(1) == unseen.labels
    per = bundle.manifest["ood"]["per_reference"]
    row = {"step": step, "unseen": int(len(unseen)), "right": int(right.sum()), "views": list(views),
           "held_out": per["held_out"]["n"], "held_out_right": per["held_out"].get("n_right")}
    for name, lv in (("old", old_levels(per)), ("tiers", tier_levels(per)), ("now", levels_over_references(per))):
        u, r = lv["unidentified_threshold"], lv["threshold"]
        row[name] = {"unidentified_level": u, "review_level": r,
                     "right_unidentified": int((s[right] > u).sum()),
                     "wrong_unidentified": int((s[~right] > u).sum()),
                     "wrong_flagged": int(((s[~right] > r) & (s[~right] <= u)).sum()),
                     "wrong_counted_unflagged": int((s[~right] <= r).sum()),
                     "right_flagged": int(((s[right] > r) & (s[right] <= u)).sum()),
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
    lines = ["# Adapted bundles: the OOD levels under three rules (issue #14)", "",
             f"Adaptations in `{args.work}` (`train adapt` defaults from the packaged default bundle, see "
             f"adapt_bccd_packaged_default.md); machine {machine()}; {when}; load average {os.getloadavg()[0]:.1f}.", "",
             f"Command: `{command}`", "",
             "Cells: the BCCD **train** cells each adaptation did not use (device crops, the adapted int8 bundle with "
             "its views and temperature). Rules: old, both tiers from the reference with the larger review level; "
             "tiers, each tier the larger over the references; now, each tier the larger over the references with "
             "enough right answers for its quantile (20 review, 200 unidentified), else PBC val. Each cell: "
             "old / tiers / **now**.", "",
             "| labelled cells (held out, right) | unseen train cells (right) | review level | unidentified level "
             "| right answers unidentified | right answers flagged | wrong answers unidentified "
             "| wrong answers flagged | wrong answers counted unflagged |", "|---|---|---|---|---|---|---|---|---|"]

    def three(r, key, fmt="{}"):
        return " / ".join(fmt.format(r[k][key]) if k != "now" else "**" + fmt.format(r[k][key]) + "**"
                          for k in ("old", "tiers", "now"))

    for r in rows:
        lines.append(f"| {r['step']} ({r['held_out']}, {r['held_out_right']}) | {r['unseen']} ({r['right']}) | "
                     f"{three(r, 'review_level', '{:.3f}')} | {three(r, 'unidentified_level', '{:.3f}')} | "
                     f"{three(r, 'right_unidentified')} | {three(r, 'right_flagged')} | {three(r, 'wrong_unidentified')} | "
                     f"{three(r, 'wrong_flagged')} | {three(r, 'wrong_counted_unflagged')} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
