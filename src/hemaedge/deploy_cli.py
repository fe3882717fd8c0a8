"""`hemaedge deploy BUNDLE --to user@host[:port] ...`: argument parsing and the summary table.

The work is done by `hemaedge.deploy`.
"""
from __future__ import annotations

import json

import click

from hemaedge.edge.cli_support import user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--to", "targets", multiple=True, required=True, metavar="USER@HOST[:PORT]",
              help="A device to install on; repeat for a fleet. Host aliases from ~/.ssh/config work.")
@click.option("--identity", "-i", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Private key to use (ssh -i); default: your ssh agent / ~/.ssh/config.")
@click.option("--ssh-option", "-o", "ssh_options", multiple=True, metavar="KEY=VALUE",
              help="Extra ssh option, e.g. -o StrictHostKeyChecking=accept-new (repeatable).")
@click.option("--ssh-config", "-F", type=click.Path(dir_okay=False, exists=True), default=None,
              help="ssh config file to use instead of ~/.ssh/config.")
@click.option("--remote-hemaedge", default="hemaedge", show_default=True, metavar="CMD",
              help="The hemaedge command on the devices, e.g. ~/hemaedge-venv/bin/hemaedge.")
@click.option("--remote-store", default=None, metavar="DIR",
              help="Model store folder on the devices (default: the device user's data folder).")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True,
              help="Versions each device keeps after the install.")
@click.option("--accept-change", is_flag=True,
              help="Install even where the class list or input contract differs from the device's active model.")
@click.option("--build-engine", is_flag=True,
              help="Jetson: after installing an ONNX bundle, build a TensorRT engine on the device and make it active.")
@click.option("--engine-precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="Precision of the engine built by --build-engine.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=4, show_default=True,
              help="Devices handled at the same time.")
@click.option("--connect-timeout", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds to wait for each device to answer.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the per-host results to this JSON file.")
@user_errors
def deploy(bundle, targets, identity, ssh_options, ssh_config, remote_hemaedge, remote_store, keep,
           accept_change, build_engine, engine_precision, jobs, connect_timeout, json_out):
    """Push BUNDLE to one or more devices over SSH and install it there.

    \b
    Uses the system's OpenSSH with BatchMode=yes: your keys, agent and ~/.ssh/config, and
    never a password prompt. On each device the bundle lands in a temporary folder, is
    installed with `hemaedge edge install` (verified, copied, switched atomically), and the
    installed files are read back and compared with the local checksums. A device that
    fails does not stop the others; the exit code is 0 only if every device succeeded.

    \b
    Example:
      hemaedge deploy bundles/effv2b0-int8 --to pi@scope-pi.local --to nvidia@jetson:2222 \\
          --remote-hemaedge '~/hemaedge/.venv/bin/hemaedge'
    """
    from tqdm import tqdm

    from hemaedge.deploy import DeployOptions, deploy as run_deploy, parse_ssh_option, parse_target

    parsed = [parse_target(t) for t in targets]
    opts = DeployOptions(remote_hemaedge=remote_hemaedge, remote_store=remote_store, identity=identity,
                         ssh_options=tuple(parse_ssh_option(o) for o in ssh_options), ssh_config=ssh_config,
                         connect_timeout=connect_timeout, keep=keep, accept_change=accept_change,
                         build_engine=build_engine, engine_precision=engine_precision)
    with tqdm(total=len(parsed), desc="devices", unit="host", leave=False) as bar:
        results = run_deploy(bundle, parsed, opts, jobs=jobs, progress=lambda r: bar.update(1))
    _print_summary(results)
    if json_out:
        from pathlib import Path

        Path(json_out).write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    failed = [r for r in results if not r.ok]
    if failed:
        rest = "; the others are installed" if len(failed) < len(results) else ""
        click.echo(f"{len(failed)} of {len(results)} device(s) failed{rest}. A device that failed at "
                   "connect+upload or install keeps its previous active model.", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"All {len(results)} device(s) installed and checksums match.")


def _print_summary(results) -> None:
    header = ("HOST", "STATUS", "INSTALLED", "PREVIOUS", "TIME S", "CHECKSUM", "DETAIL")
    rows = [header]
    for r in results:
        status = "ok" if r.ok else f"FAILED ({r.step})"
        checksum = {True: "match", False: "MISMATCH", None: "-"}[r.checksum_ok]
        detail = r.message or ("; ".join(f"accepted: {c}" for c in r.changes))
        rows.append((r.target, status, r.version or "-", r.previous or "-", f"{r.seconds:.1f}", checksum, detail))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1])
