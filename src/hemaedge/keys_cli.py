"""`hemaedge keys new | sign`: make an Ed25519 key pair and sign bundles on the build machine.

The private key never leaves the build machine; devices get the public key
(`hemaedge edge trust add KEY.pub`) and, with `--require-signature`, install only bundles it signed.
"""
from __future__ import annotations

from pathlib import Path

import click

from hemaedge.edge.cli_support import user_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def keys():
    """Signing keys for bundles (Ed25519): make a key pair, sign a bundle."""


@keys.command("new")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for NAME.key (private, mode 0600) and NAME.pub (public).")
@click.option("--name", default="hemaedge", show_default=True, help="File name stem of the two key files.")
@click.option("--comment", default="", help="Free text stored with the key (who, which lab).")
@user_errors
def new(out, name, comment):
    """Make a new key pair. Keep the .key file on the build machine; give devices the .pub file."""
    from hemaedge.edge.signing import new_key_pair, read_public_key

    priv, pub = new_key_pair(out, name, comment)
    click.echo(f"private key: {priv} (mode 0600; keep it on this machine, never copy it to a device)")
    click.echo(f"public key:  {pub} (key id {read_public_key(pub).key_id}); on each device: "
               f"hemaedge edge trust add {pub.name}")


@keys.command("sign")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Private key file made by `hemaedge keys new`.")
@user_errors
def sign(bundle, key_path):
    """Sign BUNDLE in place: its files are verified first, then the manifest (which lists every
    file's sha256) is signed."""
    from hemaedge.edge.signing import read_signing_key, sign_bundle

    kid = sign_bundle(bundle, read_signing_key(key_path))
    click.echo(f"signed {bundle} with key {kid}")
