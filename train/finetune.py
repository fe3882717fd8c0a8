"""End-to-end fine-tuning of an ImageNet backbone (Hameed 2025's recipe as the defaults).

    camera/stain augmentation (finetune_augment, `--augment robust`) -> colour normalisation
    to the training set's reference + CLAHE (clip 2.0, tiles 8x8; `hemaedge.edge.preprocess`,
    the same code the device runs) -> the recipe's augmentation -> mixup p=0.5 ->
    inverse-frequency weighted sampling (the published recipe also weights the loss: see
    docs/finetune.md for why that is now off by default) -> AdamW lr 1e-4, wd 1e-4, cosine
    annealing per epoch (T_max = epochs) -> batch 32 -> checkpoint on best validation accuracy.

Keras 3 only (keras.ops / keras.utils.PyDataset / model.fit), so it runs with the
TensorFlow, JAX or torch backend; the saved `.keras` uses built-in layers only and loads with
the TensorFlow backend for export. The model takes float32 RGB 0..255 (scaling "raw").

Outputs in `out/`: best.keras + best.json (classes, input contract, weights, metrics),
last.keras + state.json (resume), history.csv (one row per epoch, written as it goes),
curves.png, metrics.json, confusion_test.png, summary.md.

Resume: last.keras holds the weights AND the optimizer state; state.json the finished epoch,
best accuracy and the config. All randomness is derived from (seed, epoch, batch), so a
resumed run draws the same batches, augmentations and mixups it would have drawn.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemaedge.edge.atomic import atomic_path
from hemaedge.edge.errors import HemaedgeError
from hemaedge.edge.machine import cpu_model
from hemaedge.edge.preprocess import NORMALIZE_METHODS, InputContract, apply_preprocess, reference_anchors
from hemaedge.train import sampling
from hemaedge.train.data.subsets import first_per_class
from hemaedge.train.finetune_augment import AUGMENT_PRESETS, ROBUST_PIECES, BatchAugmenter

logger = logging.getLogger(__name__)

# loss_mixed / loss_clean: the training loss (same targets: weighted if --weighted-loss, mixed)
# of a fixed set of recipe batches, mixed-up and untouched ones, in INFERENCE mode; compared with
# the logged (training-mode) loss they show what batch statistics/dropout add.
# train_eval_loss: plain cross-entropy of a fixed set of un-augmented training images.
# extra_val_accuracy: on --extra-val (another microscope); score: what chooses the best epoch,
# val_accuracy, or its mean with extra_val_accuracy (each microscope counts the same).
HISTORY_FIELDS = ("epoch", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "seconds",
                  "loss_mixed", "loss_clean", "train_eval_loss", "extra_val_accuracy", "score")
NORMALIZE_CHOICES = ("none", *NORMALIZE_METHODS)
LOSSES = ("cross-entropy", "focal")


class FinetuneError(HemaedgeError):
    """A fine-tuning request that cannot run (bad option, unusable output folder)."""


@dataclass
class FinetuneConfig:
    data: str
    out: str
    backbone: str = "efficientnet-lite0"
    weights: str | None = "imagenet"
    size: int = 128
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    t_max: int | None = None          # cosine period in epochs; None = epochs
    eta_min: float = 0.0
    mixup_p: float = 0.5
    mixup_alpha: float = 0.2
    preprocess: str = "clahe"
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    augment: str = "robust"
    robust_pieces: tuple = ROBUST_PIECES   # camera-stage pieces of --augment robust
    scale_jitter: float | None = None      # ± scale of the main affine; None = the preset's
    normalize: str = "lab-anchors"         # colour normalisation to the training set's reference
    one_lab_pass: bool = False             # normalisation + CLAHE in one Lab conversion (faster on the device)
    weighted_sampling: bool = True
    weighted_loss: bool = False            # True = the published double correction
    loss: str = "cross-entropy"            # or "focal" (Lin et al. 2017): hard examples weigh more
    focal_gamma: float = 2.0               # focal loss' focusing parameter (0 = cross-entropy)
    dropout: float = 0.2
    seed: int = 42
    limit: int | None = None          # at most this many images per class and split (quick runs)
    bootstrap: int = 1000
    init: str | None = None           # a fine-tuned .keras classifier whose weights start the run
    # a second microscope (issue #13's multi-domain model): its labelled cells are mixed into every
    # epoch, and its held-out cells share the choice of the best epoch with the data set's val split
    extra_cells: tuple = ()           # class-folder trees or reviewed run folders of `edge run --save-crops`
    extra_share: float = 0.15         # share of every epoch's draws taken from extra_cells
    extra_val: tuple = ()             # held-out cells of those microscopes (same forms)

    def validate(self):
        if not 28 <= int(self.size) <= 224:
            raise FinetuneError(f"--size {self.size}: input size must be 28..224")
        if self.epochs < 1 or self.batch_size < 1:
            raise FinetuneError("--epochs and --batch-size must be at least 1")
        if self.augment not in AUGMENT_PRESETS:
            raise FinetuneError(f"--augment {self.augment!r}: expected one of {AUGMENT_PRESETS}")
        if self.preprocess not in ("clahe", "rgb", "masked-rgb", "otsu-mask"):
            raise FinetuneError(f"--preprocess {self.preprocess!r}: expected clahe, rgb, masked-rgb or otsu-mask")
        if not 0.0 <= self.mixup_p <= 1.0:
            raise FinetuneError("--mixup-p must be within 0..1")
        if self.loss not in LOSSES:
            raise FinetuneError(f"--loss {self.loss!r}: expected one of {LOSSES}")
        if self.normalize not in NORMALIZE_CHOICES:
            raise FinetuneError(f"--normalize {self.normalize!r}: expected one of {NORMALIZE_CHOICES}")
        self.robust_pieces = tuple(self.robust_pieces)
        unknown = set(self.robust_pieces) - set(ROBUST_PIECES)
        if unknown:
            raise FinetuneError(f"--robust-pieces {','.join(sorted(unknown))}: expected some of {','.join(ROBUST_PIECES)}")
        if self.init is not None and not (Path(self.init).is_file() and str(self.init).endswith(".keras")):
            raise FinetuneError(f"--init {self.init}: no such .keras model; give a classifier saved by "
                                "`hemaedge train finetune` (its model.keras or best.keras)")
        self.extra_cells, self.extra_val = tuple(map(str, self.extra_cells)), tuple(map(str, self.extra_val))
        for option, paths in (("--extra-cells", self.extra_cells), ("--extra-val", self.extra_val)):
            for path in paths:
                if not Path(path).is_dir():
                    raise FinetuneError(f"{option} {path}: no such folder; give a class-folder tree "
                                        "({class}/*.png) or a run folder reviewed in `hemaedge review`")
        if not (math.isfinite(float(self.extra_share)) and 0.0 < self.extra_share < 0.9):
            raise FinetuneError(f"--extra-share {self.extra_share}: must be above 0 and below 0.9")
        if self.scale_jitter is not None and not 0.0 <= self.scale_jitter < 0.6:
            raise FinetuneError("--scale-jitter must be within 0..0.6")
        # NaN passes every comparison, so each check says what is allowed, not what is refused
        for name, value, allowed, ok in (
                ("learning rate", self.lr, "above 0", lambda v: v > 0),
                ("weight decay", self.weight_decay, "0 or more", lambda v: v >= 0),
                ("cosine floor learning rate", self.eta_min, "0 or more and below the learning rate",
                 lambda v: 0 <= v < self.lr),
                ("mixup alpha", self.mixup_alpha, "above 0", lambda v: v > 0),
                ("CLAHE clip limit", self.clahe_clip, "above 0", lambda v: v > 0),
                ("dropout", self.dropout, "in 0..1 (1 excluded)", lambda v: 0 <= v < 1),
                ("focal gamma", self.focal_gamma, "0 or more", lambda v: v >= 0)):
            if not (math.isfinite(float(value)) and ok(float(value))):
                raise FinetuneError(f"{name} {value}: must be a finite number {allowed}")

    def contract(self, reference: dict | None = None) -> InputContract:
        """The model's input contract; `reference` = the training set's colour reference
        (`edge.preprocess.reference_anchors`), required when normalisation is on."""
        if self.normalize != "none" and reference is None:
            raise FinetuneError("colour normalisation needs the training set's reference colours")
        return InputContract(size=int(self.size), preprocess=self.preprocess, scaling="raw",
                             clahe_clip=float(self.clahe_clip), clahe_tiles=int(self.clahe_tiles),
                             normalize=reference if self.normalize != "none" else None,
                             one_lab_pass=bool(self.one_lab_pass))


# ----------------------------------------------------------------------------- data


def limit_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the first `limit` images of every class (all when limit is None)."""
    return first_per_class(labels, limit)


def load_split(ds, split: str, contract: InputContract, limit: int | None = None, raw: bool = False):
    """uint8 images of one split resized to the contract's size, with its preprocessing
    (normalisation, CLAHE, ...) applied once, or left raw (`raw=True`: training images, which
    are augmented before they are preprocessed)."""
    labels = ds.split(split).labels
    idx = limit_per_class(labels, limit)
    x, y = ds.load_images(split, size=contract.size, indices=idx)
    if not raw and len(x):
        x = np.stack([apply_preprocess(img, contract) for img in x])
    return x, y


def colour_reference(x_train_raw: np.ndarray, cfg: "FinetuneConfig") -> dict | None:
    """The training set's reference colours for the input contract (None when normalisation is off)."""
    return reference_anchors(x_train_raw) if cfg.normalize != "none" else None


def other_microscope_cells(paths, classes, contract: InputContract, prepared: bool):
    """(images, labels, sources) of other microscopes' labelled cells (`train.adapt.load_new_cells`:
    class-folder trees or reviewed run folders) at the contract's size: raw for training (they are
    augmented first), or `prepared` with the contract's preprocessing for scoring."""
    from hemaedge.train.adapt import load_new_cells

    cells = load_new_cells(paths, classes, contract.size)
    images = np.stack([apply_preprocess(im, contract) for im in cells.images]).astype(np.float32) \
        if prepared else cells.images
    return images, cells.labels, cells.sources


def open_data(path):
    from hemaedge.train.datasets import open_dataset

    return open_dataset(path)


# ----------------------------------------------------------------------------- batches


def _batch_rng(seed, epoch, batch, stream):
    return np.random.default_rng([int(seed), int(epoch), int(batch), stream])


def _make_train_sequence(x, y, n_classes, cfg: FinetuneConfig, class_w, start_epoch: int,
                         contract: InputContract | None = None, extra=None):
    """Training batches from RAW resized images `x`; `contract` (default: no normalisation)
    is applied to every augmented image between the camera and the recipe stage. `extra` =
    (images, labels) of another microscope: `cfg.extra_share` of every epoch's draws."""
    import keras

    if contract is None:
        contract = cfg.contract()  # raises when normalisation is on: its reference is needed

    class TrainBatches(keras.utils.PyDataset):
        """Training batches: weighted sampling, augmentation, mixup, weighted targets."""

        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = start_epoch
            self.aug = BatchAugmenter(cfg.augment, cfg.seed, preprocess=lambda im: apply_preprocess(im, contract),
                                      pieces=cfg.robust_pieces, scale_jitter=cfg.scale_jitter)
            self.mixed = {}  # batch index -> whether it was mixed up (current epoch)
            self.x = x if extra is None else np.concatenate([x, extra[0]])
            self.y = y if extra is None else np.concatenate([y, extra[1]])
            self._set_order()

        def set_epoch(self, epoch):
            """Called by the training loop at the start of every epoch. Keras' own
            on_epoch_end hooks are not used for this: Keras calls them at other times too
            (e.g. when it resets its iterator), which would skip epochs."""
            if epoch != self.epoch:
                self.epoch = epoch
                self.mixed = {}
                self._set_order()

        def _set_order(self):
            rng = np.random.default_rng([cfg.seed, self.epoch, 0, 0])
            self.order = sampling.epoch_order(y, n_classes, rng, cfg.weighted_sampling)
            if extra is not None:
                more = sampling.extra_draws(extra[1], len(self.order), cfg.extra_share, rng, cfg.weighted_sampling)
                self.order = rng.permutation(np.concatenate([self.order, len(y) + more]))

        def __len__(self):
            return math.ceil(len(self.order) / cfg.batch_size)

        def __getitem__(self, i):
            idx = self.order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            xb = self.aug(self.x[idx], self.epoch, i).astype(np.float32)
            yb = sampling.one_hot(self.y[idx], n_classes)
            xb, yb, lam = sampling.mixup(xb, yb, _batch_rng(cfg.seed, self.epoch, i, 1),
                                         cfg.mixup_p, cfg.mixup_alpha)
            self.mixed[i] = lam < 1.0
            if cfg.weighted_loss:
                yb = sampling.weight_targets(yb, class_w)
            return xb, yb

        def on_epoch_end(self):  # see set_epoch
            pass

    return TrainBatches()


# ----------------------------------------------------------------------------- model


def build_classifier(backbone: str, weights, size: int, n_classes: int, dropout: float = 0.2):
    """backbone (RGB 0..255 -> pooled features) + dropout + softmax dense; returns (model, info)."""
    import keras

    from hemaedge.train.backbones import build_backbone

    features, info = build_backbone(backbone, weights, size)
    inp = keras.Input((size, size, 3), name="image")
    x = features(inp)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out, name=f"finetune_{backbone.replace('-', '_')}"), info


def init_from(cfg: FinetuneConfig, classes: list[str]):
    """A new classifier at cfg.size holding the weights of the fine-tuned model cfg.init.

    Progressive resizing: convolution, batch-norm and dense weights do not depend on the input
    size (global pooling before the head), so a model trained at 64 px continues at 80 px with
    the same weights. The source must have the same backbone and class list (its sidecar .json).
    """
    import keras

    src_path = Path(cfg.init)
    side = src_path.with_suffix(".json")
    if not side.is_file():
        raise FinetuneError(f"--init {src_path}: its sidecar {side.name} is missing (written by "
                            "`hemaedge train finetune`/`train snapshot`); it names the classes and weights")
    meta = json.loads(side.read_text())
    if list(meta.get("classes", [])) != list(classes):
        raise FinetuneError(f"--init {src_path}: its classes ({', '.join(meta.get('classes', []))}) differ from "
                            f"{cfg.data}'s ({', '.join(classes)}); start from a model of the same class list")
    if meta.get("backbone") not in (None, cfg.backbone):
        raise FinetuneError(f"--init {src_path}: a {meta['backbone']} model, not --backbone {cfg.backbone}")
    model, _ = build_classifier(cfg.backbone, None, cfg.size, len(classes), cfg.dropout)
    src = keras.models.load_model(src_path, compile=False)
    theirs, ours = src.get_weights(), model.get_weights()
    if len(theirs) != len(ours) or any(a.shape != b.shape for a, b in zip(theirs, ours)):
        raise FinetuneError(f"--init {src_path}: its weights do not fit a {cfg.backbone} classifier "
                            f"of {len(classes)} classes")
    model.set_weights(theirs)
    size = meta.get("input", {}).get("size")
    return model, f"{meta.get('weights', 'unknown weights')}, then fine-tuned as {src_path} ({size} px)"


def training_loss(cfg: FinetuneConfig, reduction: str | None = "sum_over_batch_size"):
    """The loss the model is trained with: categorical cross-entropy, or the focal loss
    -sum_c y_c (1 - p_c)^gamma log p_c (Lin et al. 2017, Keras' CategoricalFocalCrossentropy with
    alpha 1: no extra scale), which lets well-classified cells count less and the hard, often
    rare, ones more: an imbalance remedy that changes neither sampling nor class weights. Both
    take soft (mixed-up) and class-weighted targets (`sampling.weight_targets`)."""
    import keras

    if cfg.loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=float(cfg.focal_gamma), reduction=reduction)
    return keras.losses.CategoricalCrossentropy(reduction=reduction)


def compile_model(model, cfg: FinetuneConfig):
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay),
                  loss=training_loss(cfg),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])


def cosine_lr(epoch: int, cfg: FinetuneConfig) -> float:
    """Learning rate of a 0-based epoch: cosine annealing from lr to eta_min over T_max epochs
    (torch CosineAnnealingLR stepped once per epoch, as in the recipe)."""
    t_max = cfg.t_max or cfg.epochs
    return cfg.eta_min + (cfg.lr - cfg.eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2


def save_keras_atomic(model, path: Path):
    with atomic_path(path) as tmp:
        model.save(tmp)


# ----------------------------------------------------------------------------- files


def read_history(out: Path) -> list[dict]:
    path = out / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_history(out: Path, rows: list[dict]):
    from hemaedge.train.evaluate import write_text

    lines = [",".join(HISTORY_FIELDS)]
    lines += [",".join(f"{r.get(k, float('nan')):.6g}" if k != "epoch" else str(r[k]) for k in HISTORY_FIELDS)
              for r in rows]
    write_text(out / "history.csv", "\n".join(lines) + "\n")


def plot_curves(rows: list[dict], path: Path, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [r["loss"] for r in rows], "o-", label="train (weighted, mixup)")
    a1.plot(ep, [r["val_loss"] for r in rows], "o-", label="validation")
    a1.set_xlabel("epoch"), a1.set_ylabel("cross-entropy"), a1.legend(), a1.grid(alpha=0.3)
    a2.plot(ep, [r["accuracy"] for r in rows], "o-", label="train (augmented, mixup)")
    a2.plot(ep, [r["val_accuracy"] for r in rows], "o-", label="validation")
    a2.set_xlabel("epoch"), a2.set_ylabel("accuracy"), a2.legend(), a2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    from hemaedge.train.evaluate import save_figure

    save_figure(fig, path, dpi=110)


def sidecar(classes, cfg: FinetuneConfig, weights_desc: str, metrics: dict | None = None, **extra) -> dict:
    out = {"classes": list(classes), "input": extra.pop("contract").to_dict(), "weights": weights_desc,
           "backbone": cfg.backbone, "metrics": metrics or {}}
    out.update(extra)
    return out


def machine() -> str:
    cpu = cpu_model()
    import keras

    return (f"{os.cpu_count()}-core {platform.machine()} ({cpu}), keras {keras.__version__} backend "
            f"{keras.backend.backend()}, {_accelerator(keras.backend.backend())}")


def _accelerator(backend: str) -> str:
    """'GPU <name>' / 'no GPU' as the Keras backend sees it (recorded with every run)."""
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        elif backend == "jax":
            import jax

            gpus = [str(d) for d in jax.devices() if d.platform == "gpu"]
        elif backend == "torch":
            import torch

            gpus = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else []
        else:
            return "accelerator unknown"
    except Exception:  # a broken GPU stack must not stop training
        return "accelerator unknown"
    return f"GPU {gpus[0]}" if gpus else "no GPU"


# ----------------------------------------------------------------------------- training


def _check_resume(out: Path, cfg: FinetuneConfig):
    state_path = out / "state.json"
    state = json.loads(state_path.read_text())
    old = state.get("config", {})
    # Only these may change on resume: more epochs, bootstrap count.
    fixed = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("epochs", "bootstrap", "out", "data")}
    # settings added after a run started were at their then-behaviour; json turns tuples into lists
    then = {"extra_cells": [], "extra_share": 0.15, "extra_val": [],
            "normalize": "none", "augment": "full", "weighted_loss": True, "robust_pieces": list(ROBUST_PIECES),
            "scale_jitter": None, "loss": "cross-entropy", "focal_gamma": 2.0, "init": None, "one_lab_pass": False}
    norm = lambda v: list(v) if isinstance(v, tuple) else v
    diff = [k for k, v in fixed.items() if norm(old.get(k, then.get(k))) != norm(v)]
    if diff:
        raise FinetuneError(f"{state_path}: cannot resume with different settings ({', '.join(diff)}); "
                            "use the same options or a new --out folder")
    return state


def finetune(cfg: FinetuneConfig, resume: bool = False, log=None, command: str | None = None) -> dict:
    """Train (or resume), checkpoint, evaluate the best checkpoint; returns the metrics dict."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    import keras

    from hemaedge.train.evaluate import write_json

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "state.json").exists() and not resume:
        raise FinetuneError(f"{out}: already holds a run (state.json); pass --resume to continue it "
                            "or choose a new --out folder")
    state = _check_resume(out, cfg) if resume and (out / "state.json").exists() else None

    ds = open_data(cfg.data)
    classes = list(ds.classes)
    n_classes = len(classes)
    if n_classes < 2:
        raise FinetuneError(f"{cfg.data}: holds {n_classes} class ({', '.join(classes) or 'none'}); "
                            "a classifier needs images of at least two classes")
    t0 = time.time()
    x_train, y_train = load_split(ds, "train", InputContract(size=int(cfg.size)), cfg.limit, raw=True)
    # the colour reference is part of the run: a resumed run keeps the one it started with
    reference = state.get("normalize") if state else colour_reference(x_train, cfg)
    contract = cfg.contract(reference)
    x_val, y_val = load_split(ds, "val", contract, cfg.limit)
    present = sorted({classes[i] for i in np.unique(y_train)}) if len(y_train) else []
    if len(present) < 2:
        raise FinetuneError(f"{cfg.data}: the train split holds images of {len(present)} class "
                            f"({', '.join(present) or 'none'}); a classifier needs at least two")
    log(f"data: {cfg.data} classes={n_classes} train={len(y_train)} val={len(y_val)} "
        f"({contract.preprocess}, normalize {cfg.normalize}, {contract.size}px) in {time.time() - t0:.0f}s")
    class_w = sampling.class_weights(y_train, n_classes)
    extra = extra_val = None
    extra_sources = []
    if cfg.extra_cells:
        images, labels, extra_sources = other_microscope_cells(cfg.extra_cells, classes, contract, prepared=False)
        extra = (images, labels)
        log(f"extra cells: {len(extra[1])} from {len(cfg.extra_cells)} source(s), {cfg.extra_share:.0%} of every "
            f"epoch ({', '.join(f'{k} {v}' for src in extra_sources for k, v in src['per_class'].items())})")
    if cfg.extra_val:
        extra_val = other_microscope_cells(cfg.extra_val, classes, contract, prepared=True)[:2]
        log(f"extra val: {len(extra_val[1])} cells; the best epoch is chosen on the mean of both val accuracies")
    # fixed un-augmented training images for the per-epoch plain loss (train_eval_loss)
    probe_idx = np.random.default_rng([cfg.seed, 99]).choice(len(y_train), min(512, len(y_train)), replace=False)
    x_probe = np.stack([apply_preprocess(img, contract) for img in x_train[probe_idx]]).astype(np.float32)
    y_probe = y_train[probe_idx]

    if state:
        model = keras.models.load_model(out / "last.keras")
        start_epoch, best_acc = int(state["epoch"]), float(state.get("best_score", state.get("best_val_accuracy")))  # older runs: val accuracy
        weights_desc = state["weights"]
        rows = read_history(out)[:start_epoch]
        log(f"resuming after epoch {start_epoch} (best {'score' if cfg.extra_val else 'val accuracy'} {best_acc:.4f})")
    else:
        keras.utils.set_random_seed(cfg.seed)
        if cfg.init:
            model, weights_desc = init_from(cfg, classes)
        else:
            model, info = build_classifier(cfg.backbone, cfg.weights, cfg.size, n_classes, cfg.dropout)
            weights_desc = info["weights"]
        compile_model(model, cfg)
        start_epoch, best_acc, rows = 0, -1.0, []
        log(f"model: {cfg.backbone}, weights: {weights_desc}, {model.count_params():,} parameters")

    if start_epoch >= cfg.epochs:
        log(f"nothing to train: {start_epoch} epochs done (--epochs {cfg.epochs})")
    else:
        train_seq = _make_train_sequence(x_train, y_train, n_classes, cfg, class_w, start_epoch, contract, extra)
        probe_batches = make_probe_batches(x_train, y_train, n_classes, cfg, class_w, contract)
        y_val_1h = sampling.one_hot(y_val, n_classes)
        ctx = {"best": best_acc, "t": time.time()}

        class Checkpoint(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                keras.utils.set_random_seed(cfg.seed + 1000 * (epoch + 1))  # dropout etc.
                self.model.optimizer.learning_rate.assign(cosine_lr(epoch, cfg))
                ctx["t"] = time.time()
                train_seq.set_epoch(epoch)

            def on_train_batch_end(self, batch, logs=None):
                if (batch + 1) % 50 == 0:  # a sign of life on slow CPUs
                    log(f"  batch {batch + 1}/{len(train_seq)} loss {float((logs or {}).get('loss', 0)):.4f} "
                        f"({time.time() - ctx['t']:.0f}s)")

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                row = {"epoch": epoch + 1, "lr": cosine_lr(epoch, cfg),
                       "loss": float(logs.get("loss", float("nan"))),
                       "accuracy": float(logs.get("accuracy", float("nan"))),
                       "val_loss": float(logs.get("val_loss", float("nan"))),
                       "val_accuracy": float(logs.get("val_accuracy", float("nan"))),
                       "seconds": time.time() - ctx["t"]}
                row.update(probe_losses(self.model, probe_batches, cfg))
                p = predict_proba(self.model, x_probe)
                row["train_eval_loss"] = float(-np.mean(np.log(np.clip(p[np.arange(len(p)), y_probe], 1e-12, 1.0))))
                row["score"] = row["val_accuracy"]
                if extra_val is not None:
                    row["extra_val_accuracy"] = float(np.mean(predict_proba(self.model, extra_val[0]).argmax(1)
                                                              == extra_val[1]))
                    row["score"] = (row["val_accuracy"] + row["extra_val_accuracy"]) / 2
                rows.append(row)
                if row["score"] > ctx["best"]:
                    ctx["best"] = row["score"]
                    save_keras_atomic(self.model, out / "best.keras")
                    write_json(out / "best.json", sidecar(classes, cfg, weights_desc,
                                                          {"val_accuracy": row["val_accuracy"]},
                                                          epoch=epoch + 1, contract=contract,
                                                          **({"extra_cells": extra_sources} if extra_sources else {})))
                save_keras_atomic(self.model, out / "last.keras")
                write_history(out, rows)
                write_json(out / "state.json", {"epoch": epoch + 1, "best_score": ctx["best"],
                                                "weights": weights_desc, "classes": classes,
                                                "normalize": contract.normalize,
                                                "config": dataclasses.asdict(cfg)})
                plot_curves(rows, out / "curves.png", f"{cfg.backbone} {cfg.size}px")
                log(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} (mixed {row['loss_mixed']:.4f}, "
                    f"clean {row['loss_clean']:.4f}, plain on train {row['train_eval_loss']:.4f}) "
                    f"acc {row['accuracy']:.4f} val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} "
                    + (f"extra_val_acc {row['extra_val_accuracy']:.4f} " if extra_val is not None else "") +
                    f"lr {row['lr']:.2e} ({row['seconds']:.0f}s)")

        model.fit(train_seq, validation_data=(x_val.astype(np.float32), y_val_1h),
                  validation_batch_size=64, epochs=cfg.epochs, initial_epoch=start_epoch,
                  callbacks=[Checkpoint()], verbose=0)

    return evaluate_best(cfg, ds, classes, contract, log, command)


PROBE_EPOCH = 10 ** 6  # the recipe batches of this (never trained) epoch are the loss probe


def make_probe_batches(x, y, n_classes, cfg, class_w, contract, n: int = 12) -> list:
    """(images, targets, mixed?) of `n` recipe batches: augmented, mixed, weighted as in training."""
    seq = _make_train_sequence(x, y, n_classes, cfg, class_w, PROBE_EPOCH, contract)
    out = []
    for i in range(min(n, len(seq))):
        xb, yb = seq[i]
        out.append((xb, yb, seq.mixed[i]))
    return out


def probe_losses(model, batches, cfg: FinetuneConfig) -> dict:
    """Mean recipe loss (the training loss, `training_loss`, on the batches' own targets) of the
    mixed and the untouched probe batches, in inference mode."""
    cce = training_loss(cfg)
    res = {True: [], False: []}
    for xb, yb, mixed in batches:
        res[mixed].append(float(cce(yb, predict_proba(model, xb))))
    return {"loss_mixed": float(np.mean(res[True])) if res[True] else float("nan"),
            "loss_clean": float(np.mean(res[False])) if res[False] else float("nan")}


def predict_proba(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0))


def evaluate_best(cfg: FinetuneConfig, ds, classes, contract, log=None, command=None) -> dict:
    """Val + test metrics of best.keras with the shared metrics; writes metrics.json, summary.md
    and model.keras (+ model.json): the best weights without optimizer state, for export."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    import keras

    from hemaedge.train.evaluate import (apply_temperature, compute_metrics, expected_calibration_error,
                                         fit_temperature, plot_confusion_matrix, write_json, write_text)

    out = Path(cfg.out)
    model = keras.models.load_model(out / "best.keras", compile=False)
    save_keras_atomic(model, out / "model.keras")  # uncompiled: no optimizer slots, a third the size
    side = json.loads((out / "best.json").read_text())
    contract = InputContract.from_dict(side["input"])  # the contract the checkpoint was trained with
    history = read_history(out)
    result = {"backbone": cfg.backbone, "weights": side["weights"], "input_size": cfg.size,
              "epochs_trained": len(history), "best_epoch": side.get("epoch"),
              "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "model_bytes": (out / "model.keras").stat().st_size,
              "parameters": int(model.count_params()),
              "train_seconds": sum(r["seconds"] for r in history),
              "history": history, "commands": [], "config": dataclasses.asdict(cfg)}
    if (out / "metrics.json").is_file():  # keep the commands of earlier (interrupted) invocations
        result["commands"] = list(json.loads((out / "metrics.json").read_text()).get("commands", []))
    if command:
        result["commands"].append(command)
    temperature = None
    for split in ("val", "test"):
        if split not in ds.splits:
            continue
        x, y = load_split(ds, split, contract, cfg.limit)
        proba = predict_proba(model, x)
        m = compute_metrics(y, proba, classes, bootstrap=cfg.bootstrap, seed=42)
        if split == "val":  # temperature, OOD statistics and domain reference: chosen on val only
            temperature = fit_temperature(y, proba)
            side.update(confidence_sections(ds, contract, cfg.limit, y, apply_temperature(proba, temperature),
                                            temperature))
            if side.get("extra_cells"):  # the second microscope is a colour reference of the domain check too
                from hemaedge.train.adapt import adapted_colours

                side["domain"]["colour"] = adapted_colours(side["extra_cells"], side["domain"]["colour"])
        if temperature is not None:
            m["ece_calibrated"] = expected_calibration_error(y, apply_temperature(proba, temperature))
            m["temperature"] = temperature
        result[split] = m
        if split == "test":
            plot_confusion_matrix(np.asarray(m["confusion_matrix"]), classes, out / "confusion_test.png",
                                  title=f"{cfg.backbone} {cfg.size}px, test")
        log(f"{split}: accuracy {m['accuracy']:.4f} macro F1 {m['macro_f1']:.4f} kappa {m['kappa']:.4f} "
            f"ECE {m['ece']:.4f} -> {m.get('ece_calibrated', float('nan')):.4f} at T={temperature or float('nan'):.3f}")
    if cfg.extra_val:
        x, y, _ = other_microscope_cells(cfg.extra_val, classes, contract, prepared=True)
        right = predict_proba(model, x).argmax(1) == y
        result["extra_val"] = {"accuracy": float(right.mean()), "n": int(len(y)), "paths": list(cfg.extra_val),
                               "per_class": {classes[k]: f"{int(right[y == k].sum())}/{int((y == k).sum())}"
                                             for k in np.unique(y)}}
        log(f"extra val: accuracy {right.mean():.4f} ({int(right.sum())} of {len(y)})")
    for k in ("output", "ood", "domain"):
        result[k] = side.get(k)
    write_json(out / "metrics.json", result)
    side["metrics"] = {k: {kk: result[k][kk] for kk in ("accuracy", "macro_f1", "kappa", "roc_auc_ovr",
                                                        "accuracy_ci95", "n")}
                       for k in ("val", "test") if k in result}
    write_json(out / "best.json", side)
    write_json(out / "model.json", side)
    write_text(out / "summary.md", summary_markdown(result))
    return result


def confidence_sections(ds, contract, limit: int | None, y_val, p_val_calibrated, temperature: float) -> dict:
    """The sidecar's (and so the bundle manifest's) `output.temperature`, `ood` and `domain`
    sections, from the validation split (and training colours)."""
    from hemaedge.edge.confidence import ood_section
    from hemaedge.edge.domain import domain_section

    labels = ds.split("train").labels
    idx = limit_per_class(labels, limit)[::10]  # every 10th training image: the colour reference
    x_train, _ = ds.load_images("train", size=contract.size, indices=idx)
    return {"output": {"temperature": round(float(temperature), 6), "temperature_fitted_on": "val"},
            "ood": ood_section(p_val_calibrated, y_val),
            "domain": domain_section(x_train, p_val_calibrated)}


def snapshot(run_dir, out_dir, log=print, bootstrap: int | None = None) -> dict:
    """Evaluate a run's current best checkpoint while it keeps training: copies best.keras,
    best.json, history.csv and state.json into `out_dir` (a frozen snapshot) and evaluates it
    there like a finished run (model.keras + model.json with the confidence sections,
    metrics.json, summary.md). The running training is not touched."""
    import shutil

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    state = json.loads((run_dir / "state.json").read_text())
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FinetuneError(f"{out_dir}: not empty; choose a new folder for the snapshot")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("best.keras", "best.json", "history.csv", "state.json", "curves.png"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
    conf = dict(state["config"])
    conf["out"] = str(out_dir)
    if bootstrap is not None:
        conf["bootstrap"] = bootstrap
    cfg = FinetuneConfig(**conf)
    cfg.validate()
    ds = open_data(cfg.data)
    side = json.loads((out_dir / "best.json").read_text())
    log(f"snapshot of {run_dir} after epoch {state['epoch']} (best epoch {side.get('epoch')})")
    return evaluate_best(cfg, ds, list(ds.classes), InputContract.from_dict(side["input"]), log,
                         command=f"hemaedge train snapshot {run_dir} --out {out_dir}")


def summary_markdown(r: dict) -> str:
    lines = [f"# Fine-tuned {r['backbone']} at {r['input_size']} px", "",
             f"* weights: {r['weights']}",
             f"* epochs trained: {r['epochs_trained']} (best validation epoch {r['best_epoch']}), "
             f"training time {r['train_seconds'] / 60:.1f} min on {r['machine']}",
             f"* model file: model.keras (float32, no optimizer state), {r['model_bytes'] / 1e6:.2f} MB, "
             f"{r.get('parameters', 0):,} parameters", ""]
    lines[-1:-1] = _extra_lines(r)
    for c in r.get("commands", []):
        lines[-1:-1] = [f"* command: `{c}`"]
    lines += ["| split | n | accuracy | 95% CI (bootstrap) | macro F1 | kappa | ROC AUC |",
              "|---|---|---|---|---|---|---|"]
    for split in ("val", "test"):
        if split in r:
            m = r[split]
            ci = m.get("accuracy_ci95")
            ci_s = f"{ci[0]:.4f}–{ci[1]:.4f}" if ci else "–"
            auc = m.get("roc_auc_ovr")
            lines.append(f"| {split} | {m['n']} | {m['accuracy']:.4f} | {ci_s} | {m['macro_f1']:.4f} | "
                         f"{m['kappa']:.4f} | {auc if auc is None else f'{auc:.4f}'} |")
    return "\n".join(lines) + "\n"


def _extra_lines(r: dict) -> list[str]:
    """What a multi-domain run (--extra-cells / --extra-val) trained and chose on, for its tables."""
    c, lines = r.get("config") or {}, []
    if c.get("extra_cells"):
        lines.append(f"* **multi-domain**: also trained on {', '.join(f'`{p}`' for p in c['extra_cells'])} "
                     f"({c.get('extra_share', 0.15):.0%} of every epoch, class-balanced with a rare class capped)")
    if r.get("extra_val"):
        e = r["extra_val"]
        lines.append(f"* best epoch chosen on the mean of val accuracy and the accuracy on "
                     f"{', '.join(f'`{p}`' for p in e['paths'])} ({e['n']} cells; the chosen checkpoint "
                     f"{e['accuracy'] * 100:.2f} %, per class {', '.join(f'{k} {v}' for k, v in e['per_class'].items())})")
    return lines


def _gpu_note(machine_desc: str) -> str:
    """', no GPU' / ', GPU' from a run's machine description ('' when the run did not record it)."""
    if machine_desc.endswith("no GPU"):
        return ", no GPU"
    return ", GPU" if ", GPU " in machine_desc else ""


def publish(run_dir, prefix, date: str | None = None) -> list[Path]:
    """Results table for benchmarks/results from a finished run: PREFIX.md, PREFIX.json,
    PREFIX_curves.png and PREFIX_confusion.png (copies of the run's figures)."""
    import datetime as dt
    import shutil

    from hemaedge.train.evaluate import write_json, write_text

    run_dir, prefix = Path(run_dir), Path(prefix)
    r = json.loads((run_dir / "metrics.json").read_text())
    # the day the run finished (older runs: metrics.json's time), not the day the table is collected
    date = date or r.get("date") or dt.datetime.fromtimestamp((run_dir / "metrics.json").stat().st_mtime,
                                                              dt.timezone.utc).date().isoformat()
    cores = r["machine"].split("-core", 1)[0] if "-core" in r["machine"] else "?"
    t = r.get("test", {})
    ci = t.get("accuracy_ci95")
    row = {"backbone": r["backbone"], "weights": r["weights"], "input_size": r["input_size"],
           "epochs": r["epochs_trained"], "best_epoch": r["best_epoch"], "hardware": r["machine"],
           "training_minutes": round(r["train_seconds"] / 60, 1), "test_n": t.get("n"),
           "test_accuracy": t.get("accuracy"), "test_accuracy_ci95": ci, "macro_f1": t.get("macro_f1"),
           "kappa": t.get("kappa"), "roc_auc_ovr": t.get("roc_auc_ovr"),
           "val_accuracy": r.get("val", {}).get("accuracy"),
           "size_mb": round(r["model_bytes"] / 1e6, 2), "parameters": r.get("parameters"),
           "ece_test": t.get("ece"), "ece_test_calibrated": t.get("ece_calibrated"),
           "temperature": t.get("temperature"),
           "date": date, "commands": r.get("commands", [])}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_json(prefix.with_suffix(".json"), {"rows": [row], "per_class_test": t.get("per_class"),
                                             "history": r.get("history"), "config": r.get("config"),
                                             "extra_val": r.get("extra_val")})
    figures = []
    for src, suffix in (("curves.png", "_curves.png"), ("confusion_test.png", "_confusion.png")):
        if (run_dir / src).is_file():
            dst = prefix.with_name(prefix.name + suffix)
            shutil.copyfile(run_dir / src, dst)
            figures.append(dst)
    ci_s = f"{ci[0] * 100:.2f}–{ci[1] * 100:.2f}" if ci else "–"
    md = [f"# Fine-tuning on {Path(r['config']['data']).name} (official split)", "",
          f"Measured {date} on {row['hardware']}.", "",
          "| backbone | weights | input | epochs (best) | hardware | training time | test accuracy % "
          "(95% bootstrap CI) | macro F1 | kappa | size MB |",
          "|---|---|---|---|---|---|---|---|---|---|",
          f"| {row['backbone']} | {row['weights'].split(' (')[0]} | {row['input_size']} px | {row['epochs']} "
          f"({row['best_epoch']}) | {cores}-core CPU{_gpu_note(r['machine'])} | {row['training_minutes']} min | "
          f"{row['test_accuracy'] * 100:.2f} ({ci_s}) | {row['macro_f1']:.4f} | {row['kappa']:.4f} | "
          f"{row['size_mb']} |", "",
          f"* weights: {row['weights']}",
          f"* test set: n = {row['test_n']}; validation accuracy of the chosen checkpoint "
          f"{(row['val_accuracy'] or 0) * 100:.2f} %; macro ROC AUC {row['roc_auc_ovr']}",
          f"* size: float32 `.keras` without optimizer state, {row['parameters']:,} parameters",
          *([f"* calibration: expected calibration error on test {row['ece_test'] * 100:.2f} % raw, "
             f"{row['ece_test_calibrated'] * 100:.2f} % with the temperature T = {row['temperature']:.3f} "
             "fitted on val"] if row.get("ece_test_calibrated") is not None else []),
          *_extra_lines(r),
          *[f"* command: `{c}`" for c in row["commands"]], ""]
    extra = bool(r.get("extra_val"))
    md += ["| epoch | lr | train loss | train acc | val loss | val acc |" + (" extra val acc | score |" if extra else "")
           + " seconds |", "|---|---|---|---|---|---|" + ("---|---|" if extra else "") + "---|"]
    for h in r.get("history", []):
        md.append(f"| {h['epoch']} | {h['lr']:.2e} | {h['loss']:.4f} | {h['accuracy']:.4f} | {h['val_loss']:.4f} | "
                  f"{h['val_accuracy']:.4f} |" + (f" {h['extra_val_accuracy']:.4f} | {h['score']:.4f} |" if extra else "")
                  + f" {h['seconds']:.0f} |")
    md += ["", "Per-class test results:", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, pc in (t.get("per_class") or {}).items():
        md.append(f"| {name} | {pc['precision']:.4f} | {pc['recall']:.4f} | {pc['f1']:.4f} | {pc['support']} |")
    md += ["", *[f"![{f.stem}]({f.name})" for f in figures], ""]
    write_text(prefix.with_suffix(".md"), "\n".join(md))
    return [prefix.with_suffix(".md"), prefix.with_suffix(".json"), *figures]
