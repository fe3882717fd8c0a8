"""Collect the published fine-tuning table from a finished `hemaedge train finetune` run.

    python -m hemaedge.benchmarks.tools.finetune_table runs/finetune-lite0 \\
        --out benchmarks/results/finetune_bloodmnist128

Writes OUT.md, OUT.json, OUT_curves.png and OUT_confusion.png with the same code as
`train finetune --publish` (`hemaedge.train.finetune.publish`), so the table looks the same
whether it was written at the end of training or collected later. Trains nothing: a run that
has not finished (no metrics.json with test results) is reported as skipped and the existing
table is left as it is.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from hemaedge.edge.cli_support import UserError, user_errors


def unfinished_reason(run_dir: Path) -> str | None:
    """Why RUN_DIR cannot be collected, or None when it holds a finished run.

    `finetune` writes metrics.json only after the final evaluation, so its presence with a
    test split marks a finished run."""
    metrics = run_dir / "metrics.json"
    if not run_dir.is_dir():
        return f"no run at {run_dir}"
    if not metrics.is_file():
        return f"no finished run at {run_dir} (no metrics.json)"
    try:
        m = json.loads(metrics.read_text())
    except (OSError, ValueError) as exc:
        return f"{metrics}: not readable JSON ({exc})"
    missing = [k for k in ("backbone", "weights", "input_size", "epochs_trained", "best_epoch", "machine",
                           "train_seconds", "model_bytes", "config") if k not in m]
    if missing:
        return f"{metrics}: not a `train finetune` metrics file (missing {', '.join(missing)})"
    if (m.get("test") or {}).get("accuracy") is None:
        return f"no finished run at {run_dir} (metrics.json has no test results)"
    return None


def collect(run_dir, out) -> list[Path]:
    """Write the table for a finished run; raises UserError for a run that cannot be collected."""
    from hemaedge.train.finetune import publish

    reason = unfinished_reason(Path(run_dir))
    if reason:
        raise UserError(reason)
    return publish(run_dir, out)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path), default="runs/finetune-lite0")
@click.option("--out", default="benchmarks/results/finetune_bloodmnist128", show_default=True,
              help="Output stem: writes STEM.md, STEM.json, STEM_curves.png, STEM_confusion.png.")
@user_errors
def main(run_dir, out):
    """Collect the fine-tuning results table from a finished run folder (no training)."""
    for path in collect(run_dir, out):
        click.echo(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
