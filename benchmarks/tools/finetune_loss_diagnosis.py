"""Why the logged fine-tuning loss rises while accuracy rises: a cheap, committed experiment.

    python -m hemaedge.benchmarks.tools.finetune_loss_diagnosis --data /work/shared/data/bloodmnist128 \\
        --size 64 --per-class 200 --epochs 6 --out benchmarks/results/finetune_loss_diagnosis

Trains EfficientNet-Lite0 (ImageNet) on a class-limited subset with the real recipe code
(`hemaedge.train.finetune`: the same batches, augmentation, mixup and target weighting) under
several imbalance/mixup settings, and after every epoch decomposes the loss on a fixed set of
recipe batches (inference mode, so BN/dropout are out of the picture):

* logged    : the loss `model.fit` reports (training mode, weighted + mixed batches)
* mixed/clean : the same fixed batches' loss split into mixed-up and untouched batches
* plain CE  : unweighted, un-mixed cross-entropy of un-augmented training images
* top-logit gap : mean (largest - second largest) logit on those images (confidence scale)
* val acc / val CE : on the validation subset

Trains nothing on a test split. Timings are not the point; the machine is shared.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

SETTINGS = {
    "recipe (sampling + loss weights + mixup)": dict(weighted_sampling=True, weighted_loss=True, mixup_p=0.5),
    "sampling only + mixup": dict(weighted_sampling=True, weighted_loss=False, mixup_p=0.5),
    "loss weights only + mixup": dict(weighted_sampling=False, weighted_loss=True, mixup_p=0.5),
    "sampling + loss weights, no mixup": dict(weighted_sampling=True, weighted_loss=True, mixup_p=0.0),
}


def _logit_model(model):
    import keras

    dense = model.get_layer("probabilities")
    inp = model.input
    x = model.layers[1](inp)                       # the backbone (pooled features)
    logits = keras.layers.Dense(dense.units, name="logits")(x)
    m = keras.Model(inp, logits)
    m.get_layer("logits").set_weights(dense.get_weights())
    return m


def run_setting(name, overrides, args, x_tr, y_tr, x_val, y_val, n_classes, log):
    import keras

    from hemaedge.train import finetune as ft
    from hemaedge.train import sampling

    cfg = ft.FinetuneConfig(data=args["data"], out="/nonexistent", size=args["size"], epochs=args["epochs"],
                            limit=args["limit"], seed=42, **overrides)
    keras.utils.set_random_seed(cfg.seed)
    model, _ = ft.build_classifier(cfg.backbone, cfg.weights, cfg.size, n_classes, cfg.dropout)
    ft.compile_model(model, cfg)
    class_w = sampling.class_weights(y_tr, n_classes)
    contract = cfg.contract(ft.colour_reference(x_tr, cfg))
    seq = ft._make_train_sequence(x_tr, y_tr, n_classes, cfg, class_w, 0, contract)
    # a fixed probe: the recipe batches of epoch 0 (their own mixup/weighting), rebuilt once
    probe_seq = ft._make_train_sequence(x_tr, y_tr, n_classes, cfg, class_w, 0, contract)
    probe = [probe_seq[i] for i in range(min(12, len(probe_seq)))]
    mixed = [bool((np.count_nonzero(yb, axis=1) > 1).any()) for _, yb in probe]
    cce = keras.losses.CategoricalCrossentropy()
    clean_idx = np.arange(0, len(y_tr), max(1, len(y_tr) // 400))
    rows = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate.assign(ft.cosine_lr(epoch, cfg))
            seq.set_epoch(epoch)
            self.t = time.time()

        def on_epoch_end(self, epoch, logs=None):
            def mean_loss(sel):
                v = [float(cce(yb, self.model(xb, training=False))) for (xb, yb), m in zip(probe, mixed) if m == sel]
                return float(np.mean(v)) if v else float("nan")
            lm = _logit_model(self.model)
            z = np.asarray(lm.predict(x_tr[clean_idx].astype(np.float32), batch_size=64, verbose=0))
            zs = np.sort(z, axis=1)
            p = np.asarray(self.model.predict(x_tr[clean_idx].astype(np.float32), batch_size=64, verbose=0))
            pv = np.asarray(self.model.predict(x_val.astype(np.float32), batch_size=64, verbose=0))
            eps = 1e-12
            row = {"epoch": epoch + 1, "logged": float(logs["loss"]), "train_acc_logged": float(logs["accuracy"]),
                   "probe_mixed": mean_loss(True), "probe_clean": mean_loss(False),
                   "plain_ce": float(-np.mean(np.log(p[np.arange(len(p)), y_tr[clean_idx]] + eps))),
                   "logit_gap": float(np.mean(zs[:, -1] - zs[:, -2])),
                   "val_acc": float(np.mean(pv.argmax(1) == y_val)),
                   "val_ce": float(-np.mean(np.log(pv[np.arange(len(pv)), y_val] + eps))),
                   "seconds": time.time() - self.t}
            rows.append(row)
            log(f"{name} epoch {epoch + 1}: " + " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))

    model.fit(seq, epochs=cfg.epochs, callbacks=[Probe()], verbose=0)
    return rows


@click.command()
@click.option("--data", required=True)
@click.option("--size", type=int, default=64)
@click.option("--per-class", "limit", type=int, default=200, show_default=True, help="The first N images of every class in each split.")
@click.option("--epochs", type=int, default=6)
@click.option("--only", multiple=True, help="Run only these setting names (substring match).")
@click.option("--out", required=True, help="Prefix for OUT.json / OUT.md")
def main(data, size, limit, epochs, only, out):

    from hemaedge.train import finetune as ft
    from hemaedge.train.evaluate import write_json

    args = {"data": data, "size": size, "limit": limit, "epochs": epochs}
    from hemaedge.edge.preprocess import InputContract

    ds = ft.open_data(data)
    x_tr, y_tr = ft.load_split(ds, "train", InputContract(size=size), limit, raw=True)  # raw: augmented per batch
    cfg0 = ft.FinetuneConfig(data=data, out="-", size=size)
    x_val, y_val = ft.load_split(ds, "val", cfg0.contract(ft.colour_reference(x_tr, cfg0)), limit)
    results = {}
    for name, overrides in SETTINGS.items():
        if only and not any(o in name for o in only):
            continue
        results[name] = run_setting(name, overrides, args, x_tr, y_tr, x_val, y_val, len(ds.classes), print)
        write_json(Path(out + ".json"), {"args": args, "machine": ft.machine(), "results": results,
                                         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    print(json.dumps({k: v[-1] for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
