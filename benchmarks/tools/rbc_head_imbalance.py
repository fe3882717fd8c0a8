"""Class imbalance of the red-cell classifier, measured on its head: none vs weighted sampling vs
focal loss, mixup off, on the fixed features of a fine-tuned backbone (decoupled training, Kang et al.,
ICLR 2020: "Decoupling representation and classifier for long-tailed recognition").

    python -m hemaedge.benchmarks.tools.rbc_head_imbalance RUN --crops CROPS --out-run NEW_RUN \
        [--epochs 30] [--out benchmarks/results/rbc_head_imbalance]

Why the head: the full fine-tuning arms (`hemaedge train finetune ... --mixup-p 0 --loss focal`) could
not run on this shared CPU (one epoch ~3 h at load 30); the backbone's features are computed once and
every arm trains the same softmax layer on them, with the shared pieces of the fine-tuning
(`sampling.epoch_order` for weighted sampling, `finetune.training_loss` for focal / cross-entropy).
Each arm keeps its epoch with the best VAL macro-F1; the arms are compared on val macro-F1; only the
chosen arm is evaluated on test (once), and written as a finetune-style run folder (model.keras +
model.json with the confidence sections) that `hemaedge export` takes.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path

import click
import numpy as np

from hemaedge.benchmarks.tools.result_files import write_result

RESULTS = Path(__file__).resolve().parents[1] / "results"
ARMS = {"none": {"weighted_sampling": False, "loss": "cross-entropy"},
        "weighted sampling": {"weighted_sampling": True, "loss": "cross-entropy"},
        "focal loss (gamma 2)": {"weighted_sampling": False, "loss": "focal", "focal_gamma": 2.0}}


def _features(model, x, batch=256):
    import keras

    head = model.get_layer("head_dropout")
    feat = keras.Model(model.inputs, head.input)
    return np.concatenate([np.asarray(feat(x[i:i + batch].astype(np.float32), training=False))
                           for i in range(0, len(x), batch)])


def train_head(cfg, f_train, y_train, f_val, y_val, n_classes, epochs, w0, b0, seed=42):
    """A softmax layer trained from the fine-tuned head's weights; returns (weights, val macro-F1, history)."""
    import keras
    from sklearn.metrics import f1_score

    from hemaedge.train import sampling
    from hemaedge.train.finetune import training_loss

    keras.utils.set_random_seed(seed)
    inp = keras.Input((f_train.shape[1],))
    out = keras.layers.Dense(n_classes, activation="softmax")(keras.layers.Dropout(cfg.dropout)(inp))
    head = keras.Model(inp, out)
    head.layers[-1].set_weights([w0, b0])
    head.compile(optimizer=keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay),
                 loss=training_loss(cfg))
    best = (-1.0, None, 0)
    history = []
    for epoch in range(epochs):
        order = sampling.epoch_order(y_train, n_classes, np.random.default_rng([seed, epoch]), cfg.weighted_sampling)
        head.fit(f_train[order], sampling.one_hot(y_train[order], n_classes), batch_size=cfg.batch_size,
                 epochs=1, shuffle=False, verbose=0)
        pred = np.asarray(head.predict(f_val, batch_size=1024, verbose=0)).argmax(1)
        f1 = float(f1_score(y_val, pred, average="macro"))
        history.append({"epoch": epoch + 1, "val_macro_f1": round(f1, 4), "val_accuracy": round(float(np.mean(pred == y_val)), 4)})
        if f1 > best[0]:
            best = (f1, [w.copy() for w in head.layers[-1].get_weights()], epoch + 1)
    return best, history


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--crops", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The crops tree the backbone was trained on (`hemaedge data rbc-crops`).")
@click.option("--out-run", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New run folder for the chosen arm (model.keras + model.json, ready for export).")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--out", "prefix", type=click.Path(path_type=Path), default=RESULTS / "rbc_head_imbalance", show_default=True)
def main(run, crops, out_run, epochs, lr, prefix):
    import keras

    from hemaedge.benchmarks.machine import describe_machine, one_line
    from hemaedge.edge.preprocess import InputContract
    from hemaedge.train.evaluate import compute_metrics, write_json
    from hemaedge.train.finetune import (FinetuneConfig, confidence_sections, load_split, open_data,
                                         predict_proba, save_keras_atomic)

    if out_run.exists():
        raise click.UsageError(f"{out_run} exists; choose a new --out-run folder")
    side = json.loads((run / "model.json").read_text())
    state = json.loads((run / "state.json").read_text())
    contract = InputContract.from_dict(side["input"])
    ds = open_data(crops)
    if list(ds.classes) != list(side["classes"]):
        raise click.UsageError(f"{crops}: classes differ from the run's")
    model = keras.models.load_model(run / "model.keras", compile=False)
    w0, b0 = model.get_layer("probabilities").get_weights()
    data = {s: load_split(ds, s, contract) for s in ("train", "val")}
    feats = {s: _features(model, x) for s, (x, _) in data.items()}
    n = len(ds.classes)
    base = {k: v for k, v in state["config"].items() if k in {f.name for f in dataclasses.fields(FinetuneConfig)}}
    rows, chosen = [], None
    for name, opts in ARMS.items():
        cfg = FinetuneConfig(**{**base, "data": str(crops), "out": str(out_run), "mixup_p": 0.0, "lr": lr,
                                "weighted_loss": False, **opts})
        (f1, weights, best_epoch), history = train_head(cfg, feats["train"], data["train"][1], feats["val"],
                                                        data["val"][1], n, epochs, w0, b0)
        rows.append({"arm": name, "val_macro_f1": round(f1, 4), "best_epoch": best_epoch, "history": history,
                     "options": opts})
        click.echo(f"{name}: val macro-F1 {f1:.4f} (epoch {best_epoch})")
        if chosen is None or f1 > chosen[0]:
            chosen = (f1, name, weights, cfg)
    # the chosen head on the full model, evaluated on val and (once) on test, saved as a run folder
    f1, name, weights, cfg = chosen
    model.get_layer("probabilities").set_weights(weights)
    out_run.mkdir(parents=True)
    save_keras_atomic(model, out_run / "model.keras")
    metrics = {}
    for split in ("val", "test"):
        x, y = load_split(ds, split, contract)
        p = predict_proba(model, x)
        metrics[split] = compute_metrics(y, p, list(ds.classes), bootstrap=200, seed=42)
        if split == "val":
            from hemaedge.train.evaluate import apply_temperature, fit_temperature

            t = fit_temperature(y, p)
            side.update(confidence_sections(ds, contract, cfg.limit, y, apply_temperature(p, t), t))
    side["metrics"] = {s: {k: m[k] for k in ("accuracy", "macro_f1", "kappa", "roc_auc_ovr", "accuracy_ci95", "n")}
                       for s, m in metrics.items()}
    side["head"] = {"arm": name, "from": str(run), "tool": "benchmarks/tools/rbc_head_imbalance.py"}
    write_json(out_run / "model.json", side)
    shutil.copyfile(run / "state.json", out_run / "source_state.json")
    rep = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": one_line(describe_machine()),
           "command": f"python -m hemaedge.benchmarks.tools.rbc_head_imbalance {run} --crops {crops} --out-run {out_run} "
                      f"--epochs {epochs} --lr {lr}",
           "backbone_run": str(run), "weights": side.get("weights"), "crops": str(crops), "arms": rows, "chosen": name,
           "chosen_metrics": {s: {k: m[k] for k in ("accuracy", "macro_f1", "kappa", "accuracy_ci95", "n")}
                              for s, m in metrics.items()},
           "chosen_per_class_test": metrics["test"]["per_class"]}
    lines = [f"# Red-cell class imbalance on the classifier head ({rep['date']})", "", f"Command: `{rep['command']}`  ",
             f"Machine: {rep['machine']}  ", f"Backbone: {run} ({rep['weights']}), frozen; crops {crops}.", "",
             "Mixup off in every arm; each arm trains the same softmax layer (started from the fine-tuned one) for "
             f"{epochs} epochs on the backbone's features and keeps its best-VAL-macro-F1 epoch. Test is measured for "
             "the chosen arm only.", "", "| arm | val macro-F1 (best epoch) |", "|---|---|"]
    lines += [f"| {r['arm']}{' (chosen)' if r['arm'] == name else ''} | {r['val_macro_f1']:.4f} ({r['best_epoch']}) |"
              for r in rows]
    cm = rep["chosen_metrics"]
    lines += ["", f"Chosen: {name}. Keras float32: val accuracy {cm['val']['accuracy']:.4f} / macro-F1 "
              f"{cm['val']['macro_f1']:.4f}; test accuracy {cm['test']['accuracy']:.4f} / macro-F1 {cm['test']['macro_f1']:.4f} "
              f"(n = {cm['test']['n']})."]
    write_result(prefix, rep, "\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
