"""`hemaedge train finetune` and `hemaedge train ensemble`: argument parsing only.

The work happens in `hemaedge.train.finetune` and `hemaedge.train.ensemble`.
"""
from __future__ import annotations

import click

from hemaedge.edge.cli_support import POSITIVE_FLOAT, FiniteFloat, UserError, user_errors

NORMALIZE_CHOICES = ("none", "lab-anchors")
BACKBONE_CHOICES = ("efficientnetv2b0", "efficientnetb0", "efficientnetb3", "resnet50", "resnet50v2",
                    "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "smallcnn")


def _weights(value: str):
    return None if value.lower() in ("none", "scratch", "random") else value


def _flag(name: str, value: bool) -> str:
    """The spelling of a boolean option as this command takes it (`--one-lab-pass / --two-lab-passes`, not
    `--no-one-lab-pass`), so the recorded command runs as written."""
    for p in click.get_current_context().command.params:
        if p.name == name and isinstance(p, click.Option) and p.is_bool_flag:
            names = p.opts if value else p.secondary_opts
            if names:
                return names[0]
    return f"--{'' if value else 'no-'}{name.replace('_', '-')}"


@click.command(context_settings={"show_default": True})
@click.option("--data", required=True, help="Data set: MedMNIST .npz, ImageFolder tree (split or flat), or name.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (checkpoints, curves, metrics).")
@click.option("--backbone", type=click.Choice(BACKBONE_CHOICES), default="efficientnet-lite0")
@click.option("--weights", default="imagenet",
              help="'imagenet', 'none' (from scratch) or a local weights file (Keras apps: hash-checked; Lite: .pth).")
@click.option("--size", type=click.IntRange(28, 224), default=128, help="Input size in pixels (28..224).")
@click.option("--epochs", type=click.IntRange(1), default=10)
@click.option("--batch-size", type=click.IntRange(1), default=32)
@click.option("--lr", type=POSITIVE_FLOAT, default=1e-4, help="AdamW peak learning rate (above 0).")
@click.option("--weight-decay", type=FiniteFloat(min=0), default=1e-4, help="AdamW weight decay.")
@click.option("--t-max", type=click.IntRange(1), default=None, help="Cosine annealing period in epochs [default: --epochs].")
@click.option("--eta-min", type=FiniteFloat(min=0), default=0.0, help="Cosine annealing floor learning rate.")
@click.option("--mixup-p", type=FiniteFloat(0, 1), default=0.5, help="Probability that a batch is mixed up.")
@click.option("--mixup-alpha", type=POSITIVE_FLOAT, default=0.2, help="Beta(alpha, alpha) of mixup.")
@click.option("--preprocess", type=click.Choice(["clahe", "rgb", "masked-rgb", "otsu-mask"]), default="clahe",
              help="Input preprocessing (part of the model's input contract; the device applies the same).")
@click.option("--clahe-clip", type=POSITIVE_FLOAT, default=2.0)
@click.option("--clahe-tiles", type=click.IntRange(1), default=8)
@click.option("--augment", type=click.Choice(["robust", "full", "light", "isotropic", "none"]), default="robust",
              help="robust = the recipe's list + the camera/stain pieces (--robust-pieces) and ±25% scale; "
                   "full = the recipe's list; light = flips + rotation/scale (cheaper on a CPU); "
                   "isotropic = light with any rotation (cells without an orientation, e.g. red cells).")
@click.option("--robust-pieces", default="all",
              help="Camera/stain pieces of --augment robust, comma-separated, for ablations: stain, hsv, gamma, "
                   "white-balance, tint, blur, jpeg, noise; 'all' = every one.")
@click.option("--scale-jitter", type=FiniteFloat(0, 0.6), default=None,
              help="± scale of the main affine [default: 0.25 for robust, 0.15 otherwise]; covers the "
                   "red-cell ruler's error on the device.")
@click.option("--normalize", type=click.Choice(NORMALIZE_CHOICES), default="lab-anchors",
              help="Colour normalisation to the training set's background/red-cell colours (edge.preprocess; "
                   "recorded in the input contract, so the device does the same).")
@click.option("--one-lab-pass/--two-lab-passes", default=False,
              help="Colour normalisation and CLAHE in one RGB->Lab->RGB conversion (~0.15 ms less per cell on "
                   "the device; recorded in the input contract). Not the pixels of two passes: a model trained "
                   "one way runs that way (the packaged default: two).")
@click.option("--weighted-sampling/--no-weighted-sampling", default=True, help="Inverse-frequency sampling.")
@click.option("--weighted-loss/--no-weighted-loss", default=False,
              help="Inverse-frequency weighted cross-entropy on top of the sampling (the published double "
                   "correction; see docs/finetune.md).")
@click.option("--loss", type=click.Choice(["cross-entropy", "focal"]), default="cross-entropy",
              help="Training loss; focal (Lin et al. 2017) weighs hard, often rare, examples more: an imbalance "
                   "remedy on its own (with --no-weighted-sampling) or beside the others.")
@click.option("--focal-gamma", type=FiniteFloat(min=0), default=2.0,
              help="Focusing parameter of --loss focal (0 = cross-entropy; 2 = the paper's).")
@click.option("--dropout", type=FiniteFloat(0, 1, max_open=True), default=0.2, help="Dropout before the classifier.")
@click.option("--seed", type=int, default=42)
@click.option("--per-class", "limit", type=click.IntRange(1), default=None, metavar="N",
              help="Quick runs: only the first N images of every class in each split.")
@click.option("--bootstrap", type=click.IntRange(0), default=1000, help="Bootstrap resamples for the accuracy interval.")
@click.option("--extra-cells", multiple=True, type=click.Path(file_okay=False), metavar="PATH",
              help="Labelled cells of another microscope mixed into every epoch (the multi-domain model): a "
                   "{class}/*.png tree or a run folder reviewed in `hemaedge review`; repeat for several.")
@click.option("--extra-share", type=FiniteFloat(0, 0.9, min_open=True, max_open=True), default=0.15,
              help="Share of every epoch's draws taken from --extra-cells (class-balanced, a rare class capped).")
@click.option("--extra-val", multiple=True, type=click.Path(file_okay=False), metavar="PATH",
              help="Held-out labelled cells of that microscope (same forms; never its test split): the best "
                   "epoch is chosen on the mean of --data's val accuracy and theirs.")
@click.option("--resume", is_flag=True, help="Continue the run in --out after an interruption.")
@click.option("--init", type=click.Path(dir_okay=False), default=None,
              help="Start from this fine-tuned classifier's weights (.keras with its .json sidecar, same "
                   "backbone and classes) instead of --weights, e.g. at a larger --size (progressive resizing).")
@click.option("--publish", "publish_prefix", default=None, type=click.Path(dir_okay=False),
              help="Also write a results table PREFIX.md/.json + PREFIX_curves.png, e.g. "
                   "benchmarks/results/finetune_bloodmnist128.")
@user_errors
def finetune(resume, publish_prefix, **opts):
    """Fine-tune an ImageNet backbone end to end (Hameed 2025 recipe as defaults).

    \b
    Example (the project's default model):
      hemaedge train finetune --data ../shared/data/bloodmnist128 \\
          --out runs/finetune-lite0 --backbone efficientnet-lite0 --size 128 --epochs 5

    \b
    Trained on two microscopes (the multi-domain model; docs/finetune.md):
      hemaedge train finetune --data ../shared/data/bloodmnist128 --out runs/two-scopes \\
          --extra-cells runs/lab1 --extra-val runs/lab1-held-out --one-lab-pass
    """
    from hemaedge.edge.errors import DataError
    from hemaedge.train.backbones import WeightsError
    from hemaedge.train.finetune import FinetuneConfig, FinetuneError, finetune as run
    from hemaedge.train.lite_weights import UnsafeCheckpointError

    from hemaedge.train.finetune import publish

    opts["weights"] = _weights(opts["weights"])
    from hemaedge.train.finetune_augment import ROBUST_PIECES

    given = opts.pop("robust_pieces")
    pieces = ROBUST_PIECES if given.strip() == "all" else tuple(p.strip() for p in given.split(",") if p.strip())
    cfg = FinetuneConfig(robust_pieces=pieces, **opts)
    opts["robust_pieces"] = given
    command = "hemaedge train finetune " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, vs in opts.items() if vs is not None and not isinstance(vs, bool)
        for v in (vs if isinstance(vs, tuple) else (vs,))) + \
        "".join(f" {_flag(k, v)}" for k, v in opts.items() if isinstance(v, bool)) + \
        (" --resume" if resume else "") + (f" --publish {publish_prefix}" if publish_prefix else "")
    try:
        run(cfg, resume=resume, command=command)
    except (FinetuneError, WeightsError, UnsafeCheckpointError, DataError) as exc:
        raise UserError(str(exc)) from None
    click.echo(f"wrote {cfg.out}/model.keras (+ model.json), best.keras, metrics.json, curves.png, summary.md")
    if publish_prefix:
        for path in publish(cfg.out, publish_prefix):
            click.echo(f"wrote {path}")


@click.command(context_settings={"show_default": True})
@click.argument("members", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Data set with the members' classes (weights are chosen on its val split).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--grid", type=click.Choice(["paper", "simplex"]), default="paper",
              help="paper = (0.3,0.7),(0.4,0.6) in both orders (2 members); simplex = all weights on a lattice.")
@click.option("--step", type=FiniteFloat(0, 1, min_open=True), default=0.1, help="Lattice step of the simplex grid.")
@click.option("--per-class", "limit", type=click.IntRange(1), default=None, metavar="N",
              help="Only the first N images of every class in each split.")
@click.option("--bootstrap", type=click.IntRange(0), default=1000)
@user_errors
def ensemble(members, data, out, grid, step, limit, bootstrap):
    """Weighted-average ensemble of fine-tuned MEMBERS (.keras with .json sidecars).

    \b
    Example:
      hemaedge train ensemble runs/a/best.keras runs/b/best.keras \\
          --data ../shared/data/bloodmnist128 --out runs/ensemble --grid simplex --step 0.1
    """
    from hemaedge.train.ensemble import EnsembleError, run_ensemble

    try:
        run_ensemble(members, data, out, grid=grid, step=step, limit=limit, bootstrap=bootstrap)
    except EnsembleError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"wrote {out}/ensemble.keras, ensemble.json, metrics.json, summary.md")


@click.command(context_settings={"show_default": True})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New folder for the frozen snapshot.")
@click.option("--bootstrap", type=click.IntRange(0), default=None, help="Bootstrap resamples [default: the run's].")
@click.option("--publish", "publish_prefix", default=None, type=click.Path(dir_okay=False),
              help="Also write a results table PREFIX.md/.json (marked with the snapshot's epoch).")
@user_errors
def snapshot(run_dir, out, bootstrap, publish_prefix):
    """Evaluate a fine-tuning run's current best checkpoint while it keeps training.

    \b
    Copies best.keras (+ json, history) of RUN_DIR into --out and evaluates it there: val/test
    metrics, temperature on val, ECE, OOD and domain sections in model.json (ready for export).
    """
    from hemaedge.train.finetune import FinetuneError, publish, snapshot as run

    try:
        run(run_dir, out, log=click.echo, bootstrap=bootstrap)
    except (FinetuneError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    click.echo(f"wrote {out}/model.keras (+ model.json), metrics.json, summary.md")
    if publish_prefix:
        for path in publish(out, publish_prefix):
            click.echo(f"wrote {path}")
