"""`hemaedge deploy BUNDLE --to user@host[:port] ...` and `hemaedge deploy --inventory FILE`:
argument parsing and the summary tables.

The work is done by `hemaedge.deploy` (direct SSH, a few devices) and `hemaedge.fleet`
(the packaged Ansible playbook, a fleet from an inventory).
"""
from __future__ import annotations

import json

import click

from hemaedge.edge.cli_support import UserError, user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(file_okay=False), required=False)
@click.option("--to", "targets", multiple=True, metavar="USER@HOST[:PORT]",
              help="A device to install on over SSH; repeat for a few. Host aliases from ~/.ssh/config work.")
@click.option("--inventory", type=click.Path(dir_okay=False, exists=True), default=None,
              help="An Ansible inventory: run the packaged playbook on its group 'microscopes' (install "
                   "hemaedge, install the bundle, health check, roll back on failure, fleet report).")
@click.option("--bundle", "bundle_opt", type=click.Path(file_okay=False), default=None,
              help="The bundle to roll out (same as the BUNDLE argument); with --inventory it may be left "
                   "out to only install/upgrade hemaedge and report.")
@click.option("--forks", type=click.IntRange(min=1), default=5, show_default=True,
              help="With --inventory: devices Ansible works on at the same time.")
@click.option("--report-dir", type=click.Path(file_okay=False), default=None,
              help="With --inventory: folder for report.json and report.md (default runs/fleet-<UTC time>).")
@click.option("--limit", default=None, metavar="PATTERN",
              help="With --inventory: only these hosts or groups (ansible-playbook --limit).")
@click.option("--extra-var", "-e", "extra_vars", multiple=True, metavar="NAME=VALUE",
              help="With --inventory: a role variable, e.g. -e hemaedge_require_signature=true (repeatable).")
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
def deploy(bundle, targets, inventory, bundle_opt, forks, report_dir, limit, extra_vars, identity, ssh_options,
           ssh_config, remote_hemaedge, remote_store, keep, accept_change, build_engine, engine_precision, jobs,
           connect_timeout, json_out):
    """Push BUNDLE to one or more devices over SSH and install it there; or, with --inventory,
    roll it out to a fleet with the packaged Ansible playbook.

    \b
    Uses the system's OpenSSH with BatchMode=yes: your keys, agent and ~/.ssh/config, and
    never a password prompt. On each device the bundle lands in a temporary folder, is
    installed with `hemaedge edge install` (verified, copied, switched atomically), and the
    installed files are read back and compared with the local checksums. A device that
    fails does not stop the others; the exit code is 0 only if every device succeeded.

    \b
    With --inventory (needs ansible-core): every device of the inventory's group 'microscopes'
    gets hemaedge in a venv, the bundle installed, a health check (`hemaedge edge run` on a
    sample frame) and an automatic rollback when that fails; a second run changes nothing.
    The fleet report (JSON + Markdown) lists every device's active model, digest, hemaedge
    version and last run's fps, latency and flagged rate.

    \b
    Examples:
      hemaedge deploy bundles/effv2b0-int8 --to pi@scope-pi.local --to nvidia@jetson:2222 \\
          --remote-hemaedge '~/hemaedge/.venv/bin/hemaedge'
      hemaedge deploy --inventory inventory.yml --bundle bundles/effv2b0-int8 --forks 10
    """
    if bundle and bundle_opt and bundle != bundle_opt:
        raise UserError("give the bundle once: as BUNDLE or as --bundle")
    bundle = bundle or bundle_opt
    if inventory:
        if targets:
            raise UserError("use either --inventory (Ansible, a fleet) or --to (direct SSH, a few devices), not both")
        ssh_only = {"--identity": identity, "--ssh-option": ssh_options, "--ssh-config": ssh_config,
                    "--remote-store": remote_store, "--json": json_out}
        given = [name for name, value in ssh_only.items() if value]
        if given:
            raise UserError(f"{', '.join(given)} belong to the direct SSH path; with --inventory set SSH and "
                            "device settings in the inventory (ansible_user, ansible_ssh_private_key_file, "
                            "hemaedge_store, ...) or with -e NAME=VALUE")
        _deploy_inventory(inventory, bundle, forks, report_dir, limit, extra_vars, keep, accept_change)
        return
    if not targets:
        raise UserError("say where to deploy: --to USER@HOST (repeatable), or --inventory FILE for a fleet")
    if not bundle:
        raise UserError("--to needs the BUNDLE to push (hemaedge deploy BUNDLE --to USER@HOST)")
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


def _deploy_inventory(inventory, bundle, forks, report_dir, limit, extra_vars, keep, accept_change) -> None:
    from hemaedge.fleet import parse_extra_var, read_report, run_fleet

    variables = dict(parse_extra_var(v) for v in extra_vars)
    variables.setdefault("hemaedge_keep", keep)  # an explicit -e wins
    if accept_change:
        variables.setdefault("hemaedge_accept_change", True)
    rc, where = run_fleet(inventory, bundle=bundle, forks=forks, report_dir=report_dir, extra_vars=variables,
                          limit=limit)
    report = read_report(where)
    if report is None:
        raise UserError(f"ansible-playbook ended with exit code {rc} before writing the fleet report "
                        "(see its output above: an inventory or playbook error)")
    devices = report["devices"]
    if not devices:
        raise UserError(f"{inventory} has no device in the group the playbook works on ('microscopes', or the "
                        "one given with -e hemaedge_hosts=GROUP): see deploy/ansible/inventory.sample.yml")
    click.echo((where / "report.md").read_text())
    failed = [d for d in devices if not d.get("ok")]
    click.echo(f"fleet report: {where / 'report.json'}, {where / 'report.md'}")
    if failed or rc != 0:
        click.echo(f"{len(failed)} of {len(devices)} device(s) failed; a device whose health check failed was "
                   "rolled back to its previous model.", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"All {len(devices)} device(s) ok.")


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
