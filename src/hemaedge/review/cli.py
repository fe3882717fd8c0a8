"""`hemaedge review RUN_DIR`: serve the review page of one run (review extra)."""
from __future__ import annotations

import secrets
from pathlib import Path

import click

from hemaedge.edge.cli_support import UserError, user_errors


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but localhost requires a token (printed in the URL).")
@click.option("--port", default=8050, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar="HEMAEDGE_REVIEW_TOKEN",
              help="Access token (default: none on localhost, a random one on any other address).")
@click.option("--reviewer", default="", help="Your name or initials, written into every correction.")
@user_errors
def review(run_dir, host, port, token, reviewer):
    """Review the cells of a run: gallery by class (flagged first), one key per class to correct.

    \b
    RUN_DIR is the --out folder of `hemaedge edge run --save-crops all` (or `flagged`).
    Corrections go to RUN_DIR/corrections.csv as you make them; `hemaedge report RUN_DIR`
    turns the corrected run into a report.
    """
    import uvicorn

    from hemaedge.review.app import LOOPBACK, create_app, is_loopback

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder (the --out folder of `hemaedge edge run`)")
    if not is_loopback(host) and not token:
        token = secrets.token_urlsafe(18)
    hosts = [*LOOPBACK, host] if host not in ("0.0.0.0", "::") else ["*"]
    app = create_app(run_dir, token=token, allowed_hosts=hosts, reviewer=reviewer)
    run = app.state.run
    shown = "localhost" if is_loopback(host) else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    click.echo(f"{run_dir}: {len(run.cells)} cells, {sum(c.crop is not None for c in run.cells)} with crops, "
               f"{len(run.log)} corrections so far")
    if run.cells and not any(c.crop for c in run.cells):
        click.echo("note: this run saved no crops; re-run `hemaedge edge run` with --save-crops all to see the cells",
                   err=True)
    click.echo(f"review page: {url}   (Ctrl-C to stop; corrections are saved as you make them)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
