"""The `hemaedge` command line: a root group whose sub-groups load lazily.

Each group lives next to the code it drives (`hemaedge.edge.cli`, `hemaedge.train.cli`, ...).
Groups are imported only when used, so `hemaedge edge ...` starts fast and never imports
TensorFlow; a group whose extra is not installed says which extra to install (exit code 2).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from hemaedge import __version__

# group name -> (module:attribute, extra to install, modules that extra provides)
GROUPS = {
    "data": ("hemaedge.train.data_cli:data", "train", ("sklearn",)),
    "train": ("hemaedge.train.cli:train", "train", ("tensorflow", "keras", "sklearn", "albumentations")),
    "export": ("hemaedge.export.cli:export", "export", ("tensorflow", "onnx")),
    "edge": ("hemaedge.edge.cli:edge", "edge", ()),
    "bench": ("hemaedge.benchmarks.cli:bench", "edge", ()),
    "deploy": ("hemaedge.deploy_cli:deploy", "edge", ()),
    "keys": ("hemaedge.keys_cli:keys", "edge", ("nacl",)),
    "review": ("hemaedge.review.cli:review", "review", ("starlette", "uvicorn", "jinja2")),
    "report": ("hemaedge.report_cli:report", "review", ("jinja2", "reportlab")),
}

HELP = {
    "data": "Inspect and verify data sets (MedMNIST .npz, ImageFolder trees); make calibration data.",
    "train": "Train classifiers: hybrid frozen features, fine-tuned CNNs, ensembles.",
    "export": "Export and quantize models (TFLite, ONNX, TensorRT) into verified bundles.",
    "edge": "The device runtime: run on frames, verify and manage installed model bundles.",
    "bench": "Size / latency / accuracy / memory tables and plots.",
    "deploy": "Push a bundle to one or more devices over SSH and install it there.",
    "keys": "Signing keys: make an Ed25519 key pair, sign bundles (devices trust the public key).",
    "review": "Review a run's cells in a local web page and correct them (corrections.csv).",
    "report": "The corrected differential of a run as HTML and PDF, with its inputs' checksums.",
}


def missing_modules(modules) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


class MissingExtraGroup(click.Group):
    """Stands in for a group whose module could not be imported: help works, use says what to install."""

    def __init__(self, name, extra, missing):
        super().__init__(name=name, help=HELP.get(name), invoke_without_command=True)
        self.extra, self.missing = extra, missing

    def invoke(self, ctx):
        click.echo(f"Error: `hemaedge {self.name}` needs the '{self.extra}' extra "
                   f"(missing: {', '.join(self.missing)}).\n"
                   f"Install it with:  pip install 'hemaedge[{self.extra}]'", err=True)
        ctx.exit(2)


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(GROUPS)

    def get_command(self, ctx, name):
        if name not in GROUPS:
            return None
        target, extra, needs = GROUPS[name]
        module_name, attr = target.split(":")
        # `--help` must work everywhere; running needs the extra's modules.
        wants_help = any(a in ("--help", "-h") for a in sys.argv[1:])
        missing = missing_modules(needs)
        if missing and not wants_help:
            return MissingExtraGroup(name, extra, missing)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return MissingExtraGroup(name, extra, [getattr(exc, "name", None) or str(exc)])
        return getattr(module, attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, HELP[name]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hemaedge")
@click.option("--verbose", "-v", count=True, help="More messages (-v: debug details, tracebacks of skipped frames).")
@click.option("--quiet", "-q", count=True, help="Fewer messages (-q: warnings and errors only).")
def main(verbose, quiet):
    """hemaedge: blood-cell classifiers from a desktop GPU to a microscope camera.

    \b
    Typical chain:
      hemaedge data info DATA          what is in a data set
      hemaedge train finetune ...      train a classifier
      hemaedge export tflite ...       quantize it into a verified bundle
      hemaedge edge run --source ...   segment and classify every cell of live frames
      hemaedge bench run ...           publish size / latency / accuracy tables
    """
    from hemaedge.edge.cli_support import setup_logging

    setup_logging(verbose - quiet)


if __name__ == "__main__":  # pragma: no cover
    main()
