"""Model bundles: the folder that travels to a device.

A bundle is a directory holding the model file(s) and `manifest.json`. The manifest names the
class list, the exact input contract, the back end, the source model's checksum and export
settings, the parity metrics measured at export and the sha256 of every file. Loading verifies
all of it before anything runs, and never unpickles anything (JSON and model files only).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hemaedge.edge.errors import BundleError
from hemaedge.edge.preprocess import InputContract

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "hemaedge-bundle"
MANIFEST_VERSION = 1
SUPPORTED_VERSIONS = (1,)
BACKENDS = ("tflite", "onnx", "tensorrt")




def file_digest(path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (model and data files can be large)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path) -> str:
    return file_digest(path, "sha256")


def _safe_relpath(name: str) -> PurePosixPath:
    """A path inside the bundle: relative, no '..', no drive, no backslashes."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or ":" in name:
        raise BundleError(f"bundle file path {name!r} escapes the bundle; refusing to load it")
    return p


@dataclass
class Bundle:
    """A verified bundle, ready for a back end."""

    root: Path
    manifest: dict
    contract: InputContract = field(init=False)

    def __post_init__(self):
        self.contract = InputContract.from_dict(self.manifest["input"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def backend(self) -> str:
        return self.manifest["model"]["backend"]

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest["model"]["file"]

    @property
    def output(self) -> dict:
        return self.manifest.get("output", {"kind": "probabilities"})

    @property
    def size_bytes(self) -> int:
        return sum(int(v["bytes"]) for v in self.manifest["files"].values())

    def describe(self) -> str:
        m = self.manifest
        acc = (m.get("metrics") or {}).get("test", {}).get("accuracy")
        acc_s = f", test accuracy {acc:.4f}" if isinstance(acc, (int, float)) else ""
        return (f"{m.get('name', self.root.name)}: {self.backend} {m['model'].get('format', '')}, "
                f"{len(self.classes)} classes, input {self.contract.size}px {self.contract.preprocess}/"
                f"{self.contract.dtype}, {self.size_bytes / 1e6:.2f} MB{acc_s}")


def read_manifest(root) -> dict:
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory (expected a folder with {MANIFEST_NAME})")
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME}; is this a hemaedge bundle? (make one with `hemaedge export bundle`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BundleError(f"{path}: not a hemaedge bundle manifest (format field is {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("manifest_version")
    if version not in SUPPORTED_VERSIONS:
        raise BundleError(f"{path}: manifest version {version!r} is not supported by this hemaedge "
                          f"(supports {list(SUPPORTED_VERSIONS)}); upgrade hemaedge or re-export the bundle")
    for key in ("model", "classes", "input", "files"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest lacks the required field {key!r}")
    return manifest


def verify_bundle(root) -> list[str]:
    """Every problem found, as messages (empty list: the bundle is intact)."""
    root = Path(root)
    manifest = read_manifest(root)
    problems = []
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        return [f"{root}: manifest lists no files"]
    resolved_root = root.resolve()
    for name, info in files.items():
        try:
            rel = _safe_relpath(name)
        except BundleError as exc:
            problems.append(str(exc))
            continue
        path = root / rel
        if not path.resolve().is_relative_to(resolved_root):
            problems.append(f"bundle file {name!r} resolves outside the bundle (symbolic link?); refusing it")
            continue
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing from the bundle")
            continue
        digest = sha256_file(path)
        if digest != info.get("sha256"):
            problems.append(f"{name}: checksum mismatch (manifest {str(info.get('sha256'))[:12]}…, file {digest[:12]}…): "
                            "the file was changed or damaged in transit; copy the bundle again")
    model = manifest["model"]
    if model.get("backend") not in BACKENDS:
        problems.append(f"unknown back end {model.get('backend')!r}; expected one of {BACKENDS}")
    if model.get("file") not in files:
        problems.append(f"model file {model.get('file')!r} is not among the checksummed files")
    classes = manifest["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes):
        problems.append("class list must hold at least two distinct names")
    try:
        InputContract.from_dict(manifest["input"])
    except (TypeError, ValueError) as exc:
        problems.append(f"input contract: {exc}")
    return problems


def load_bundle(root) -> Bundle:
    """Verify and load a bundle; raises BundleError with every problem found."""
    problems = verify_bundle(root)
    if problems:
        raise BundleError(f"bundle {root} failed verification:\n  - " + "\n  - ".join(problems))
    return Bundle(Path(root), read_manifest(root))


def write_bundle(out_dir, files: dict, *, model_file: str, backend: str, model_format: str,
                 classes: list[str], contract: InputContract, output: dict | None = None,
                 source: dict | None = None, export: dict | None = None, metrics: dict | None = None,
                 name: str | None = None, extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write a bundle atomically: built in a temporary sibling folder, verified, then renamed.

    `files` maps the name inside the bundle to the source path to copy.
    """
    from hemaedge import __version__

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BundleError(f"{out_dir} exists; pass overwrite=True (--force) to replace it")
    if model_file not in files:
        raise BundleError(f"model file {model_file!r} is not among the bundle files")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        listing = {}
        for rel, src in files.items():
            _safe_relpath(rel)
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            listing[rel] = {"sha256": sha256_file(dst), "bytes": dst.stat().st_size}
        manifest = {
            "format": MANIFEST_FORMAT,
            "manifest_version": MANIFEST_VERSION,
            "name": name or out_dir.name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "hemaedge_version": __version__,
            "model": {"file": model_file, "backend": backend, "format": model_format},
            "classes": list(classes),
            "input": contract.to_dict(),
            "output": output or {"kind": "probabilities", "dtype": "float32"},
            "source": source or {},
            "export": export or {},
            "metrics": metrics or {},
            "files": listing,
        }
        if extra:
            manifest.update(extra)
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=False)
            fh.flush()
            os.fsync(fh.fileno())
        problems = verify_bundle(tmp)
        if problems:
            raise BundleError("freshly written bundle failed verification: " + "; ".join(problems))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
