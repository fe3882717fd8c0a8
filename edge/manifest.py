"""The bundle manifest as a typed, validated record.

`Manifest.from_dict` checks every field a device relies on against a schema with bounds and
raises one `BundleError` listing every problem, so a hand-edited or hostile manifest can never
reach OpenCV or a runtime with a value that crashes natively (CLAHE with 0 tiles is a SIGFPE)
or allocates without bound (100,000 tiles), and never ends in a traceback.

Forward compatible: sections this version does not know are kept verbatim (`to_dict` gives back
exactly what was read), and optional sections that other features add (`input.normalize`,
`output.temperature`, `ood`, `domain`, `provenance`, `rbc_model`, `models`, `signature`) are
only checked for their type. Only what is wrong is refused.

No heavy dependencies: the standard library and the input contract.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from hemaedge.edge.errors import BundleError
from hemaedge.edge.preprocess import InputContract

MANIFEST_FORMAT = "hemaedge-bundle"
MANIFEST_VERSION = 1
SUPPORTED_VERSIONS = (1,)
BACKENDS = ("tflite", "onnx", "tensorrt")
OUTPUT_KINDS = ("probabilities", "logits")

# Bounds: generous for any real model, small enough that nothing allocates without limit.
MAX_CLASSES = 10_000
MAX_FILES = 10_000
MAX_NAME = 200
MAX_FILE_BYTES = 1 << 40  # 1 TiB: larger is a typo or an attack
SIZE_RANGE = (8, 1024)
CLAHE_TILES_RANGE = (1, 64)
CLAHE_CLIP_RANGE = (0.0, 1000.0)  # exclusive lower bound
_SHA256 = re.compile(r"[0-9a-f]{64}")  # used with fullmatch
_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "int16": (-32768, 32767), "float32": None}
# Optional top-level sections and the JSON types they may have (None = may be null).
OPTIONAL_SECTIONS = {
    "name": (str,), "created": (str,), "hemaedge_version": (str,),
    "source": (dict,), "export": (dict,), "metrics": (dict,), "validation": (dict,),
    "ood": (dict, type(None)), "domain": (dict, type(None)), "provenance": (dict, type(None)),
    "rbc_model": (dict, type(None)), "red_cells": (dict, type(None)), "models": (dict, type(None)), "signature": (dict, type(None)),
}


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def safe_relpath(name) -> PurePosixPath:
    """A path inside the bundle: relative, no '..', no drive, no backslashes."""
    if not isinstance(name, str):
        raise BundleError(f"bundle file name {name!r} is not a string")
    p = PurePosixPath(name)
    if (not name or p.is_absolute() or ".." in p.parts or "\\" in name or ":" in name
            or "\x00" in name or len(name) > 1000):
        raise BundleError(f"bundle file path {name!r} escapes the bundle; refusing to load it")
    return p


@dataclass(frozen=True)
class FileEntry:
    """One checksummed file of the bundle."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class ModelSpec:
    file: str
    backend: str
    format: str = ""


@dataclass(frozen=True)
class OutputSpec:
    """What the model's output is and how to turn it into class probabilities."""

    kind: str = "probabilities"
    dtype: str = "float32"
    quant_scale: float | None = None
    quant_zero_point: int | None = None
    logit_scale: float | None = None
    temperature: float | None = None


class _Problems(list):
    """Collects every problem so one message can list them all."""

    def need(self, ok: bool, message: str) -> bool:
        if not ok:
            self.append(message)
        return ok


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. `raw` is the manifest exactly as read (unknown sections included)."""

    raw: dict = field(repr=False)
    model: ModelSpec
    classes: tuple
    contract: InputContract
    output: OutputSpec
    files: dict  # name -> FileEntry

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, data, where: str = "manifest") -> "Manifest":
        """Validate `data` (parsed JSON); BundleError naming `where` and every problem found."""
        problems = _Problems()
        if not isinstance(data, dict):
            raise BundleError(f"{where}: a manifest must be a JSON object, not {_type_name(data)}")
        if data.get("format") != MANIFEST_FORMAT:
            raise BundleError(f"{where}: not a hemaedge bundle manifest (format field is {data.get('format')!r})")
        version = data.get("manifest_version")
        if not _is_int(version) or version not in SUPPORTED_VERSIONS:
            raise BundleError(f"{where}: manifest version {version!r} is not supported by this hemaedge "
                              f"(supports {list(SUPPORTED_VERSIONS)}); upgrade hemaedge or re-export the bundle")
        for key in ("model", "classes", "input", "files"):
            problems.need(key in data, f"the required field {key!r} is missing")
        for key, types in OPTIONAL_SECTIONS.items():
            if key in data:
                problems.need(isinstance(data[key], types),
                              f"{key!r} must be {' or '.join(_type_name(t()) if t is not type(None) else 'null' for t in types)}, "
                              f"not {_type_name(data[key])}")
        if isinstance(data.get("name"), str):
            problems.need(len(data["name"]) <= MAX_NAME, f"name is longer than {MAX_NAME} characters")
        files = _files(data.get("files"), problems) if "files" in data else {}
        listed = data["files"] if isinstance(data.get("files"), dict) else {}
        model = _model(data.get("model"), listed, problems) if "model" in data else None
        classes = _classes(data.get("classes"), problems) if "classes" in data else ()
        contract = _contract(data.get("input"), problems) if "input" in data else None
        output = _output(data.get("output", {"kind": "probabilities"}), problems)
        if problems:
            raise BundleError(f"{where}: the manifest is not valid:\n  - " + "\n  - ".join(problems)
                              + "\nRe-export the bundle (`hemaedge export ...`) instead of editing it by hand.")
        return cls(raw=copy.deepcopy(data), model=model, classes=tuple(classes), contract=contract,
                   output=output, files=files)

    def to_dict(self) -> dict:
        """The manifest as read, unknown sections included (a deep copy)."""
        return copy.deepcopy(self.raw)

    # ------------------------------------------------------------------ reading

    @property
    def name(self) -> str:
        return str(self.raw.get("name") or "")

    @property
    def size_bytes(self) -> int:
        return sum(entry.bytes for entry in self.files.values())

    @property
    def validation_status(self) -> str:
        v = self.raw.get("validation")
        return str(v.get("status", "")) if isinstance(v, dict) else ""

    @property
    def signature(self) -> dict | None:
        sig = self.raw.get("signature")
        return sig if isinstance(sig, dict) else None

    def section(self, key: str) -> dict:
        """An optional object section, or {} when absent (never a non-dict)."""
        value = self.raw.get(key)
        return value if isinstance(value, dict) else {}

    def split_metrics(self, split: str) -> dict:
        """The artifact's metrics on one split (metrics.<split>), or {}."""
        block = self.section("metrics").get(split)
        return block if isinstance(block, dict) else {}

    def parity_split(self, split: str) -> dict:
        """The export parity record of one split (metrics.parity.splits.<split>), or {}."""
        parity = self.section("metrics").get("parity")
        splits = parity.get("splits") if isinstance(parity, dict) else None
        block = splits.get(split) if isinstance(splits, dict) else None
        return block if isinstance(block, dict) else {}

    def accuracy(self) -> tuple[float, str] | None:
        """The accuracy recorded at export (test split preferred) and its split, or None."""
        metrics = self.section("metrics")
        order = ["test", "val", "validation"] + [k for k in metrics if k not in ("test", "val", "validation")]
        for key in order:
            block = metrics.get(key)
            if isinstance(block, dict) and _is_number(block.get("accuracy")):
                return float(block["accuracy"]), key
        if _is_number(metrics.get("accuracy")):
            return float(metrics["accuracy"]), ""
        return None


# ---------------------------------------------------------------------------- sections


def _files(files, problems: _Problems) -> dict:
    if not problems.need(isinstance(files, dict), f"'files' must be an object of name -> {{sha256, bytes}}, "
                                                  f"not {_type_name(files)}"):
        return {}
    if not problems.need(0 < len(files) <= MAX_FILES, f"'files' must list 1..{MAX_FILES} files (lists {len(files)})"):
        return {}
    out = {}
    for name, info in files.items():
        try:
            safe_relpath(name)
        except BundleError as exc:
            problems.append(str(exc))
            continue
        if not problems.need(isinstance(info, dict), f"files[{name!r}] must be an object with sha256 and bytes, "
                                                     f"not {_type_name(info)}"):
            continue
        digest, size = info.get("sha256"), info.get("bytes")
        ok = problems.need(isinstance(digest, str) and bool(_SHA256.fullmatch(digest)),
                           f"files[{name!r}].sha256 must be 64 lowercase hex digits (got {digest!r:.80})")
        ok &= problems.need(_is_int(size) and 0 <= size <= MAX_FILE_BYTES,
                            f"files[{name!r}].bytes must be a whole number of bytes 0..{MAX_FILE_BYTES} "
                            f"(got {size!r:.40})")
        if ok:
            out[name] = FileEntry(digest, size)
    return out


def _model(model, files: dict, problems: _Problems) -> ModelSpec | None:
    if not problems.need(isinstance(model, dict), f"'model' must be an object, not {_type_name(model)}"):
        return None
    file, backend, fmt = model.get("file"), model.get("backend"), model.get("format", "")
    ok = problems.need(backend in BACKENDS, f"unknown back end {backend!r:.60}; expected one of {list(BACKENDS)}")
    ok &= problems.need(isinstance(file, str) and file in files,
                        f"model file {file!r:.80} is not among the checksummed files")
    ok &= problems.need(isinstance(fmt, str), f"model.format must be a string, not {_type_name(fmt)}")
    return ModelSpec(file, backend, fmt) if ok else None


def _classes(classes, problems: _Problems) -> list:
    if not problems.need(isinstance(classes, list), f"'classes' must be a list of names, not {_type_name(classes)}"):
        return []
    bad = [c for c in classes if not isinstance(c, str) or not c.strip() or len(c) > MAX_NAME]
    if not problems.need(not bad, f"every class name must be a non-empty string of at most {MAX_NAME} characters "
                                  f"(bad: {bad[:3]!r:.120})"):
        return []
    problems.need(2 <= len(classes) <= MAX_CLASSES and len(set(classes)) == len(classes),
                  f"class list must hold 2..{MAX_CLASSES} distinct names (has {len(classes)}, "
                  f"{len(classes) - len(set(classes))} repeated)")
    return list(classes)


def _contract(inp, problems: _Problems) -> InputContract | None:
    if not problems.need(isinstance(inp, dict), f"'input' must be an object, not {_type_name(inp)}"):
        return None
    n = len(problems)
    size = inp.get("size", 128)
    problems.need(_is_int(size) and SIZE_RANGE[0] <= size <= SIZE_RANGE[1],
                  f"input.size must be a whole number of pixels {SIZE_RANGE[0]}..{SIZE_RANGE[1]} (got {size!r:.40})")
    tiles = inp.get("clahe_tiles", 8)
    problems.need(_is_int(tiles) and CLAHE_TILES_RANGE[0] <= tiles <= CLAHE_TILES_RANGE[1],
                  f"input.clahe_tiles must be a whole number {CLAHE_TILES_RANGE[0]}..{CLAHE_TILES_RANGE[1]} "
                  f"(got {tiles!r:.40})")
    clip = inp.get("clahe_clip", 2.0)
    problems.need(_is_number(clip) and CLAHE_CLIP_RANGE[0] < clip <= CLAHE_CLIP_RANGE[1],
                  f"input.clahe_clip must be a number above {CLAHE_CLIP_RANGE[0]:g} and at most "
                  f"{CLAHE_CLIP_RANGE[1]:g} (got {clip!r:.40})")
    for key in ("preprocess", "scaling", "color_order", "dtype"):
        if key in inp:
            problems.need(isinstance(inp[key], str), f"input.{key} must be a string, not {_type_name(inp[key])}")
    dtype = inp.get("dtype", "float32")
    _quant(inp, "input", dtype if isinstance(dtype, str) else "float32", problems,
           required=dtype in ("uint8", "int8"))
    if "normalize" in inp:  # stain normalisation: its own feature validates the content
        problems.need(isinstance(inp["normalize"], (dict, type(None))),
                      f"input.normalize must be an object or null, not {_type_name(inp['normalize'])}")
    if len(problems) > n:
        return None
    try:
        return InputContract.from_dict(inp)
    except (TypeError, ValueError) as exc:
        problems.append(f"input contract: {exc}")
        return None


def _quant(section: dict, where: str, dtype: str, problems: _Problems, required: bool) -> None:
    scale, zero = section.get("quant_scale"), section.get("quant_zero_point")
    if scale is not None:
        problems.need(_is_number(scale) and scale > 0, f"{where}.quant_scale must be a positive number or null "
                                                       f"(got {scale!r:.40})")
    if zero is not None:
        bounds = _INT_RANGES.get(dtype)
        problems.need(_is_int(zero) and (bounds is None or bounds[0] <= zero <= bounds[1]),
                      f"{where}.quant_zero_point must be a whole number in the range of {dtype} or null "
                      f"(got {zero!r:.40})")
    if required:
        problems.need(scale is not None and zero is not None,
                      f"{where} is {dtype}, so it needs quant_scale and quant_zero_point")


def _output(out, problems: _Problems) -> OutputSpec | None:
    if out is None:
        out = {"kind": "probabilities"}
    if not problems.need(isinstance(out, dict), f"'output' must be an object, not {_type_name(out)}"):
        return None
    kind, dtype = out.get("kind", "probabilities"), out.get("dtype", "float32")
    ok = problems.need(kind in OUTPUT_KINDS, f"output.kind must be one of {list(OUTPUT_KINDS)} (got {kind!r:.40})")
    ok &= problems.need(isinstance(dtype, str), f"output.dtype must be a string, not {_type_name(dtype)}")
    n = len(problems)
    _quant(out, "output", dtype if isinstance(dtype, str) else "float32", problems, required=False)
    for key in ("logit_scale", "temperature"):
        value = out.get(key)
        if value is not None:
            problems.need(_is_number(value) and 0 < value <= 1e6,
                          f"output.{key} must be a positive number or null (got {value!r:.40})")
    if not ok or len(problems) > n:
        return None
    return OutputSpec(kind=kind, dtype=dtype, quant_scale=out.get("quant_scale"),
                      quant_zero_point=out.get("quant_zero_point"), logit_scale=out.get("logit_scale"),
                      temperature=out.get("temperature"))


__all__ = ["Manifest", "FileEntry", "ModelSpec", "OutputSpec", "safe_relpath", "MANIFEST_FORMAT",
           "MANIFEST_VERSION", "SUPPORTED_VERSIONS", "BACKENDS", "OUTPUT_KINDS"]
