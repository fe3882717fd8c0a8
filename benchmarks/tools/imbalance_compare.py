"""Compare finished `train finetune` runs that differ in how they correct class imbalance.

    python -m hemaedge.benchmarks.tools.imbalance_compare RUN_DIR... \\
        --out benchmarks/results/imbalance_modes

Answers issue #13's "does the double correction help?": one row per run (weighted sampling,
weighted loss, mixup read from the run's own metrics.json), val metrics first (the split
that may be used to choose), test reported once. Trains nothing; a run without a finished
metrics.json is listed as skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from hemaedge.benchmarks.tools.finetune_table import unfinished_reason
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.edge.cli_support import UserError, user_errors


def _correction(config: dict) -> str:
    sampling, loss = config.get("weighted_sampling"), config.get("weighted_loss")
    if sampling and loss:
        return "sampling + loss weights (double)"
    if sampling:
        return "weighted sampling only"
    if loss:
        return "loss weights only"
    return "none"


def row(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    cfg = m["config"]
    losses = [h["loss"] for h in m.get("history") or [] if "loss" in h]  # one dict per epoch
    return {
        "run": run_dir.name, "path": str(run_dir), "correction": _correction(cfg),
        "backbone": m["backbone"], "weights": m.get("weights") or "none (from scratch)",
        "size": m["input_size"], "epochs": m["epochs_trained"], "best_epoch": m["best_epoch"],
        "mixup_p": cfg.get("mixup_p"), "train_min": round(m["train_seconds"] / 60, 1),
        "machine": m["machine"], "date": m["date"],
        "logged_loss_first_last": [round(losses[0], 3), round(losses[-1], 3)] if losses else None,
        **{f"{split}_{k}": m[split].get(k) for split in ("val", "test")
           for k in ("accuracy", "macro_f1", "balanced_accuracy", "ece")},
        "command": (m.get("commands") or [""])[0],
    }


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def render(rows: list[dict], skipped: list[str], argv: str) -> str:
    lines = ["# Class-imbalance correction: does correcting twice help? (issue #13, item 4)", "",
             f"Command: `{argv}`  ", "Each run's training command, machine and date are listed below the table.", "",
             "| run | correction | backbone / weights | input | epochs (best) | logged loss first -> last | "
             "val acc | val macro-F1 | val balanced acc | val ECE | test acc | test macro-F1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        loss = r["logged_loss_first_last"]
        lines.append(
            f"| {r['run']} | {r['correction']} | {r['backbone']} / {r['weights']} | {r['size']} px | "
            f"{r['epochs']} ({r['best_epoch']}) | {'' if not loss else f'{loss[0]} -> {loss[1]}'} | "
            f"{_pct(r['val_accuracy'])} | {r['val_macro_f1']:.3f} | {_pct(r['val_balanced_accuracy'])} | "
            f"{_pct(r['val_ece'])} | {_pct(r['test_accuracy'])} | {r['test_macro_f1']:.3f} |")
    lines += ["", "Training commands:", ""]
    lines += [f"- {r['run']} ({r['machine']}, {r['date']}, {r['train_min']} min): `{r['command']}`" for r in rows]
    if skipped:
        lines += ["", "Skipped (not finished): " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", default="benchmarks/results/imbalance_modes", show_default=True,
              help="Writes OUT.md and OUT.json.")
@user_errors
def main(runs, out):
    rows, skipped = [], []
    for run in runs:
        reason = unfinished_reason(run)
        if reason:
            skipped.append(reason)
        else:
            rows.append(row(run))
    if not rows:
        raise UserError("none of the runs has finished: " + "; ".join(skipped))
    argv = "python -m hemaedge.benchmarks.tools.imbalance_compare " + " ".join(str(r) for r in runs)
    out = Path(out)
    write_result(out, {"rows": rows, "skipped": skipped}, render(rows, skipped, argv))
    click.echo(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
