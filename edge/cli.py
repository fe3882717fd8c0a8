"""`hemaedge edge ...`: the device-side commands (edge extra only; never imports TensorFlow)."""
import click

from hemaedge.edge.cli_support import LazyGroup


@click.group(cls=LazyGroup, lazy_commands={
    "run": "hemaedge.edge.run_cli:run",
    "verify": "hemaedge.edge.run_cli:verify",
    "install": "hemaedge.edge.store_cli:install",
    "models": "hemaedge.edge.store_cli:models",
    "rollback": "hemaedge.edge.store_cli:rollback",
    "trust": "hemaedge.edge.store_cli:trust",
})
def edge():
    """The device runtime: segment and classify cells of live frames; manage model bundles."""
