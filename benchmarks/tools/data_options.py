"""The command-line options for the three evaluation sets the flag/OOD tools read, defined once."""
from __future__ import annotations

from pathlib import Path

import click

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def evaluation_sets(command):
    """Add `--bccd`, `--pbc` and `--bloodmnist128` (folders under ../shared/data by default)."""
    for name, default in (("bloodmnist128", "bloodmnist128"), ("pbc", "pbc_raw_val"), ("bccd", "bccd")):
        command = click.option(f"--{name}", type=_DIR, default=f"../shared/data/{default}",
                               show_default=True)(command)
    return command
