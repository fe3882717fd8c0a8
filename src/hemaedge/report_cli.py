"""`hemaedge report RUN_DIR`: the corrected differential as HTML and PDF (review extra)."""
from __future__ import annotations

from pathlib import Path

import click

from hemaedge.edge.cli_support import UserError, user_errors


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", "-o", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for report.html and report.pdf (default: RUN_DIR).")
@click.option("--reviewer", default="", help="Name on the report (default: the names in corrections.csv).")
@click.option("--force", is_flag=True, help="Replace an existing report.")
@user_errors
def report(run_dir, out, reviewer, force):
    """Write the corrected differential of a run: counts with 95% intervals, the reviewer's
    corrections, the unidentified cells, the model's digest and the sha256 of every input."""
    from hemaedge.report import write_report

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder (the --out folder of `hemaedge edge run`)")
    for path in write_report(run_dir, out, reviewer=reviewer, force=force):
        click.echo(f"wrote {path}")
