"""The pixel contract: the one implementation of colour order, resize, CLAHE, Otsu masking and
input scaling that training, export and the device all call.

Everything here is numpy + OpenCV so it runs on an edge device without TensorFlow. Images
travel between functions as uint8 RGB arrays of shape (H, W, 3) unless stated otherwise.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

from hemaedge.edge.errors import FrameFormatError  # (also re-exported)

PREPROCESS_MODES = ("rgb", "clahe", "otsu-mask", "masked-rgb")

# How float pixels are scaled before they reach the network. "raw" means the model gets
# 0..255 floats and does its own scaling inside the graph (the default for models we train:
# it makes uint8/int8 quantized inputs exact).
SCALINGS = ("raw", "unit", "lite", "imagenet", "caffe")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)

# Colour normalisation of a smear image to the training set's look (see `normalize_colour`).
NORMALIZE_METHODS = ("lab-anchors",)


@dataclass(frozen=True)
class InputContract:
    """What a model expects at its input, exactly: written into every bundle manifest."""

    size: int = 128
    preprocess: str = "rgb"
    scaling: str = "raw"
    color_order: str = "RGB"
    dtype: str = "float32"  # float32, uint8 or int8 (full-integer models)
    quant_scale: float | None = None
    quant_zero_point: int | None = None
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    # colour normalisation applied after resizing, before `preprocess` (None: none). A dict
    # {"method": "lab-anchors", "background": [L, a, b], "cells": [L, a, b]}: the training
    # set's reference background and red-cell colours in OpenCV 8-bit Lab (see `normalize_colour`).
    normalize: dict | None = None
    # normalisation and CLAHE in one RGB->Lab->RGB conversion (both work in Lab), not two with a
    # uint8 RGB image in between: ~0.15 ms less per crop (speed_profile.md). Not the same pixels (that round trip
    # clipped out-of-gamut colours), so only for models trained this way; the packaged default
    # was trained with two (see benchmarks/results/lab_round_trip.md).
    one_lab_pass: bool = False

    def __post_init__(self):
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {self.preprocess!r}; expected one of {PREPROCESS_MODES}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"unknown input scaling {self.scaling!r}; expected one of {SCALINGS}")
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"unknown colour order {self.color_order!r}; expected RGB or BGR")
        if self.dtype not in ("float32", "uint8", "int8"):
            raise ValueError(f"unknown input dtype {self.dtype!r}; expected float32, uint8 or int8")
        if not 8 <= int(self.size) <= 1024:
            raise ValueError(f"input size {self.size} is out of range 8..1024")
        if self.normalize is not None:
            object.__setattr__(self, "normalize", check_normalize(self.normalize))
        if not isinstance(self.one_lab_pass, bool):  # "false" would be truthy: other pixels than trained on
            raise ValueError(f"one_lab_pass must be true or false, got {self.one_lab_pass!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["normalize"] is None:  # manifests without normalisation stay as they were
            del d["normalize"]
        if not d["one_lab_pass"]:  # likewise manifests of models trained with two Lab passes
            del d["one_lab_pass"]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "InputContract":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"input contract has unknown fields {sorted(unknown)}")
        return cls(**data)


# ----------------------------------------------------------------------------- conversion


def to_rgb_uint8(image: np.ndarray, color_order: str = "RGB", notes: dict | None = None) -> np.ndarray:
    """Convert grayscale, RGBA/BGRA, 16-bit or float images to uint8 RGB (H, W, 3).

    `color_order` names the order of the incoming channels (OpenCV decodes to BGR,
    picamera2's "RGB888" also arrives as BGR). 16-bit pixels keep their 8 most significant bits
    of the bit depth they use (`sixteen_bit_depth`): a 12-bit camera's data in a 16-bit file is
    not read near-black. `notes` (message -> frames): what the conversion had to assume, for the
    run's input warnings (`edge.input_checks`).
    """
    if not isinstance(image, np.ndarray):
        raise FrameFormatError(f"expected a numpy array, got {type(image).__name__}")
    if image.size == 0 or image.ndim not in (2, 3):
        raise FrameFormatError(f"expected an image of shape (H, W) or (H, W, C), got {image.shape}")
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise FrameFormatError(f"expected 1, 3 or 4 channels, got {image.shape[2]}")
    img = image
    if img.dtype == np.uint16:
        bits = sixteen_bit_depth(img)
        img = (img >> (bits - 8)).astype(np.uint8)  # keep the 8 most significant bits of the depth used
        if notes is not None and bits < 16:
            key = (f"16-bit frames hold {bits}-bit data (no value above {2 ** bits - 1}): read as {bits}-bit, so they "
                   f"are not near-black; if they look too bright, save them as 8-bit images")
            notes[key] = notes.get(key, 0) + 1
    elif img.dtype in (np.float32, np.float64):
        hi = float(np.nanmax(img)) if img.size else 0.0
        img = np.clip(img * (255.0 if hi <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise FrameFormatError(f"unsupported pixel type {img.dtype}; expected uint8, uint16 or float")
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB if color_order == "BGR" else cv2.COLOR_RGBA2RGB
        return cv2.cvtColor(img, code)
    if color_order == "BGR":
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


# What 16-bit frames can hold: a camera's 10-, 12- or 14-bit data, or the full 16 bits.
SIXTEEN_BIT_DEPTHS = (10, 12, 14, 16)
# Any depth and colour, alpha dropped (to_rgb_uint8 drops it too), and the EXIF orientation
# honoured (IMREAD_UNCHANGED ignores it: a phone's portrait JPEG would be read on its side).
IMREAD_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
# File signatures of the image formats OpenCV reads (to say why a file is unreadable).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"II*\x00", b"MM\x00*", b"RIFF", b"\x00\x00\x00\x0cjP")


def sixteen_bit_depth(img: np.ndarray) -> int:
    """The bit depth a 16-bit frame uses: the smallest of `SIXTEEN_BIT_DEPTHS` that holds its
    largest value (a smear's bright background is near the camera's maximum)."""
    hi = int(img.max()) if img.size else 0
    return next(b for b in SIXTEEN_BIT_DEPTHS if hi < 2 ** b)


# A marker inside a JPEG's entropy-coded data: 0xFF followed by anything but a stuffed zero, a
# restart marker (RST0-7) or another 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def truncation(data: bytes) -> str | None:
    """Why a JPEG or PNG file was cut short (its end-of-image marker or IEND chunk never comes),
    or None. Walks the file's structure: segments (an EXIF thumbnail's own end marker is skipped
    with its segment) and scans, so data appended after the end (a phone's motion photo) is no
    truncation. Decoders differ here: OpenCV 4 returns a truncated JPEG with a grey bottom and a
    warning on stderr (cells in the lost part vanish from the count), OpenCV 5 refuses it."""
    n = len(data)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 2 <= n:
            if data[i] != 0xFF:
                return None  # not the structure we know: the decoder decides
            m = data[i + 1]
            if m == 0xFF:  # fill byte
                i += 1
                continue
            if m == 0xD9:
                return None  # end of image
            if m == 0x01 or 0xD0 <= m <= 0xD7:  # markers without a length
                i += 2
                continue
            if i + 4 > n:
                break
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
            if m == 0xDA:  # start of scan: entropy-coded data up to the next marker
                nxt = _JPEG_MARKER.search(data, i)
                if nxt is None:
                    break
                i = nxt.start()
        return "truncated JPEG (no end-of-image marker: the file was cut short, e.g. an interrupted copy)"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        i = 8
        while i + 8 <= n:
            if data[i + 4:i + 8] == b"IEND":
                return None
            i += 12 + int.from_bytes(data[i:i + 4], "big")
        return "truncated PNG (no IEND chunk: the file was cut short, e.g. an interrupted copy)"
    return None


def unreadable_reason(data: np.ndarray) -> str:
    """Why bytes that OpenCV cannot decode are not an image."""
    if not data.size:
        return "empty file (0 bytes)"
    head = data[:12].tobytes()
    if not any(head.startswith(sig) for sig in _SIGNATURES):
        return "not an image file (no known image format signature; a text or other file named as an image?)"
    return "corrupt or truncated image (the decoder could not read it)"


def read_image_rgb(path, notes: dict | None = None) -> np.ndarray:
    """Read an image file as uint8 RGB, upright as its EXIF orientation says; raises
    FrameFormatError naming the file and why if unreadable or cut short (`truncation`: whatever
    the OpenCV version). `notes`: see `to_rgb_uint8`."""
    data = np.fromfile(str(path), dtype=np.uint8)
    cut = truncation(data.tobytes())
    if cut:
        raise FrameFormatError(f"{path}: not a readable image: {cut}")
    img = cv2.imdecode(data, IMREAD_FLAGS) if data.size else None
    if img is None:
        raise FrameFormatError(f"{path}: not a readable image: {unreadable_reason(data)}")
    return to_rgb_uint8(img, "BGR" if img.ndim == 3 else "RGB", notes)


def resize(image: np.ndarray, size: int, dst: np.ndarray | None = None) -> np.ndarray:
    """Square resize: area averaging when shrinking, bicubic when enlarging. `dst`: a contiguous
    (size, size, C) array of the image's type to write into (e.g. a slot of a batch)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        if dst is None:
            return image
        dst[...] = image
        return dst
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), dst=dst, interpolation=interp)


# ----------------------------------------------------------------------------- methods


def clahe(image: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on the lightness channel (LAB), so stain colours are kept (Hameed 2025: clip 2.0, 8x8)."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    return cv2.cvtColor(clahe_lab(lab, clip, tiles), cv2.COLOR_LAB2RGB)


def clahe_lab(lab: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """`clahe` on an image already in OpenCV 8-bit Lab, in place (returned for chaining); also on
    a stack (N, H, W, 3) of such images, each equalised on its own (CLAHE is per image)."""
    op = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tiles), int(tiles)))
    for one in (lab,) if lab.ndim == 3 else lab:
        one[..., 0] = op.apply(one[..., 0])
    return lab


def _stacked(images: np.ndarray) -> np.ndarray:
    """A contiguous stack (N, H, W, C) as one (N x H, W, C) image: per-pixel OpenCV calls (colour
    conversions) then run once for all N images, with the very pixels of N calls."""
    return np.ascontiguousarray(images).reshape(-1, *images.shape[2:])


def cvt_stack(images: np.ndarray, code: int) -> np.ndarray:
    """`cv2.cvtColor` of every image of a stack (N, H, W, 3), in one call."""
    return cv2.cvtColor(_stacked(images), code).reshape(images.shape)


_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


def otsu_binary(image: np.ndarray) -> np.ndarray:
    """The papers' Otsu segmentation as a single-channel 0/255 mask (cells = 255).

    grayscale -> Gaussian blur (5x5) -> Otsu (cells are darker than the background) ->
    closing x2 -> opening x1.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    blur = cv2.GaussianBlur(gray, (5, 5), 0)
    _, mask = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _KERNEL, iterations=2)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _KERNEL, iterations=1)
    return mask


def otsu_mask(image: np.ndarray) -> np.ndarray:
    """The binary mask replicated to 3 channels (the network input of the hybrid paper)."""
    return np.repeat(otsu_binary(image)[..., None], 3, axis=2)


def masked_rgb(image: np.ndarray) -> np.ndarray:
    """The colour image with everything outside the Otsu cell region set to black."""
    return image * (otsu_binary(image)[..., None] > 0)


# ----------------------------------------------------------------------------- colour


def check_normalize(spec: dict) -> dict:
    """A validated, canonical copy of an input contract's `normalize` field."""
    if not isinstance(spec, dict) or spec.get("method") not in NORMALIZE_METHODS:
        raise ValueError(f"input normalisation {spec!r}: expected a dict with method one of {NORMALIZE_METHODS}")
    out = {"method": spec["method"]}
    for key in ("background", "cells"):
        v = spec.get(key)
        if v is None or len(v) != 3 or not all(0 <= float(c) <= 255 for c in v):
            raise ValueError(f"input normalisation: {key!r} must be three Lab values within 0..255, got {v!r}")
        out[key] = [round(float(c), 3) for c in v]
    return out


# A pixel whose blue-minus-green exceeds the image median by this much is stained (nuclei,
# platelets): left out of the anchors, whose job is to describe background and red cells.
_STAINED_CONTRAST = 30.0


def _group_medians(planes: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, C) per-group, per-channel medians of the uint8 or uint16 values 0..255 in
    `planes` (C, N), exactly np.median of each group's values (a value with group < 0 is left
    out), from ONE bincount: each value is offset by 256 x (group x C + channel), left-out
    values go to a spare last group, so all the histograms fill in one pass without copying the
    values of each group out first. Channel planes, not (N, C) rows: every numpy loop then runs
    along N, not along a row of 3."""
    n_cols = planes.shape[0]
    g = np.where(group < 0, n_groups, group).astype(np.uint16)  # codes < 2**16 for a few groups of 3 channels
    g *= 256 * n_cols
    codes = planes.astype(np.uint16)  # (a copy) in place from here: no temporaries of the codes
    codes += g
    codes += _CHANNEL_OFFSETS[n_cols]
    hist = np.bincount(codes.ravel(), minlength=256 * n_cols * (n_groups + 1))[:256 * n_cols * n_groups]
    cum = np.cumsum(hist.reshape(n_groups * n_cols, 256), axis=1)
    n = cum[:, -1:]
    # the two middle ranks (equal when n is odd); the value at rank r is the first level whose
    # cumulative count exceeds r
    out = ((cum > (n - 1) // 2).argmax(axis=1) + (cum > n // 2).argmax(axis=1)) / 2.0
    return out.astype(np.float32).reshape(n_groups, n_cols)


# 256 x channel, the per-channel offset of `_group_medians`' codes (1 to 4 channels)
_CHANNEL_OFFSETS = {c: 256 * np.arange(c, dtype=np.uint16)[:, None] for c in range(1, 5)}


def median_int16(values: np.ndarray) -> float:
    """np.median of int16 values in -255..255 (a difference of two uint8 channels), exactly,
    from a histogram: a third of the cost of the partial sort on a crop's 4,096 samples."""
    cum = np.bincount(values + 255, minlength=511).cumsum()
    n = values.size
    lo = int(np.searchsorted(cum, (n - 1) // 2, side="right"))
    hi = int(np.searchsorted(cum, n // 2, side="right"))
    return (lo + hi) / 2.0 - 255.0


def colour_anchors(image: np.ndarray, max_side: int = 64, lab: np.ndarray | None = None) -> np.ndarray:
    """The image's background and red-cell colour, (2, 3) float32 in OpenCV 8-bit Lab.

    Stained pixels (nuclei, platelets: blue minus green well above the median, as the
    segmenter finds them) are left out; the rest split by Otsu on the green channel, which
    haemoglobin absorbs: bright = background, dark = red cells. Estimated on a subsample
    (every k-th pixel, at most `max_side` per side): enough for a smear's colours, and cheap.
    `lab`: the whole image already in Lab (normalize_colour has it), so it is not converted twice.
    """
    step = max(1, int(-(-max(image.shape[:2]) // max_side)))  # ceil(longest side / max_side)
    small = image[::step, ::step]
    green_all = small[..., 1].ravel()
    stain = small[..., 2].astype(np.int16).ravel()
    stain -= green_all
    keep = stain <= median_int16(stain) + _STAINED_CONTRAST
    if lab is None:
        lab_small = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2LAB)
    else:  # per-pixel conversion: the subsample of the converted image is the converted subsample
        lab_small = lab[::step, ::step]
    # (3, N) uint16 channel planes in one copy (for _group_medians; sums and means are exact)
    planes = np.moveaxis(lab_small, 2, 0).astype(np.uint16, order="C").reshape(3, -1)
    green = green_all[keep]
    if len(green) < 16:  # (almost) all stained: nothing to anchor on
        mean = planes.mean(axis=1).astype(np.float32)
        return np.stack([mean, mean])
    t, _ = cv2.threshold(green.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = green_all <= t
    n_bright = len(green) - int(np.count_nonzero(dark[keep]))
    if n_bright in (0, len(green)):  # one tone: background only, or red cells only
        mean = planes[:, keep].mean(axis=1).astype(np.float32)
        return np.stack([mean, mean])
    # group 0 = background (bright), 1 = red cells, -1 = stained (left out)
    group = dark.view(np.int8)
    group[~keep] = -1
    return _group_medians(planes, group, 2)


def reference_anchors(images: Iterable[np.ndarray]) -> dict:
    """The `normalize` field of a training set: the median background and red-cell colour over its images."""
    a = np.stack([colour_anchors(img) for img in images])
    med = np.median(a, axis=0)
    return check_normalize({"method": "lab-anchors", "background": med[0].tolist(), "cells": med[1].tolist()})


# Per-channel stretch limits: a stain can be paler or stronger than the training set's, but a
# factor beyond these means the estimate is unreliable (e.g. a crop with no background).
_STRETCH = (0.5, 2.0)


def normalize_colour(image: np.ndarray, spec: dict, anchors: np.ndarray | None = None) -> np.ndarray:
    """Map a uint8 RGB smear image to the training set's colours (Reinhard-style, in Lab).

    Per Lab channel an affine map sends the image's background colour to the reference
    background and stretches the distance background -> red-cell colour to the reference
    one (limited to 0.5..2x; a channel where the image has no contrast is only shifted).
    This removes white balance, illumination and stain-strength differences between
    microscopes while keeping each cell's own colour pattern. `anchors` (from
    `colour_anchors`) may be given to reuse a whole frame's estimate; by default the image
    estimates its own, as training did.
    """
    return cv2.cvtColor(normalize_lab(image, spec, anchors), cv2.COLOR_LAB2RGB)


def normalize_lab(image: np.ndarray, spec: dict, anchors: np.ndarray | None = None) -> np.ndarray:
    """`normalize_colour`, left in OpenCV 8-bit Lab (a new array): for a next step that works in
    Lab too (CLAHE), so the image is not converted back to RGB and to Lab again in between."""
    return normalize_lab_batch(image[None], spec, None if anchors is None else np.asarray(anchors)[None])[0]


def normalize_lab_batch(images: np.ndarray, spec: dict, anchors: np.ndarray | None = None) -> np.ndarray:
    """`normalize_lab` of each image of a stack (N, H, W, 3) of one size, each from its own
    anchors (`anchors`: (N, 2, 3) given), with one Lab conversion for the stack."""
    lab = cvt_stack(images, cv2.COLOR_RGB2LAB)
    for k, (img, one) in enumerate(zip(images, lab)):
        src = colour_anchors(img, lab=one) if anchors is None else np.asarray(anchors[k], dtype=np.float32)
        cv2.LUT(one, _colour_lut(spec, src), dst=one)  # in place: a per-pixel table lookup
    return lab


_LEVELS = np.arange(256, dtype=np.float32)[:, None]


def _colour_lut(spec: dict, src: np.ndarray) -> np.ndarray:
    """(256, 1, 3) uint8 table of `normalize_colour`'s per-channel affine map from the image's
    anchors `src` (2, 3) to the reference ones (all in float32, rounded half to even)."""
    ref = np.array((spec["background"], spec["cells"]), dtype=np.float32)
    d_src, d_ref = src[1] - src[0], ref[1] - ref[0]
    ok = (np.abs(d_src) >= 2.0) & (np.sign(d_src) == np.sign(d_ref))
    # the ufuncs themselves, not np.clip / np.round (the same values: nothing here is NaN), whose
    # Python wrappers cost more than these few hundred values
    gain = np.where(ok, np.minimum(np.maximum(d_ref / np.where(ok, d_src, 1.0), _STRETCH[0]), _STRETCH[1]), 1.0)
    x = _LEVELS - src[0]
    x *= gain
    x += ref[0]
    np.rint(x, out=x)  # np.round's half to even
    np.maximum(x, 0, out=x)
    np.minimum(x, 255, out=x)
    return x.astype(np.uint8).reshape(256, 1, 3)


def apply_preprocess(image: np.ndarray, contract: InputContract, anchors: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB image of any size -> uint8 RGB image of the contract's size and mode."""
    return preprocess_batch([image], contract, None if anchors is None else np.asarray(anchors)[None])[0]


def preprocess_batch(images: Sequence[np.ndarray], contract: InputContract,
                     anchors: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB images of any sizes -> (N, S, S, 3) uint8: each through the contract's resize,
    colour normalisation and mode, as `apply_preprocess` does one image. The colour conversions
    run once over the stack of resized images (a frame's crops), not once per image; the
    normalisation anchors and CLAHE stay per image. `anchors` ((N, 2, 3), optional): each image's
    normalisation anchors given (e.g. the whole frame's) instead of measured on the resized image."""
    size = contract.size
    batch = np.empty((len(images), size, size, 3), np.uint8)
    for one, img in zip(batch, images):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise FrameFormatError(f"expected uint8 RGB images (H, W, 3), got {img.dtype} {img.shape}")
        resize(img, size, dst=one)
    if not len(batch):
        return batch
    mode = contract.preprocess
    if contract.normalize is not None:
        lab = normalize_lab_batch(batch, contract.normalize, anchors)
        if not (contract.one_lab_pass and mode == "clahe"):
            batch = cvt_stack(lab, cv2.COLOR_LAB2RGB)
        else:  # CLAHE straight on the normalised Lab: no uint8 RGB in between
            return cvt_stack(clahe_lab(lab, contract.clahe_clip, contract.clahe_tiles), cv2.COLOR_LAB2RGB)
    if mode == "clahe":
        lab = clahe_lab(cvt_stack(batch, cv2.COLOR_RGB2LAB), contract.clahe_clip, contract.clahe_tiles)
        batch = cvt_stack(lab, cv2.COLOR_LAB2RGB)
    elif mode in ("otsu-mask", "masked-rgb"):
        method = otsu_mask if mode == "otsu-mask" else masked_rgb
        batch = np.stack([method(one) for one in batch])
    return batch


def scale_pixels(batch_uint8: np.ndarray, scaling: str) -> np.ndarray:
    """uint8 RGB batch -> float32 network input for the given scaling."""
    x = batch_uint8.astype(np.float32)
    if scaling == "raw":
        return x
    if scaling == "unit":
        return x / 255.0
    if scaling == "lite":
        return (x - 127.0) / 128.0
    if scaling == "imagenet":
        return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    if scaling == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    raise ValueError(f"unknown input scaling {scaling!r}")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Float tensor -> integer tensor with the model's input quantization."""
    info = np.iinfo(np.dtype(dtype))
    q = np.round(x / float(scale) + int(zero_point))
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - int(zero_point)) * float(scale)


def prepare_batch(images: Iterable[np.ndarray], contract: InputContract) -> np.ndarray:
    """uint8 RGB images of any size -> the exact tensor the model takes (N, S, S, 3)."""
    batch = preprocess_batch(list(images), contract)
    if not len(batch):
        return np.zeros((0, contract.size, contract.size, 3), dtype=np.dtype(contract.dtype))
    return batch_tensor(batch, contract)


def batch_tensor(batch: np.ndarray, contract: InputContract) -> np.ndarray:
    """uint8 RGB batch already through `apply_preprocess` (e.g. augmented after it in training)
    -> the model's input tensor: colour order, scaling, dtype."""
    if contract.color_order == "BGR":
        batch = batch[..., ::-1]
    if (contract.dtype == "uint8" and contract.scaling == "raw" and contract.quant_scale == 1.0
            and contract.quant_zero_point == 0):
        return np.ascontiguousarray(batch)  # quantize(raw 0..255, scale 1, zero point 0) is the identity
    x = scale_pixels(batch, contract.scaling)
    if contract.dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if contract.quant_scale is None or contract.quant_zero_point is None:
        raise ValueError("an integer input contract needs quant_scale and quant_zero_point")
    return quantize(x, contract.quant_scale, contract.quant_zero_point, contract.dtype)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def output_probabilities(out: np.ndarray, output: dict) -> np.ndarray:
    """Dequantized float model output -> class probabilities, as the manifest's `output` says:
    kind "logits" gets softmax(logit_scale * out) (logit_scale 1 unless given: bounded int8 logits
    carry theirs, see export/bounded_logits.py); "probabilities" pass through. A `temperature`
    T (fitted on the validation split, see train/evaluate.fit_temperature) divides the logits
    (for probabilities: their logarithm), so confidences mean what they say."""
    out = np.asarray(out, dtype=np.float32)
    t = float(output.get("temperature") or 1.0)
    if output.get("kind", "probabilities") == "logits":
        return softmax(out * np.float32((output.get("logit_scale") or 1.0) / t))
    if t != 1.0:
        return softmax(np.log(np.clip(out, 1e-30, None)) / np.float32(t))
    return out


__all__: Sequence[str] = [
    "InputContract", "FrameFormatError", "PREPROCESS_MODES", "SCALINGS", "NORMALIZE_METHODS", "to_rgb_uint8",
    "batch_tensor", "check_normalize", "colour_anchors", "reference_anchors", "normalize_colour",
    "read_image_rgb", "resize", "clahe", "clahe_lab", "cvt_stack", "normalize_lab", "normalize_lab_batch", "otsu_binary", "otsu_mask", "masked_rgb",
    "apply_preprocess", "preprocess_batch", "scale_pixels", "quantize", "dequantize", "prepare_batch", "softmax",
    "output_probabilities",
]
