"""Adapt a classifier to a new microscope from a few hundred corrected cells, on the CPU, in minutes.

    new cells (ImageFolder trees, or the reviewed cells of runs with saved crops)
      -> stratified held-out part (chooses the epoch, reports the new-microscope accuracy)
    + a replay sample of the original training data (so the old microscope is not forgotten)
    -> fit (equal loss weight for the new cells and the replay sample; flips/right-angle
       rotations, since a cell has no up or down):
       "head" (default): only the classifier layer, on the frozen backbone's features, pulled
       toward the base's weights (train/adapt_head.py; seconds, the old features untouched);
       "tail": the classifier head and the last blocks of the backbone by SGD (BatchNorm frozen)
    -> the epoch / step with the best held-out accuracy -> model.keras + model.json
    -> an int8 bundle ("tflite-int8-mixed", like the default) whose manifest records where it
       came from (base digest, data, counts) and the before/after accuracy on the held-out new
       cells, on PBC val and on any extra test set.

Pixels: every image goes through `prepare_batch` with the base model's input contract, the
code the device runs. Crops saved by `hemaedge edge run --save-crops` are already at the
model's input side, before preprocessing, exactly as the device saw them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemaedge.edge.bundle import sha256_file
from hemaedge.edge.errors import DataError, UsageError
from hemaedge.edge.preprocess import apply_preprocess, batch_tensor, prepare_batch, read_image_rgb, resize
from hemaedge.edge.tta import VIEW_SETS, bundle_views, predict_views
from hemaedge.train import sampling
from hemaedge.train.adapt_head import OldMicroscopeWatch

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "tflite-int8-mixed"
# "dihedral": random flips / right-angle rotations only; the others are the fine-tuning recipe's
# presets (train/finetune_augment.py: "robust" adds another microscope's stain, white balance, blur...).
AUGMENTS = ("dihedral", "light", "full", "robust")
# BatchNorm statistics before fitting: "frozen" keeps the base's; "new" re-estimates them on the new
# training cells (AdaBN: label-free, adapts to the new microscope's colour and blur, may cost the old
# one); "mixed" re-estimates them on the new training cells and as many replay images together.
BN_MODES = ("frozen", "new", "mixed")
# What is fitted: "tail" = the classifier head and the last blocks, by SGD on the images;
# "head" = only the classifier layer, on the frozen backbone's features (train/adapt_head.py).
FITS = ("tail", "head")
# Per-fit defaults of the settings left unset (None). Chosen on BCCD train cells over three 100/92
# splits (benchmarks/history/adapt-keras-source/adapt_recipes.md): the head fit with a 12x replay sample and half the
# replay targets from the base's answers matched the tail fit's accuracy and kept PBC val within
# 0.5 pt; the tail fit's SGD pays per replay image, so it keeps its smaller sample.
FIT_DEFAULTS = {"head": {"replay_ratio": 12.0, "distill": 0.5, "max_old_drop": 0.005},
                "tail": {"replay_ratio": 2.0, "distill": 0.0, "max_old_drop": 1.0}}
# max_old_drop 0.005 for --fit head: on BCCD train cells (3 splits of 100 to adapt on, 92 to compare)
# the development accuracy stayed 0.833 vs 0.830 and the PBC val change went from -0.41 +- 0.29 to
# -0.25 +- 0.03 pt (benchmarks/results/adapt_recipes.md); --fit tail was not measured with it (1.0: not watched)


@dataclass
class AdaptConfig:
    base: str
    data: list[str]
    out: str
    replay: str | None = None          # original training data (a tree/npz with a train split)
    pbc_val: str | None = None         # a data set whose val split is PBC val (default: replay's)
    test: list[str] = field(default_factory=list)  # extra labelled trees to report on (e.g. BCCD test)
    limit: int | None = None           # use at most this many new cells (seeded random subset)
    holdout: float = 0.2               # share of the new cells held out to choose and report on
    replay_ratio: float | None = None  # replay images per new training cell (at least `replay_min`); None: FIT_DEFAULTS
    replay_min: int = 128
    replay_pool: int = 0               # draw each epoch's replay images afresh from this many (0: one fixed sample)
    new_weight: float = 0.5            # share of the loss carried by the new cells (the rest: the replay sample)
    augment: str = "dihedral"          # one of AUGMENTS, for new and replay images alike
    blocks: int = 2                    # trailing backbone blocks trained with the head
    distill: float | None = None       # share of each replay image's target from the base's own output (LwF); None: FIT_DEFAULTS
    bn: str = "frozen"                 # BatchNorm statistics: one of BN_MODES
    balance: bool = False              # weight the new cells so every class of them carries the same loss
    fit: str = "head"                  # one of FITS
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-4
    seed: int = 0
    eval_limit: int | None = None      # at most this many images per class of PBC val (quick runs)
    calib_count: int = 128
    export: bool = True
    run_cells: str = "reviewed"        # from runs: "reviewed" cells only, or "all" (model labels kept)
    views: str = "auto"                # test-time views of the adapted bundle: "auto" = the base bundle's
    # The old microscope watched while fitting: `old_check` images of the replay data's train split,
    # kept out of the replay sample; a fit whose accuracy on them falls more than `max_old_drop`
    # (a share, 0.005 = 0.5 pt) below the base's is not chosen, however well it does on the new cells
    # (1: not watched; None: FIT_DEFAULTS)
    max_old_drop: float | None = None
    old_check: int = 800

    def resolved(self) -> "AdaptConfig":
        """A copy with the unset settings filled in from FIT_DEFAULTS for its fit."""
        if self.fit not in FITS:
            raise UsageError(f"--fit {self.fit!r}: expected one of {', '.join(FITS)}")
        unset = {k: v for k, v in FIT_DEFAULTS[self.fit].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **unset)

    def validate(self):
        if not self.data:
            raise UsageError("give at least one --data folder (a class-folder tree or a run folder)")
        if not 0 < self.holdout < 0.9:
            raise UsageError(f"--holdout {self.holdout}: expected a fraction between 0 and 0.9")
        if self.epochs < 0 or self.batch_size < 1 or self.blocks < 0:
            raise UsageError("--epochs must be at least 0, --batch-size at least 1, --blocks at least 0")
        if self.bn not in BN_MODES:
            raise UsageError(f"--bn {self.bn!r}: expected one of {', '.join(BN_MODES)}")
        if self.fit not in FITS:
            raise UsageError(f"--fit {self.fit!r}: expected one of {', '.join(FITS)}")
        if self.fit == "head" and (self.bn != "frozen" or self.augment != "dihedral"):
            raise UsageError("--fit head keeps the backbone as it is and uses every flip/rotation of each cell: "
                             "--bn and --augment apply to --fit tail only (leave them at frozen / dihedral)")
        if self.fit == "tail" and self.epochs == 0 and self.bn == "frozen":
            raise UsageError("--epochs 0 with --bn frozen would change nothing: give epochs, or --bn new|mixed "
                             "to re-estimate only the BatchNorm statistics")
        if not 0 <= self.distill < 1:
            raise UsageError(f"--distill {self.distill}: expected a share from 0 (off) to below 1")
        if self.augment not in AUGMENTS:
            raise UsageError(f"--augment {self.augment!r}: expected one of {', '.join(AUGMENTS)}")
        if not 0 < self.new_weight < 1:
            raise UsageError(f"--new-weight {self.new_weight}: expected a share between 0 and 1")
        if self.run_cells not in ("reviewed", "all"):
            raise UsageError(f"--run-cells {self.run_cells!r}: expected reviewed or all")
        if self.views != "auto" and self.views not in VIEW_SETS:
            raise UsageError(f"--views {self.views!r}: expected auto or one of {', '.join(VIEW_SETS)}")
        if self.max_old_drop is not None and not 0 <= self.max_old_drop <= 1:
            raise UsageError(f"--max-old-drop {self.max_old_drop}: expected a share from 0 to 1 (0.005 = 0.5 pt; "
                             "1: not watched)")
        if self.old_check < 1:
            raise UsageError(f"--old-check {self.old_check}: expected at least 1 image")


# ----------------------------------------------------------------------------- base model


def resolve_base(base, why_not_bundle: str = "") -> tuple[Path, dict]:
    """The Keras file to adapt, and what is known of its origin (a bundle gives its digest).

    Only `--fit tail`, or a bundle whose classifier cannot be refitted in place (`why_not_bundle`),
    needs a bundle's Keras source; `--fit head` adapts a TFLite bundle alone (train/adapt_bundle.py)."""
    from hemaedge.edge.store import manifest_digest

    base = Path(base)
    if base.is_dir() and (base / "manifest.json").is_file():
        manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
        src = manifest.get("source") or {}
        # an adapted bundle's source is its base bundle's model file, not a Keras model
        name = src.get("file") if src.get("kind", "keras") == "keras" else None
        for cand in ([base / name, base.parent / name] if name else []):
            if cand.is_file() and (not src.get("sha256") or sha256_file(cand) == src["sha256"]):
                return cand, {"bundle": str(base), "bundle_manifest_sha256": manifest_digest(base),
                              "inference": manifest.get("inference") or {}}
        what = why_not_bundle or "--fit tail retrains backbone blocks"
        raise UsageError(f"{base}: {what}, so adapting it needs the bundle's Keras source "
                         f"({name or 'not named'}, sha256 {str(src.get('sha256'))[:12]}...), which is not in or "
                         "next to the bundle; pass the .keras file (with its .json sidecar) as --base"
                         + ("" if why_not_bundle else ", or use --fit head, which adapts the bundle alone"))
    if not base.is_file():
        raise UsageError(f"{base}: no such model file or bundle folder")
    return base, {}


def resolved_views(base, override: str = "auto") -> tuple[str, tuple[int, ...]]:
    """The test-time views an adaptation of `base` runs: `override`, or for "auto" the base bundle's
    `inference.views` (a .keras base: its sidecar's, else one view)."""
    base = Path(base)
    if base.is_dir() and (base / "manifest.json").is_file():
        declared = json.loads((base / "manifest.json").read_text(encoding="utf-8")).get("inference")
    else:
        from hemaedge.export.source import read_sidecar

        declared = read_sidecar(resolve_base(base)[0]).get("inference")
    return bundle_views({"inference": declared or {}}, override)


def trainable_groups(backbone) -> list[tuple[str, list]]:
    """The backbone's layers grouped into blocks, in order: 'block7_*' -> block7, 'conv2'/'bn2' -> stage 2,
    every other weighted layer (stem, head conv) its own group. Only groups with weights are listed."""
    import re

    groups: list[tuple[str, list]] = []
    for layer in backbone.layers:
        m = re.match(r"^(block\d+)_", layer.name) or re.match(r"^[a-z]+?(\d+)$", layer.name)
        key = m.group(1) if m else (layer.name.split("_")[0] if layer.weights else None)
        if key is None:
            continue
        if groups and groups[-1][0] == key:
            groups[-1][1].append(layer)
        else:
            groups.append((key, [layer]))
    return [(k, ls) for k, ls in groups if any(layer.weights for layer in ls)]


def set_trainable(model, blocks: int) -> dict:
    """Head + the last `blocks` weighted blocks of the backbone train; BatchNorm stays frozen."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    for layer in model.layers:
        layer.trainable = not isinstance(layer, keras.Model) and bool(layer.weights)
    trained = [layer.name for layer in model.layers if layer.trainable]
    for backbone in nested:
        backbone.trainable = True
        groups = trainable_groups(backbone)
        keep = {id(layer) for _, ls in groups[len(groups) - blocks:] for layer in ls} if blocks else set()
        for layer in backbone.layers:
            layer.trainable = id(layer) in keep and not isinstance(layer, keras.layers.BatchNormalization)
            if layer.trainable and layer.weights:
                trained.append(f"{backbone.name}/{layer.name}")
    if not nested and blocks:
        # A flat model: the last `blocks` weighted non-BN layers before the head train too.
        weighted = [layer for layer in model.layers[:-1] if layer.weights
                    and not isinstance(layer, keras.layers.BatchNormalization)]
        for layer in weighted[-blocks:]:
            layer.trainable = True
            trained.append(layer.name)
    n_train = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return {"trained_layers": trained, "trainable_parameters": n_train, "parameters": int(model.count_params())}


# ----------------------------------------------------------------------------- data


@dataclass
class Cells:
    images: np.ndarray  # uint8 RGB (N, S, S, 3) at the model's input side
    labels: np.ndarray  # int64 (N,) in the base model's class order
    sources: list[dict]

    def __len__(self):
        return len(self.labels)

    def subset(self, idx) -> "Cells":
        idx = np.asarray(idx, dtype=np.int64)
        return Cells(self.images[idx], self.labels[idx], self.sources)


def _tree_cells(root: Path, classes: list[str], size: int) -> tuple[list, list, dict]:
    from hemaedge.train.data.readers import _read_files, _scan_flat_tree

    if (root / "train").is_dir():
        root = root / "train"  # a split tree: only its train split is for adapting
    present = tuple(c for c in classes if (root / c).is_dir())  # a lab need not see every class
    order, paths, labels, problems, _ = _scan_flat_tree(root, present or tuple(classes))
    if problems:
        raise DataError(problems[0] + f" (the base model's classes are {classes}; rename or remove the folder)")
    if not paths:
        raise DataError(f"{root}: no images in class folders ({{class}}/*.png)")
    images = _read_files(list(paths), size, None, False, "new cells")
    labels = [classes.index(order[k]) for k in labels]
    return list(images), labels, {"path": str(root), "kind": "image-folder", "cells": len(paths)}


def _run_cells(root: Path, classes: list[str], size: int, which: str) -> tuple[list, list, dict]:
    from hemaedge.edge.crops import CROPS_DIR
    from hemaedge.review.rundata import RunReview

    run = RunReview.open(root)
    images, labels, skipped = [], [], 0
    for c in run.cells:
        if c.current not in classes or c.crop is None or (which == "reviewed" and not c.reviewed):
            skipped += 1
            continue
        images.append(resize(read_image_rgb(root / CROPS_DIR / c.crop), size))
        labels.append(classes.index(c.current))
    if not images:
        raise DataError(f"{root}: no {'reviewed ' if which == 'reviewed' else ''}cells with saved crops "
                        "(run `hemaedge edge run --save-crops all`, then correct or confirm cells in `hemaedge review`)")
    return images, labels, {"path": str(root), "kind": "run", "cells": len(images), "cells_left_out": skipped,
                            "corrections_sha256": sha256_file(root / "corrections.csv")
                            if (root / "corrections.csv").is_file() else None}


def load_new_cells(paths, classes: list[str], size: int, run_cells: str = "reviewed") -> Cells:
    images, labels, sources = [], [], []
    for p in map(Path, paths):
        if not p.is_dir():
            raise DataError(f"{p}: no such folder (expected a class-folder tree or a run folder)")
        im, lb, src = _run_cells(p, classes, size, run_cells) if (p / "cells.csv").is_file() \
            else _tree_cells(p, classes, size)
        src["per_class"] = {classes[k]: int(v) for k, v in zip(*np.unique(lb, return_counts=True))}
        images += im
        labels += lb
        sources.append(src)
    return Cells(np.stack(images), np.asarray(labels, np.int64), sources)


def split_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices, stratified; a class with one cell goes to training."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_held = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        n_held = min(max(n_held, 1 if len(idx) > 2 else 0), len(idx) - 1)
        held += idx[:n_held].tolist()
        train += idx[n_held:].tolist()
    if not held:
        raise DataError(f"too few new cells ({len(labels)}) to hold any out; label more cells")
    return np.sort(train), np.sort(held)


def open_reference(path, classes: list[str]):
    """The original training data (replay, PBC val): its classes must be the base model's."""
    from hemaedge.train.data import open_dataset

    ds = open_dataset(path)
    missing = [c for c in ds.classes if c not in classes]
    if missing:
        raise DataError(f"{path}: classes {missing} are not among the base model's {classes}")
    return ds


def reference_split(ds, split: str, classes: list[str], size: int, per_class: int | None, seed: int) -> Cells:
    labels = ds.split(split).labels
    rng = np.random.default_rng(seed)
    if per_class is None:
        idx = np.arange(len(labels))
    else:
        idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class]
                                      for k in np.unique(labels)]))
    x, y = ds.load_images(split, size=size, indices=idx, progress=False)
    remap = np.asarray([classes.index(c) for c in ds.classes], np.int64)
    return Cells(x, remap[y], [{"path": str(ds.root), "split": split, "cells": int(len(idx))}])


def replay_sample(ds, classes, size, n: int, seed: int) -> Cells:
    """n images of the train split, every class equally represented where it can be."""
    labels = ds.split("train").labels
    per = max(1, int(np.ceil(n / len(np.unique(labels)))))
    cells = reference_split(ds, "train", classes, size, per, seed)
    if len(cells) > n:
        cells = cells.subset(np.sort(np.random.default_rng(seed + 1).permutation(len(cells))[:n]))
    return cells


def split_old_check(pool: Cells, n: int, seed: int) -> tuple[Cells, Cells]:
    """(replay sample, old-microscope check) from one pool: the check takes `n` of it, every class
    as equally as the pool allows, so the two never share an image."""
    rng = np.random.default_rng(seed + 5)
    classes = np.unique(pool.labels)
    per = int(np.ceil(n / max(1, len(classes))))
    pick = np.concatenate([rng.permutation(np.flatnonzero(pool.labels == c))[:per] for c in classes])
    pick = np.sort(rng.permutation(pick)[:n])
    rest = np.setdiff1d(np.arange(len(pool)), pick)
    return pool.subset(rest), pool.subset(pick)


# ----------------------------------------------------------------------------- training


def dihedral(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random flip / right-angle rotation per image (cells have no orientation)."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        k = int(rng.integers(8))
        img = np.rot90(img, k % 4)
        out[i] = img[:, ::-1] if k >= 4 else img
    return out


def predict(model, cells: Cells, contract, batch_size: int = 64, views=(0,)) -> np.ndarray:
    """The model's probabilities, averaged over test-time `views` (edge.tta) as on the device."""
    def one(x):
        return np.asarray(model.predict(x, verbose=0))

    chunks = [predict_views(one, prepare_batch(cells.images[s:s + batch_size], contract), views)
              for s in range(0, len(cells), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def accuracy(model, cells: Cells, contract, probabilities: np.ndarray | None = None, views=(0,)) -> dict:
    if not len(cells):
        return {"accuracy": None, "n": 0}
    p = predict(model, cells, contract, views=views) if probabilities is None else probabilities
    pred = p.argmax(1)
    per_class = {}
    for k in np.unique(cells.labels):
        m = cells.labels == k
        per_class[int(k)] = round(float((pred[m] == k).mean()), 4)
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(p)), cells.labels], 1e-7, 1))))
    return {"accuracy": round(float((pred == cells.labels).mean()), 4), "n": int(len(cells)),
            "loss": round(loss, 4), "per_class_recall": per_class}


def _digest(cells: Cells) -> str:
    """What a set of cells is (pixels and labels): a series of adaptations scores the same set once."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(cells.images).tobytes() + cells.labels.tobytes()).hexdigest()


def _named(metrics: dict, classes) -> dict:
    m = dict(metrics)
    if "per_class_recall" in m:
        m["per_class_recall"] = {classes[k]: v for k, v in m["per_class_recall"].items()}
    return m


def batchnorm_layers(model) -> list:
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += batchnorm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
    return out


def reestimate_batchnorm(model, images: np.ndarray, contract, max_images: int = 256) -> dict:
    """Replace every BatchNorm layer's moving mean/variance with the statistics of `images` (AdaBN).

    One forward pass in training mode with momentum 0 over (at most `max_images` of) the images:
    each layer sees its input normalised by the layers before it, as at inference afterwards."""
    layers = batchnorm_layers(model)
    if not layers:
        return {"batchnorm_layers": 0, "images": 0}
    x = prepare_batch(images[:max_images], contract)
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    try:
        for layer in layers:
            layer.momentum, layer.trainable = 0.0, True
        model(x, training=True)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return {"batchnorm_layers": len(layers), "images": int(len(x))}


def train_tail(model, contract, new: Cells, replay: Cells, held: Cells, cfg: AdaptConfig, logf,
               n_replay: int | None = None, replay_soft: np.ndarray | None = None, views=(0,),
               old_check: Cells | None = None) -> dict:
    """Fit head + last blocks; keep the epoch with the best held-out accuracy (then lowest loss)
    among those that lose at most `cfg.max_old_drop` on `old_check` (the old microscope's images).

    `replay` is the replay pool: each epoch trains on `n_replay` of it (default: all of it), drawn
    afresh, so a large pool shows the model many more of its old images at the same cost.
    `replay_soft`: the base model's probabilities on the replay pool; with `cfg.distill` > 0 each
    replay image's target is (1 - distill) x its label + distill x the base's answer (learning
    without forgetting: the old microscope's answers, doubts included, are what is kept)."""
    import keras

    n_classes = int(model.outputs[0].shape[-1])
    eye = np.eye(n_classes, dtype=np.float32)
    from hemaedge.train.finetune_augment import BatchAugmenter

    # The new cells carry `new_weight` of the total loss, the replay sample the rest, whatever their sizes.
    n_replay = len(replay) if n_replay is None else min(n_replay, len(replay))
    total = len(new) + n_replay
    w_new = cfg.new_weight * total / max(1, len(new)) if n_replay else 1.0
    w_rep = (1.0 - cfg.new_weight) * total / max(1, n_replay)
    w_new_cells = w_new * (sampling.capped_balance_weights(new.labels) if cfg.balance else np.ones(len(new), np.float32))
    targets_rep = eye[replay.labels]
    if cfg.distill and replay_soft is not None and len(replay):
        targets_rep = (1.0 - cfg.distill) * targets_rep + cfg.distill * replay_soft.astype(np.float32)
    # The recipe presets augment around the contract's preprocessing (camera stage, then
    # normalisation + CLAHE, then geometry), as the base model was trained.
    aug = None if cfg.augment == "dihedral" else \
        BatchAugmenter(cfg.augment, cfg.seed, preprocess=lambda im: apply_preprocess(im, contract))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.lr),
                  loss=keras.losses.CategoricalCrossentropy())
    best = {"epoch": 0, **accuracy(model, held, contract, views=views)}
    best_weights = model.get_weights()
    history = [{"epoch": 0, "held_out_accuracy": best["accuracy"], "held_out_loss": best["loss"], "seconds": 0.0}]
    watch = OldMicroscopeWatch.start(
        None if old_check is None else accuracy(model, old_check, contract, views=views)["accuracy"], cfg.max_old_drop)
    history[0].update(watch.entry(watch.base))
    logf(f"epoch 0 (base): held-out accuracy {best['accuracy']:.4f}")
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        pick = np.arange(len(replay)) if n_replay == len(replay) else np.sort(rng.permutation(len(replay))[:n_replay])
        rep = replay.subset(pick)
        images = np.concatenate([new.images, rep.images])
        if aug is None:
            images = dihedral(images, rng)
        targets = np.concatenate([eye[new.labels], targets_rep[pick]])
        weights = np.concatenate([w_new_cells, np.full(n_replay, w_rep, np.float32)])
        order = rng.permutation(len(targets))
        losses = []
        for i, s in enumerate(range(0, len(order), cfg.batch_size)):
            b = order[s:s + cfg.batch_size]
            x = prepare_batch(images[b], contract) if aug is None else batch_tensor(aug(images[b], epoch, i), contract)
            losses.append(float(model.train_on_batch(x, targets[b], sample_weight=weights[b])))
        m = accuracy(model, held, contract, views=views)
        old_acc = None if old_check is None else accuracy(model, old_check, contract, views=views)["accuracy"]
        secs = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4),
                        "held_out_accuracy": m["accuracy"], "held_out_loss": m["loss"], "seconds": round(secs, 1),
                        **watch.entry(old_acc)})
        logf(f"epoch {epoch}: loss {np.mean(losses):.4f}, held-out accuracy {m['accuracy']:.4f} "
             f"(loss {m['loss']:.4f}){watch.note(old_acc)}, {secs:.0f} s")
        if watch.allows(old_acc) and (m["accuracy"], -m["loss"]) > (best["accuracy"], -best["loss"]):
            best = {"epoch": epoch, **m, "old_accuracy": old_acc}
            best_weights = model.get_weights()
    model.set_weights(best_weights)
    return {"chosen_epoch": best["epoch"], "history": history,
            **watch.summary(best.get("old_accuracy", watch.base))}


def fit_head_only(head: dict, extractor, contract, new: Cells, replay: Cells, held: Cells, cfg: AdaptConfig,
                  logf, n_replay: int, old_check: Cells | None = None) -> tuple[dict, dict]:
    """--fit head: the classifier layer refitted on features (every flip/rotation of the new training
    cells, the replay sample as it is), new cells carrying `new_weight` of the loss. Returns
    (trainable, fit) in `train_tail`'s terms, fit with the chosen w, b (the caller puts them in the model)."""
    from hemaedge.train import adapt_head

    n_classes = head["w0"].shape[1]
    eye = np.eye(n_classes, dtype=np.float32)
    views = adapt_head.dihedral_views(new.images)
    f_new = adapt_head.features(extractor, views, contract)
    y_new = np.tile(new.labels, len(views) // max(1, len(new)))
    rep = replay.subset(np.arange(min(n_replay, len(replay)))) if len(replay) else replay
    f_rep = adapt_head.features(extractor, rep.images, contract) if len(rep) else \
        np.zeros((0, f_new.shape[1]), np.float32)
    t_rep = eye[rep.labels]
    if cfg.distill and len(rep):  # learning without forgetting, from the base's own answers
        t_rep = (1 - cfg.distill) * t_rep + cfg.distill * adapt_head.probabilities(f_rep, head["w0"], head["b0"])
    w_new = (sampling.capped_balance_weights(y_new) if cfg.balance else np.ones(len(y_new), np.float32)) / max(1, len(y_new))
    w_new = w_new * (cfg.new_weight if len(rep) else 1.0)
    w_rep = np.full(len(rep), (1 - cfg.new_weight) / max(1, len(rep)), np.float32)
    logf(f"head fit on {len(f_new)} views of {len(new)} new cells + {len(rep)} replay images")
    fit = adapt_head.fit_head(np.concatenate([f_new, f_rep]), np.concatenate([eye[y_new], t_rep]),
                              np.concatenate([w_new, w_rep]), head["w0"], head["b0"],
                              head["features"]["held_out"], held.labels, logf=logf,
                              old=None if old_check is None else (head["features"]["old_check"], old_check.labels,
                                                                  cfg.max_old_drop))
    fit["chosen_epoch"] = fit["chosen_step"]  # the table's "chosen" column: a step of the head fit
    name = head["layer"].name if head["layer"] is not None else "FULLY_CONNECTED (classifier)"
    trainable = {"trained_layers": [name], "trainable_parameters": int(fit["w"].size + fit["b"].size),
                 "parameters": int(head["backbone_parameters"] + fit["w"].size + fit["b"].size),
                 "views_per_new_cell": len(views) // max(1, len(new))}
    return trainable, fit


def min_right_answers(quantile: float) -> int:
    """The fewest right answers from which a reference's `quantile` level is more than its top score.

    With n scores the empirical q-quantile (nearest rank) is the ceil(q n)-th smallest, which is the
    largest score until n (1 - q) >= 1: only from n >= 1 / (1 - q) does at least one right answer lie
    above the level, so that it says where the reference's answers end rather than repeating its
    single least sure one. 20 for the review level (95th percentile), 200 for the unidentified level
    (99.5th)."""
    return int(np.ceil(1.0 / (1.0 - quantile) - 1e-9))


def levels_over_references(per: dict[str, dict]) -> dict:
    """The OOD levels of a model that serves several microscopes: each tier (review `threshold`,
    `unidentified_threshold`) is the most lenient of that tier over the references that have enough
    right answers to set it (`min_right_answers`: 20 for the review level, 200 for the unidentified
    level; where none has, the one with the most right answers), so a confident answer on either
    microscope is in distribution and no level is stricter than a reference's own. `level_choice`
    records, per tier, which reference set it, the right answers of each and why.

    Bugs fixed 2026-12-02 (issue #14): both tiers were copied from the reference with the larger
    review level, usually the 6-38 held-out new cells, whose 99.5th percentile is merely their
    largest score (0.09 after 25 cells against PBC val's 0.52): the device then called 15 of 64 right
    BCCD answers *unidentified*. Then each tier was the larger over the references however few their
    right answers, so 19 held-out cells set a review level of 0.52 (their top score) and most wrong
    answers on unseen new cells went unflagged. The other statistics (`n`, `mean`, ...) are those of
    the reference that set the review level (`fitted_on`); `unidentified_fitted_on` names the other tier's."""
    def choose(key: str, quantile_key: str, default_q: float) -> tuple[str, dict]:
        have = {k: int(per[k].get("n_right", per[k].get("n", 0))) for k in per if per[k].get(key) is not None}
        need = min_right_answers(max(float(per[k].get(quantile_key, default_q)) for k in have))
        eligible = [k for k in have if have[k] >= need] or [max(have, key=have.get)]
        pick = max(eligible, key=lambda k: per[k][key])
        left_out = [k for k in have if k not in eligible]
        why = (f"the most lenient level of the references with at least {need} right answers"
               if have[pick] >= need else f"no reference has {need} right answers: the one with the most")
        if left_out:
            why += "; " + ", ".join(f"{k} ({have[k]} right) left out" for k in left_out)
        return pick, {"fitted_on": pick, "minimum_right_answers": need, "right_answers": have, "why": why}

    from hemaedge.edge.confidence import DEFAULT_QUANTILE, UNIDENTIFIED_QUANTILE

    review, choice = choose("threshold", "quantile", DEFAULT_QUANTILE)
    out = {**per[review], "fitted_on": review, "level_choice": {"review": choice}}
    if any(per[k].get("unidentified_threshold") is not None for k in per):
        unid, choice = choose("unidentified_threshold", "unidentified_quantile", UNIDENTIFIED_QUANTILE)
        out.update(unidentified_threshold=per[unid]["unidentified_threshold"], unidentified_fitted_on=unid)
        out["level_choice"]["unidentified"] = choice
        out.pop("wrong_above_unidentified_threshold", None)  # it was the review reference's, at its own level
    return out


def confidence_sections(probabilities: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                        base_sidecar: dict) -> dict:
    """The adapted model's own `output.temperature`, `ood` and (OOD part of) `domain` sections.

    The base's would be stale: adapting moves the model's confidences, and a threshold fitted to the
    base makes many right answers on the new microscope "unidentified". Temperature: fitted on all
    the reference cells (PBC val and the held-out new cells) together. OOD threshold: the base
    recipe's 95th percentile (review) and 99.5th (unidentified) of correctly classified cells' scores,
    per microscope, each tier the larger over the microscopes (`levels_over_references`). The colour
    reference stays the base's (its training images), as the device's domain check has one reference colour."""
    from hemaedge.edge.confidence import ood_scores, ood_section
    from hemaedge.edge.domain import ood_limit
    from hemaedge.train.evaluate import apply_temperature, fit_temperature

    names = [k for k in probabilities if len(probabilities[k])]
    p_all = np.concatenate([probabilities[k] for k in names])
    y_all = np.concatenate([labels[k] for k in names])
    t = fit_temperature(y_all, p_all)
    per = {k: ood_section(apply_temperature(probabilities[k], t), labels[k]) for k in names}
    ood = {**levels_over_references(per), "per_reference": per}
    out = {"output": {**(base_sidecar.get("output") or {}), "temperature": round(float(t), 6),
                      "temperature_fitted_on": "+".join(names)}, "ood": ood}
    if base_sidecar.get("domain"):
        # the run-mean OOD limit from the same calibrated reference probabilities; colours: the base's
        out["domain"] = {**base_sidecar["domain"], "ood": ood_limit(ood_scores(apply_temperature(p_all, t)))}
    return out


def adapted_colours(sources: list[dict], colour: dict) -> dict:
    """The domain check's colour section with the new microscope added as a reference (`also`).

    A run folder's summary.json holds the median frame colour the device measured on that run
    (`domain.colour`); it becomes a reference with the training slides' spreads (one run gives a
    median, not a spread), so a run on the microscope the model was adapted to is no longer
    "unlike" by colour, while the old microscope stays a reference too. Class-folder trees are
    crops, not frames, so they add no colour reference."""
    also = [r for r in colour.get("also") or []]
    for src in sources:
        summary = Path(src["path"]) / "summary.json"
        if src.get("kind") != "run" or not summary.is_file():
            continue
        run = (json.loads(summary.read_text(encoding="utf-8")).get("domain") or {}).get("colour") or {}
        if run.get("background") and run.get("cells"):
            also.append({"background": run["background"], "cells": run["cells"],
                         "background_spread": colour["background_spread"], "cells_spread": colour["cells_spread"],
                         "from": Path(src["path"]).name})
    return {**colour, "also": also} if also else colour


# ----------------------------------------------------------------------------- entry point


def adapt(cfg: AdaptConfig, logf=log.info, command: str | None = None, before_cache: dict | None = None) -> dict:
    """Run one adaptation; writes OUT/adapt.json and OUT/bundle (int8), and from a Keras base
    OUT/model.keras + model.json.

    `--fit head` from a TFLite bundle (the packaged default) needs no Keras source: the features are
    the bundle's own int8 backbone's and the new head is written into a copy of its model file
    (train/adapt_bundle.py). Either kind of base offers the same methods (train/adapt_keras.py), so
    this function does not branch on it. `before_cache` (a dict kept by the caller) remembers the base model's
    accuracy on PBC val and the test sets between adaptations of the same base, which a series of
    runs need only once.
    """
    from hemaedge.edge.atomic import atomic_write_json
    from hemaedge.train.finetune import machine

    cfg = cfg.resolved()
    cfg.validate()
    t_start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty: choose a new --out folder (nothing is overwritten)")
    from hemaedge.train.adapt_keras import open_base

    base = open_base(cfg)  # a Keras source, or with --fit head a TFLite bundle alone
    logf(base.describe())
    model, base_sha, base_sidecar = base.model, base.sha256, base.sidecar()
    classes, contract = list(base.classes), base.contract
    size = contract.size

    cells = load_new_cells(cfg.data, classes, size, cfg.run_cells)
    if cfg.limit and cfg.limit < len(cells):
        cells = cells.subset(np.sort(np.random.default_rng(cfg.seed).permutation(len(cells))[:cfg.limit]))
    tr_idx, ho_idx = split_holdout(cells.labels, cfg.holdout, cfg.seed)
    new, held = cells.subset(tr_idx), cells.subset(ho_idx)
    logf(f"new cells: {len(cells)} ({len(new)} to train, {len(held)} held out) from {len(cells.sources)} source(s)")

    replay_ds = open_reference(cfg.replay, classes) if cfg.replay else None
    n_replay = max(cfg.replay_min, int(round(cfg.replay_ratio * len(new)))) if replay_ds else 0
    watched = cfg.max_old_drop is not None and cfg.max_old_drop < 1
    n_pool = max(n_replay, cfg.replay_pool)
    replay = replay_sample(replay_ds, classes, size, n_pool + (cfg.old_check if watched else 0), cfg.seed) \
        if replay_ds else Cells(np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64), [])
    old_check = None
    # the check takes only what the replay sample leaves (all of cfg.old_check when the data has it)
    n_check = min(cfg.old_check, len(replay) - n_pool) if replay_ds and watched else 0
    if watched and n_check < 1:
        logf("note: the old microscope is not watched (--max-old-drop): it needs --replay data with train images "
             "beside the replay sample")
    elif n_check:  # the old microscope's check images: out of the replay sample, so never trained on
        replay, old_check = split_old_check(replay, n_check, cfg.seed)
        logf(f"old microscope watched on {len(old_check)} replay-data train images (a fit may lose at most "
             f"{100 * cfg.max_old_drop:.2g} pt on them)")
    if not replay_ds:
        logf("note: no --replay data: the model may forget the original microscope")
    pbc_src = cfg.pbc_val or cfg.replay
    pbc_val = reference_split(open_reference(pbc_src, classes), "val", classes, size, cfg.eval_limit, cfg.seed) \
        if pbc_src else None
    tests = {Path(t).name: load_new_cells([t], classes, size, "reviewed") for t in cfg.test}

    cache = before_cache if before_cache is not None else {}
    # The adapted bundle runs the base bundle's test-time views (the packaged default: flips), so the
    # held-out choice, the before/after figures and the OOD levels are all of view-averaged answers.
    views_name, views = resolved_views(cfg.base, cfg.views)
    logf(f"test-time views: {views_name} ({len(views)} per cell)")

    head = None
    if cfg.fit == "head":
        from hemaedge.train import adapt_head

        layer, extractor, w0, b0, backbone_parameters = base.head_parts()
        head = {"layer": layer, "w0": w0, "b0": b0, "features": {}, "backbone_parameters": int(backbone_parameters)}

        def feats(name, cells_, cached=True):
            # the backbone's features of a set, computed once (and kept across a series for fixed sets)
            key = (base_sha, "features", views, name, _digest(cells_))
            if not cached:
                return adapt_head.view_features(extractor, cells_.images, contract, views)
            if key not in cache:
                cache[key] = adapt_head.view_features(extractor, cells_.images, contract, views)
            return cache[key]

    def base_probabilities(name, cells_, cached=True):
        """The base's answers on a set: from its features with --fit head (needed later), else None."""
        if head is None:
            return None
        f = head["features"][name] = feats(name, cells_, cached)
        return adapt_head.view_probabilities(f, head["w0"], head["b0"])

    def base_accuracy(name, cells_):
        key = (base_sha, views, name, _digest(cells_))
        p = base_probabilities(name, cells_)
        if key not in cache:
            cache[key] = _named(accuracy(model, cells_, contract, p, views), classes)
        return cache[key]

    before = {"held_out": _named(accuracy(model, held, contract, base_probabilities("held_out", held, False),
                                          views), classes)}
    if pbc_val is not None:
        before["pbc_val"] = base_accuracy(f"pbc_val:{pbc_src}", pbc_val)
    for k, v in tests.items():
        before[f"test:{k}"] = base_accuracy(f"test:{k}", v)
    logf("before: " + ", ".join(f"{k} {v['accuracy']}" for k, v in before.items()))

    # The base's own answers on the replay pool, before anything changes (distillation targets)
    replay_soft = predict(model, replay, contract) if cfg.distill and len(replay) and head is None else None
    bn_info = {"mode": cfg.bn}
    if cfg.bn != "frozen":
        pool = new.images if cfg.bn == "new" or not len(replay) else np.concatenate(
            [new.images, replay.images[np.random.default_rng(cfg.seed + 3).permutation(len(replay))[:len(new)]]])
        bn_info.update(reestimate_batchnorm(model, pool, contract))
        logf(f"BatchNorm statistics re-estimated on {bn_info['images']} images ({cfg.bn})")
    t_train = time.perf_counter()
    if head is None:
        trainable = set_trainable(model, cfg.blocks)
        logf(f"training {trainable['trainable_parameters']:,} of {trainable['parameters']:,} parameters "
             f"({len(trainable['trained_layers'])} layers)")
        fit = train_tail(model, contract, new, replay, held, cfg, logf, n_replay, replay_soft, views, old_check)

        def after_probabilities(name, cells_):
            return predict(model, cells_, contract, views=views)
    else:
        if old_check is not None:
            head["features"]["old_check"] = feats("old_check", old_check)
        trainable, fit = fit_head_only(head, extractor, contract, new, replay, held, cfg, logf, n_replay, old_check)
        w, b = fit.pop("w"), fit.pop("b")
        base.set_head(w, b)

        def after_probabilities(name, cells_):  # the backbone is unchanged: its features are still valid
            return adapt_head.view_probabilities(head["features"][name], w, b)
    train_s = time.perf_counter() - t_train
    p_after = {"held_out": after_probabilities("held_out", held)}
    after = {"held_out": _named(accuracy(model, held, contract, p_after["held_out"]), classes)}
    if pbc_val is not None:
        p_after["pbc_val"] = after_probabilities(f"pbc_val:{pbc_src}", pbc_val)
        after["pbc_val"] = _named(accuracy(model, pbc_val, contract, p_after["pbc_val"]), classes)
    for k, v in tests.items():
        after[f"test:{k}"] = _named(accuracy(model, v, contract, after_probabilities(f"test:{k}", v)), classes)
    logf("after: " + ", ".join(f"{k} {v['accuracy']}" for k, v in after.items()))

    out.mkdir(parents=True, exist_ok=True)
    provenance = {
        "base": {"file": str(base.path), "sha256": base_sha, **base.origin},
        "data": cells.sources,
        "counts": {"new_cells": len(cells), "new_train": len(new), "held_out": len(held),
                   "replay": n_replay, "replay_pool": len(replay), "replay_data": cfg.replay,
                   "new_per_class": {classes[k]: int(v) for k, v in zip(*np.unique(cells.labels, return_counts=True))}},
        "training": {**{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("base", "data", "out")},
                     **trainable, **fit, "batchnorm": bn_info, "train_seconds": round(train_s, 1),
                     "views": views_name},
        "accuracy_before": before, "accuracy_after": after,
        "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "command": command,
    }
    side = dict(base_sidecar)
    # the base's temperature / OOD threshold would be stale for the adapted model: refit them
    side.update(confidence_sections(p_after, {"held_out": held.labels,
                                              **({"pbc_val": pbc_val.labels} if pbc_val is not None else {})},
                                    base_sidecar))
    if side.get("domain", {}).get("colour"):
        side["domain"]["colour"] = adapted_colours(cells.sources, side["domain"]["colour"])
    side["ood"]["views"] = views_name
    side["inference"] = {**(side.get("inference") or {}), "views": views_name}
    side.update(classes=classes, input=contract.to_dict(), adapted_from=provenance["base"],
                metrics={"held_out_accuracy": after["held_out"]["accuracy"],
                         **({"pbc_val_accuracy": after["pbc_val"]["accuracy"]} if pbc_val is not None else {})})
    result = base.write(out, side, provenance, cfg, new, replay, pbc_src, logf)
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    # CPU seconds of all threads: on a shared machine the wall time says more about the others' load
    result["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    provenance["wall_seconds"], provenance["cpu_seconds"] = result["wall_seconds"], result["cpu_seconds"]
    atomic_write_json(out / "adapt.json", result)
    base.close()
    return result

