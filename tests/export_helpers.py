"""Small real models for the export tests: trained in seconds on a slice of BloodMNIST-128.

Two architectures: a plain conv net, and an EfficientNet-like net (Rescaling inside the graph,
conv + BatchNorm + ReLU6, depthwise conv + BN + swish, global pooling, softmax), the kind of
graph where full-integer int8 goes wrong when activations are mishandled.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from hemaedge.edge.preprocess import InputContract, prepare_batch, read_image_rgb

CLASSES = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte",
           "neutrophil", "platelet"]


_WORK: dict = {}


def workdir() -> Path:
    """One temporary folder per test session, shared by all export test files (removed at exit)."""
    if "dir" not in _WORK:
        import atexit
        import tempfile

        _WORK["dir"] = Path(tempfile.mkdtemp(prefix="hemaedge-export-tests-"))
        atexit.register(shutil.rmtree, _WORK["dir"], True)
    return _WORK["dir"]


def cached(key: str, make):
    """Build an expensive thing (a trained model, a folder) once per test session."""
    if key not in _WORK:
        _WORK[key] = make()
    return _WORK[key]


def tiny_model(root: Path, kind: str) -> Path:
    return cached(f"model-{kind}", lambda: train_tiny(kind, root, workdir() / "models"))


def calibration_dir(root: Path) -> Path:
    return cached("calib", lambda: make_calibration_dir(root, workdir() / "calibration_data"))


def eval_tree(root: Path) -> Path:
    return cached("evald", lambda: make_eval_tree(root, workdir() / "evald"))


def split_files(root: Path, split: str, per_class: int) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for i, c in enumerate(CLASSES):
        got = sorted((root / split / c).glob("*.jpg"))[:per_class]
        files += got
        labels += [i] * len(got)
    return files, np.array(labels)


def build_model(kind: str, size: int):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1)(inp)  # the model scales raw pixels itself
    if kind == "conv":
        x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)
        x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    elif kind == "effnet":
        x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("swish")(x)
        x = layers.Conv2D(16, 1, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
    else:
        raise ValueError(kind)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inp, out)


def train_tiny(kind: str, root: Path, out_dir: Path, size: int = 32, per_class: int = 40, epochs: int = 8,
               preprocess: str = "rgb") -> Path:
    """Train a tiny classifier on per_class images/class; write <kind>.keras + <kind>.json sidecar."""
    files, y = split_files(root, "train", per_class)
    contract = InputContract(size=size, preprocess=preprocess)
    x = prepare_batch([read_image_rgb(f) for f in files], contract)
    model = build_model(kind, size)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{kind}.keras"
    model.save(path)
    sidecar = {"classes": CLASSES, "input": contract.to_dict(), "weights": None, "metrics": {}}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def make_calibration_dir(root: Path, out: Path, per_class: int = 4) -> Path:
    """A calibration_data folder (the layout `hemaedge data calibration` writes): class folders of
    train JPEGs + manifest.csv with checksums."""
    import hashlib

    files, y = split_files(root, "train", 1000)
    rows = ["split,index,label,class,file,source,sha256"]
    for i, c in enumerate(CLASSES):
        (out / c).mkdir(parents=True, exist_ok=True)
        for f in [f for f, lab in zip(files, y) if lab == i][-per_class:]:
            shutil.copyfile(f, out / c / f.name)
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            rows.append(f"train,{int(f.stem.split('_')[1])},{i},{c},{c}/{f.name},train/{c}/{f.name},{digest}")
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    return out


def make_eval_tree(root: Path, out: Path, per_class: int = 6) -> Path:
    """A small ImageFolder copy of val/ and test/ (per_class images per class) for parity tests."""
    for split in ("val", "test"):
        files, y = split_files(root, split, per_class)
        for f, lab in zip(files, y):
            (out / split / CLASSES[lab]).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, out / split / CLASSES[lab] / f.name)
    return out

