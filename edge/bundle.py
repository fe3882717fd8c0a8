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

from hemaedge.edge.atomic import replace_dir
from hemaedge.edge.errors import BundleError
from hemaedge.edge.manifest import (BACKENDS, MANIFEST_FORMAT, MANIFEST_VERSION,  # noqa: F401 (re-exported)
                                    SUPPORTED_VERSIONS, Manifest, safe_relpath)
from hemaedge.edge.preprocess import InputContract

MANIFEST_NAME = "manifest.json"
# A manifest is a few kB; refuse to parse a huge file instead of exhausting a device's memory.
MAX_MANIFEST_BYTES = 16 << 20

def file_digest(path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (model and data files can be large)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path) -> str:
    return file_digest(path, "sha256")


_safe_relpath = safe_relpath  # older name used by the store and deploy


@dataclass
class Bundle:
    """A verified bundle, ready for a back end."""

    root: Path
    manifest: dict  # the manifest as read (unknown sections included); `meta` is its typed form
    meta: Manifest = field(init=False, repr=False)
    contract: InputContract = field(init=False)

    def __post_init__(self):
        self.meta = Manifest.from_dict(self.manifest, where=str(Path(self.root) / MANIFEST_NAME))
        self.contract = self.meta.contract

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def backend(self) -> str:
        return self.meta.model.backend

    @property
    def model_path(self) -> Path:
        return self.root / self.meta.model.file

    @property
    def output(self) -> dict:
        out = self.manifest.get("output")
        return out if isinstance(out, dict) else {"kind": "probabilities"}

    @property
    def size_bytes(self) -> int:
        return self.meta.size_bytes

    def describe(self) -> str:
        m = self.manifest
        acc = self.meta.split_metrics("test").get("accuracy")
        acc_s = f", test accuracy {acc:.4f}" if isinstance(acc, (int, float)) and not isinstance(acc, bool) else ""
        return (f"{self.meta.name or self.root.name}: {self.backend} {self.meta.model.format}, "
                f"{len(self.classes)} classes, input {self.contract.size}px {self.contract.preprocess}/"
                f"{self.contract.dtype}, {self.size_bytes / 1e6:.2f} MB{acc_s}")


def load_manifest(root) -> Manifest:
    """The bundle's manifest, parsed and validated against the schema (BundleError otherwise)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory (expected a folder with {MANIFEST_NAME})")
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME}; is this a hemaedge bundle? (make one with `hemaedge export bundle`)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: {path.stat().st_size} bytes is far too large for a manifest; refusing to read it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: manifest is not valid JSON ({str(exc)[:200]})") from None
    return Manifest.from_dict(data, where=str(path))


def read_manifest(root) -> dict:
    """The validated manifest as a plain dict (unknown sections included)."""
    return load_manifest(root).to_dict()


def verify_bundle(root) -> list[str]:
    """Every problem with the bundle's files, as messages (empty list: the bundle is intact).

    Raises BundleError when the manifest itself is unreadable or fails the schema."""
    root = Path(root)
    manifest = load_manifest(root)
    problems = []
    resolved_root = root.resolve()
    for name, entry in manifest.files.items():
        path = root / safe_relpath(name)
        if not path.resolve().is_relative_to(resolved_root):
            problems.append(f"bundle file {name!r} resolves outside the bundle (symbolic link?); refusing it")
            continue
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing from the bundle")
            continue
        size = path.stat().st_size
        if size != entry.bytes:
            problems.append(f"{name}: checksum mismatch ({size} bytes, the manifest lists {entry.bytes}): the file "
                            "was truncated, changed or damaged in transit; copy the bundle again")
            continue
        digest = sha256_file(path)
        if digest != entry.sha256:
            problems.append(f"{name}: checksum mismatch (manifest {entry.sha256[:12]}…, file {digest[:12]}…): "
                            "the file was changed or damaged in transit; copy the bundle again")
        elif name.lower().endswith(".onnx"):
            problems += _onnx_external_problems(root, name, manifest)
    return problems


def _onnx_external_problems(root: Path, name: str, manifest: Manifest) -> list[str]:
    """An ONNX model's external data files must be listed (and so checksummed) like every file."""
    from hemaedge.edge.onnx_external import external_data_locations

    try:
        locations = external_data_locations((root / name).read_bytes())
    except BundleError as exc:
        return [f"{name}: {exc}"]
    problems = []
    folder = PurePosixPath(name).parent
    for loc in locations:
        try:
            rel = (folder / safe_relpath(loc)).as_posix() if loc else ""
        except BundleError:
            rel = ""
        if not rel or rel not in manifest.files:
            problems.append(f"{name}: the model loads weights from external data {loc!r}, which the manifest does "
                            "not list, so no checksum covers it; re-export with the weights inside the .onnx file "
                            "(or list and checksum the data file in the bundle)")
    return problems


def load_bundle(root) -> Bundle:
    """Verify and load a bundle; raises BundleError with every problem found."""
    problems = verify_bundle(root)
    if problems:
        raise BundleError(f"bundle {root} failed verification:\n  - " + "\n  - ".join(problems))
    return Bundle(Path(root), read_manifest(root))


def unlisted_files(root) -> list[str]:
    """Files in the bundle folder that the manifest does not list (and so are not checksummed)."""
    root = Path(root)
    listed = set(load_manifest(root).files) | {MANIFEST_NAME}
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(root).as_posix() not in listed)


def write_bundle(out_dir, files: dict, *, model_file: str, backend: str, model_format: str,
                 classes: list[str], contract: InputContract, output: dict | None = None,
                 source: dict | None = None, export: dict | None = None, metrics: dict | None = None,
                 name: str | None = None, extra: dict | None = None, overwrite: bool = False,
                 check=None) -> Path:
    """Write a bundle atomically: built in a temporary sibling folder, verified, then renamed.

    `files` maps the name inside the bundle to the source path to copy. `check(bundle)`, when
    given, runs on the finished temporary bundle before it is moved into place (the exporters
    pass the smoke inference of `bundle_check.check_runnable`), so a bundle that cannot run is
    never written.
    """
    from hemaedge import __version__

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir} is a file; a bundle is a folder: choose another output path")
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
        if check is not None:
            try:
                check(Bundle(tmp, manifest))
            except BundleError as exc:  # name the bundle the user asked for, not the temporary folder
                raise BundleError(str(exc).replace(str(tmp), str(out_dir))) from None
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
