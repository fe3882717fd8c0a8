"""`hemaedge train ...`: training commands (train extra)."""
import click

from hemaedge.edge.cli_support import LazyGroup


@click.group(cls=LazyGroup, lazy_commands={
    "hybrid": "hemaedge.train.hybrid_cli:hybrid",
    "finetune": "hemaedge.train.finetune_cli:finetune",
    "ensemble": "hemaedge.train.finetune_cli:ensemble",
    "snapshot": "hemaedge.train.finetune_cli:snapshot",
    "adapt": "hemaedge.train.adapt_cli:adapt",
})
def train():
    """Train classifiers: hybrid frozen features + classical heads, fine-tuned CNNs, ensembles; adapt one to a new microscope."""
