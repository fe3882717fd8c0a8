"""`hemaedge train adapt`: argument parsing only; the work is in `hemaedge.train.adapt`."""
from __future__ import annotations

import sys

import click

from hemaedge.edge.cli_support import FiniteFloat, user_errors


@click.command(context_settings={"show_default": True})
@click.option("--base", required=True, help="Bundle to adapt (e.g. src/hemaedge/models/default: --fit head adapts a "
                                            "TFLite bundle alone, no Keras source needed), or a Keras model (.keras "
                                            "with its .json sidecar); --fit tail needs the Keras model.")
@click.option("--data", "data", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="New microscope's cells: a {class}/*.png tree, or a run folder of `hemaedge edge run "
                   "--save-crops` reviewed in `hemaedge review` (repeat for several).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New, empty output folder: adapt.json, bundle/ (and model.keras + model.json from a Keras base).")
@click.option("--replay", type=click.Path(exists=True),
              help="The original training data (e.g. ../shared/data/bloodmnist128): a sample of its train "
                   "split is mixed in so the old microscope is not forgotten.")
@click.option("--pbc-val", type=click.Path(exists=True),
              help="Data set whose val split measures the old microscope [default: --replay].")
@click.option("--test", "test", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Extra labelled {class}/*.png tree(s) to report before/after accuracy on (never used to choose).")
@click.option("--sample", "limit", type=click.IntRange(1), metavar="N",
              help="Use N of the new cells, a random sample drawn with --seed.")
@click.option("--holdout", type=FiniteFloat(0.05, 0.8), default=0.2,
              help="Share of the new cells held out to choose the epoch and report on.")
@click.option("--replay-ratio", type=FiniteFloat(0), default=None, show_default=False,
              help="Replay images per new training cell [default: 12 with --fit head, 2 with --fit tail].")
@click.option("--replay-min", type=click.IntRange(0), default=128, help="At least this many replay images.")
@click.option("--replay-pool", type=click.IntRange(0), default=0,
              help="Draw each epoch's replay images afresh from a pool of this many (0: one fixed sample).")
@click.option("--new-weight", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.5,
              help="Share of the loss carried by the new cells (the replay sample carries the rest).")
@click.option("--augment", type=click.Choice(["dihedral", "light", "full", "robust"]), default="dihedral",
              help="Augmentation: flips/right-angle rotations, or a preset of `train finetune --augment`.")
@click.option("--blocks", type=click.IntRange(0), default=2, help="Trailing backbone blocks trained with the head.")
@click.option("--distill", type=FiniteFloat(0, 1, max_open=True), default=None, show_default=False,
              help="Share of each replay image's target taken from the base model's own answer (learning "
                   "without forgetting; 0: labels only) [default: 0.5 with --fit head, 0 with --fit tail].")
@click.option("--bn", type=click.Choice(["frozen", "new", "mixed"]), default="frozen",
              help="BatchNorm statistics: the base's, re-estimated on the new cells (label-free), or on the "
                   "new cells and as many replay images.")
@click.option("--balance/--no-balance", default=False,
              help="Weight the new cells so each of their classes carries the same loss (at most 4x).")
@click.option("--fit", type=click.Choice(["head", "tail"]), default="head",
              help="head: only the classifier layer, on the frozen backbone's features of every flip/rotation, "
                   "pulled toward the base's weights (seconds; the old microscope's features are untouched); "
                   "tail: the classifier head and the last --blocks, by SGD on the images (--augment, --bn, "
                   "--epochs, --lr apply to tail only).")
@click.option("--epochs", type=click.IntRange(0), default=8,
              help="Passes over the new cells (0: only --bn new|mixed, no fitting).")
@click.option("--batch-size", type=click.IntRange(1), default=32)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=3e-4, help="Adam learning rate.")
@click.option("--seed", type=int, default=0)
@click.option("--eval-limit", type=click.IntRange(1), help="At most N images per class of PBC val (quick runs).")
@click.option("--run-cells", type=click.Choice(["reviewed", "all"]), default="reviewed",
              help="From run folders: only cells the reviewer corrected or confirmed, or all (model's labels).")
@click.option("--views", type=click.Choice(["auto", "off", "flips", "dihedral"]), default="auto",
              help="Test-time views the adapted bundle runs and its OOD levels are set for (edge/tta.py); auto: "
                   "the base bundle's inference.views (the packaged default: flips; a .keras base: off).")
@click.option("--max-old-drop", type=FiniteFloat(0, 1), default=None, show_default=False,
              help="Watch the old microscope: a fit that loses more than this share of the base's accuracy "
                   "on --old-check images of --replay's train split (kept out of the replay sample) is not "
                   "chosen, however well it does on the new cells (0.005 = 0.5 pt; 1: not watched) "
                   "[default: 0.005 with --fit head, 1 with --fit tail].")
@click.option("--old-check", type=click.IntRange(1), default=800, show_default=True,
              help="With --max-old-drop: how many replay-data train images watch the old microscope.")
@click.option("--no-export", is_flag=True, help="Skip the int8 bundle (model.keras only).")
@user_errors
def adapt(no_export, **opts):
    """Fine-tune a classifier on a new microscope's corrected cells, on the CPU, in minutes.

    \b
    Example:
      hemaedge edge run --source frames/ --out runs/lab1 --save-crops all
      hemaedge review runs/lab1                  # correct / confirm cells
      hemaedge train adapt --base src/hemaedge/models/default --data runs/lab1 \\
          --replay ../shared/data/bloodmnist128 --out runs/adapt-lab1
      hemaedge edge install runs/adapt-lab1/bundle
    """
    import logging

    from hemaedge.train.adapt import AdaptConfig, adapt as run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opts["data"], opts["test"] = list(opts["data"]), list(opts["test"])
    cfg = AdaptConfig(**opts, export=not no_export)
    result = run(cfg, logf=click.echo, command=" ".join(["hemaedge", *sys.argv[1:]]))
    p = result["provenance"]
    for split in p["accuracy_after"]:
        b, a = p["accuracy_before"][split]["accuracy"], p["accuracy_after"][split]["accuracy"]
        click.echo(f"{split}: accuracy {b} -> {a} (n={p['accuracy_after'][split]['n']})")
    if "bundle" in result:
        click.echo(f"bundle: {result['bundle']['path']} ({result['bundle']['status']}); "
                   f"int8 PBC val accuracy {result['bundle']['pbc_val_accuracy_int8']}")
    click.echo(f"wall time {result['wall_seconds']} s; details in {cfg.out}/adapt.json")
