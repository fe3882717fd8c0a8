"""`hemaedge edge install | models | rollback`: manage the device's model store.

Argument parsing and printing only; the work is done by `hemaedge.edge.store`.
"""
from __future__ import annotations

import json

import click

from hemaedge.edge.cli_support import user_errors

STORE_HELP = ("Model store folder (default: $HEMAEDGE_STORE, else the per-user data folder, "
              "e.g. ~/.local/share/hemaedge/models).")


def _store(path):
    from hemaedge.edge.store import ModelStore, default_store

    return ModelStore(path) if path else default_store()


store_option = click.option("--store", "store_path", type=click.Path(file_okay=False),
                            default=None, help=STORE_HELP)


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@store_option
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True,
              help="Versions kept after the install (the active one always stays); older ones are deleted.")
@click.option("--accept-change", is_flag=True,
              help="Install even if the class list or input contract differs from the active model.")
@click.option("--no-backend-check", is_flag=True,
              help="Skip the check that this device has the bundle's back end, and so the test load and "
                   "smoke inference (e.g. preparing an SD card image on another machine).")
@click.option("--require-signature", is_flag=True,
              help="Install only a bundle validly signed by a key in this store's trust store "
                   "(`hemaedge edge trust add`); `hemaedge edge trust require` makes it permanent.")
@click.option("--build-engine", is_flag=True,
              help="Jetson: after installing an ONNX bundle, build a TensorRT engine from it with trtexec "
                   "and install that as the active version.")
@click.option("--engine-precision", type=click.Choice(["fp16", "fp32"]), default="fp16",
              show_default=True, help="Precision of the engine built by --build-engine.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Largest batch of cell crops the engine built by --build-engine accepts.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object (for scripts and `hemaedge deploy`).")
@user_errors
def install(bundle, store_path, keep, accept_change, no_backend_check, require_signature, build_engine,
            engine_precision, max_batch, as_json):
    """Verify BUNDLE, copy it into the model store and make it the active model.

    \b
    The same checks as `hemaedge edge verify` run first: the manifest against its schema, the
    checksums and file paths, that this device has the back end; then the copy inside the
    store is loaded and runs a smoke inference (one probability per class). Only then is the
    active model switched, in one atomic step: if anything fails or the power goes, the
    previous model stays active and runnable. A bundle whose class list or input contract
    differs from the active model is refused unless --accept-change is given; with
    --require-signature (or the store setting) so is one not signed by a trusted key.
    """
    from hemaedge.edge.store import ContractChangeError

    from hemaedge.edge.bundle import read_manifest

    store = _store(store_path)
    validation = read_manifest(bundle).get("validation")
    if isinstance(validation, dict) and validation.get("status") == "failed-validation":
        click.echo(f"Warning: this bundle FAILED parity validation at export ({validation.get('reason', '')}); "
                   "installing it anyway because you asked to.", err=True)

    def waiting(holder):
        click.echo(f"Waiting for another install to finish (store lock held{' by pid ' + holder if holder else ''})...",
                   err=True)

    if build_engine:
        from hemaedge.edge.engine_build import check_can_build

        check_can_build(bundle)  # before installing anything
    try:
        result = store.install(bundle, keep=keep, accept_change=accept_change,
                               check_backend=not no_backend_check, on_wait=waiting,
                               require_signature=require_signature)
    except ContractChangeError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": "contract-change", "changes": exc.changes}))
        raise
    results = [result]
    if build_engine:
        from hemaedge.edge.engine_build import build_engine_bundle_and_install

        results.append(build_engine_bundle_and_install(store, result, precision=engine_precision,
                                                       max_batch=max_batch, keep=keep,
                                                       check_backend=not no_backend_check, on_wait=waiting,
                                                       require_signature=require_signature))
    final = results[-1]
    if as_json:
        out = final.to_dict()
        out["ok"] = True
        out["store"] = str(store.root)
        if build_engine:  # report what was active before this whole install
            out["onnx_version"], out["previous"] = result.version, result.previous
        click.echo(json.dumps(out))
        return
    for res in results:
        for change in res.changes:
            click.echo(f"Accepted change: {change}", err=True)
        verb = "Re-activated already installed" if res.reused else "Installed"
        click.echo(f"{verb} {res.version} (previous: {res.previous or 'none'}) in {store.root} "
                   f"[{res.seconds:.2f} s]" + (f", signed by trusted key {res.signed_by}" if res.signed_by else ""))
        if res.pruned:
            click.echo(f"Pruned old versions: {', '.join(res.pruned)}")
    click.echo(f"Active model: {final.version}")


@click.command()
@store_option
@click.option("--verify", is_flag=True, help="Also re-check every installed file's checksum (slower).")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@user_errors
def models(store_path, verify, as_json):
    """List installed model versions; '*' marks the active one.

    Accuracy and size come from each bundle's manifest (measured at export).
    """
    store = _store(store_path)
    rows = store.list_versions(verify=verify)
    active = store.active_version()
    active_row = next((r for r in rows if r.version == active), None)
    warning = None
    if active and (active_row is None or active_row.problem):
        why = active_row.problem if active_row and active_row.problem != "directory missing" else "missing from the store"
        warning = (f"Warning: the active model {active} is {'missing' if 'missing' in why else 'damaged'} ({why}); "
                   "`hemaedge edge run` will refuse to start. Run `hemaedge edge rollback` or install a bundle again.")
    if as_json:
        click.echo(json.dumps({"store": str(store.root), "active": active, "warning": warning,
                               "versions": [r.to_dict() for r in rows]}, indent=2))
        return
    if warning:
        click.echo(warning, err=True)
    if not rows:
        click.echo(f"No models installed in {store.root}. Install one with `hemaedge edge install BUNDLE`.")
        return
    header = ("", "VERSION", "BACKEND", "CLASSES", "INPUT", "SIZE MB", "ACCURACY", "VALIDATION", "INSTALLED (UTC)",
              "STATUS")
    table = [header]
    for r in rows:
        acc = f"{r.accuracy:.4f} {r.accuracy_split}".strip() if r.accuracy is not None else "-"
        inp = f"{r.input.get('size', '?')}px {r.input.get('preprocess', '?')}/{r.input.get('dtype', '?')}" if r.input else "-"
        status = r.problem or ("verified" if verify else "ok")
        table.append(("*" if r.active else "", r.version, f"{r.backend} {r.model_format}".strip() or "-",
                      str(len(r.classes)) if r.classes else "-", inp, f"{r.size_bytes / 1e6:.2f}", acc,
                      r.validation or "-", r.installed.replace("+00:00", ""), status))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    click.echo(f"Model store: {store.root}")
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if verify and any(r.problem for r in rows):
        raise click.exceptions.Exit(1)


@click.command()
@store_option
@click.option("--to", "to_version", default=None, metavar="VERSION",
              help="Activate this installed version instead of the previous one.")
@click.option("--accept-change", is_flag=True,
              help="Roll back even if the class list or input contract differs from the active model.")
@user_errors
def rollback(store_path, to_version, accept_change):
    """Make the previously active model version active again (atomically)."""
    store = _store(store_path)
    new, old, changes = store.rollback(to_version, accept_change=accept_change)
    for change in changes:
        click.echo(f"Accepted change: {change}", err=True)
    click.echo(f"Rolled back: active model is now {new} (was {old or 'none'})")


@click.group()
def trust():
    """Public keys this device accepts bundle signatures from, and whether signatures are required."""


@trust.command("add")
@click.argument("pubkey", type=click.Path(dir_okay=False))
@store_option
@user_errors
def trust_add(pubkey, store_path):
    """Trust bundles signed with the private key of PUBKEY (a .pub file from `hemaedge keys new`)."""
    store = _store(store_path)
    key = store.trust.add(pubkey)
    click.echo(f"trusted key {key.key_id}{' (' + key.comment + ')' if key.comment else ''} in {store.trust.dir}")


@trust.command("list")
@store_option
@user_errors
def trust_list(store_path):
    """List trusted keys and whether this store requires signed bundles."""
    store = _store(store_path)
    found = store.trust.keys()
    required = store.requires_signature()
    click.echo(f"Trust store: {store.trust.dir}; signed bundles {'REQUIRED' if required else 'not required'}")
    if not found:
        click.echo("No trusted keys. Add one with `hemaedge edge trust add KEY.pub`.")
    for kid, key in found.items():
        click.echo(f"  {kid}  {key.comment}".rstrip())


@trust.command("remove")
@click.argument("key_id")
@store_option
@user_errors
def trust_remove(key_id, store_path):
    """Stop trusting the key KEY_ID."""
    store = _store(store_path)
    store.trust.remove(key_id)
    click.echo(f"removed key {key_id}")


@trust.command("require")
@click.option("--off", is_flag=True, help="Accept unsigned bundles again.")
@store_option
@user_errors
def trust_require(off, store_path):
    """Make every later install (and rollback) of this store require a trusted signature."""
    store = _store(store_path)
    store.set_require_signature(not off)
    click.echo(f"{store.root}: signed bundles are {'no longer ' if off else ''}required")
