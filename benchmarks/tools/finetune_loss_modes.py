"""Where a fine-tuning run's logged loss comes from: the same recipe batches scored in inference
mode, in training mode without dropout (BN batch statistics only) and in full training mode.

    python -m hemaedge.benchmarks.tools.finetune_loss_modes RUN_DIR [RUN_DIR ...] --out benchmarks/results/finetune_loss_modes

Uses the run's own recipe (state.json: augmentation, normalisation reference, mixup, target
weighting) to build 24 fixed probe batches (`finetune.make_probe_batches`) and scores
`last.keras` on them three ways. `model.fit` logs the full-training-mode loss; the difference to
the inference-mode loss splits into what batch statistics (BN) and what dropout add.
Writes OUT.json and OUT.md (one row per run, mixed and untouched batches separately).
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
import numpy as np


def decompose(run: Path, n_batches: int = 24) -> dict:
    import keras

    from hemaedge.edge.preprocess import InputContract
    from hemaedge.train import finetune as ft
    from hemaedge.train import sampling

    st = json.loads((run / "state.json").read_text())
    cfg = ft.FinetuneConfig(**st["config"])
    cfg.validate()
    ds = ft.open_data(cfg.data)
    x, y = ft.load_split(ds, "train", InputContract(size=cfg.size), cfg.limit, raw=True)
    n_classes = len(ds.classes)
    probe = ft.make_probe_batches(x, y, n_classes, cfg, sampling.class_weights(y, n_classes),
                                  cfg.contract(st.get("normalize")), n=n_batches)
    model = keras.models.load_model(run / "last.keras")
    cce = keras.losses.CategoricalCrossentropy()
    drops = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dropout)]
    rates = [d.rate for d in drops]

    def score(training: bool, dropout: bool) -> dict:
        for d, r in zip(drops, rates):
            d.rate = r if dropout else 0.0
        out = {True: [], False: []}
        for xb, yb, mixed in probe:
            out[mixed].append(float(cce(yb, model(xb, training=training))))
        for d, r in zip(drops, rates):
            d.rate = r
        return {("mixed" if k else "clean"): round(float(np.mean(v)), 4) for k, v in out.items() if v}

    history = ft.read_history(run)
    return {"run": str(run), "epochs": st["epoch"], "backbone": cfg.backbone, "size": cfg.size,
            "weighted_sampling": cfg.weighted_sampling, "weighted_loss": cfg.weighted_loss, "mixup_p": cfg.mixup_p,
            "dropout": rates, "logged_loss_by_epoch": [round(h["loss"], 4) for h in history],
            "inference": score(False, False), "bn_batch_stats": score(True, False), "training_mode": score(True, True)}


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, help="Prefix: OUT.json and OUT.md")
def main(runs, out):
    """Split the logged training loss of fine-tuning runs into inference / BN / dropout parts."""
    from hemaedge.edge.atomic import atomic_write_text
    from hemaedge.benchmarks.tools.segmentation_bccd import machine

    rows = [decompose(r) for r in runs]
    rep = {"date": dt.date.today().isoformat(), "machine": machine(),
           "command": "python -m hemaedge.benchmarks.tools.finetune_loss_modes " + " ".join(map(str, runs)) + f" --out {out}",
           "rows": rows}
    md = [f"# Logged training loss, decomposed ({rep['date']})", "", f"Command: `{rep['command']}`  ",
          f"Machine: {rep['machine']}", "",
          "Loss of 24 fixed recipe batches (mixed / untouched) scored with the run's last checkpoint.", "",
          "| run | sampling / loss weights / mixup | logged loss by epoch | inference (mixed / clean) | "
          "+ BN batch statistics | + dropout (= training mode, what fit logs) |", "|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda d: f"{d.get('mixed', float('nan')):.3f} / {d.get('clean', float('nan')):.3f}"
        md.append(f"| {Path(r['run']).name} ({r['backbone']} {r['size']} px, {r['epochs']} ep) | "
                  f"{r['weighted_sampling']} / {r['weighted_loss']} / {r['mixup_p']} | "
                  f"{' → '.join(f'{v:.2f}' for v in r['logged_loss_by_epoch'])} | {f(r['inference'])} | "
                  f"{f(r['bn_batch_stats'])} | {f(r['training_mode'])} |")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out + ".json"), json.dumps(rep, indent=1))
    atomic_write_text(Path(out + ".md"), "\n".join(md) + "\n")
    click.echo("\n".join(md))


if __name__ == "__main__":
    main()
