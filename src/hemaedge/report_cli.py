"""`hemaedge report RUN_DIR`: the corrected differential as HTML and PDF (review extra)."""
from __future__ import annotations

from pathlib import Path

import click

from hemaedge.edge.cli_support import UserError, user_errors


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", "-o", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for report.html, report.pdf and report.json (default: RUN_DIR).")
@click.option("--reviewer", default="", help="Name on the report (default: the names in corrections.csv).")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Sign the report with this private key (`hemaedge keys new`); the signature goes into report.json.")
@click.option("--force", is_flag=True, help="Replace an existing report.")
@click.option("--check", "check", is_flag=True,
              help="Do not write: check the report in RUN_DIR (or --out): documents, inputs, and with --key its signature.")
@click.option("--key", "public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --check: the public key (.pub) the report must be signed with.")
@user_errors
def report(run_dir, out, reviewer, sign_key, force, check, public_key):
    """Write the corrected differential of a run: counts with 95% intervals, the reviewer's
    corrections, the unidentified cells, the model's digest and the sha256 of every input.

    \b
    Examples:
      hemaedge report runs/lab1 --reviewer "A. Tester" --sign lab.key
      hemaedge report runs/lab1 --check --key lab.pub
    """
    from hemaedge.report import check_report, write_report

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder (the --out folder of `hemaedge edge run`)")
    if check:
        problems = check_report(out or run_dir, public_key, run_dir=run_dir)
        if problems:
            raise UserError("the report does not check out:\n  - " + "\n  - ".join(problems))
        click.echo(f"report in {out or run_dir}: documents and inputs unchanged"
                   + (", signature valid" if public_key else " (signature not checked: pass --key KEY.pub)"))
        return
    key = None
    if sign_key is not None:
        from hemaedge.edge.signing import read_signing_key

        key = read_signing_key(sign_key)
    for path in write_report(run_dir, out, reviewer=reviewer, force=force, sign_key=key):
        click.echo(f"wrote {path}")
