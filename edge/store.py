"""The model store on a device: verified, versioned bundles and an atomically switched active one.

Layout of a store (a per-user data directory by default, see `default_store_path`):

    <store>/store.json          the committed state: versions, active one, rollback history
    <store>/versions/<name>-<n> one complete, verified bundle per installed version
    <store>/.staging/           half-copied bundles live only here (hidden, cleaned up)
    <store>/.lock               fcntl lock serialising installs, rollbacks and prunes

Why it is safe to pull the plug at any moment:
  * a bundle is copied into `.staging/`, fsynced and verified there, then renamed into
    `versions/` in one step, so `versions/` never holds a half-written bundle;
  * a version exists, and becomes active, only when `store.json` says so, and `store.json` is
    replaced atomically (temporary file, fsync, os.replace). A crash before that replace leaves
    the previous state, and with it the previous active model, exactly as it was; a renamed
    but uncommitted directory is an orphan that the next install removes.
Nothing from a bundle is executed or unpickled: install reads JSON and copies bytes.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hemaedge.edge.atomic import fsync_dir, replace_dir
from hemaedge.edge.bundle import (MANIFEST_NAME, Bundle, BundleError, _safe_relpath, load_bundle,
                                  load_manifest, read_manifest, verify_bundle)
from hemaedge.edge.bundle_check import check_runnable
from hemaedge.edge.errors import StoreError

STORE_ENV = "HEMAEDGE_STORE"
STATE_NAME = "store.json"
STATE_FORMAT = "hemaedge-store"
STATE_VERSION = 1
DEFAULT_KEEP = 3
# Test hook: "POINT" or "POINT:SECONDS" pauses an install at that point (locked, staged,
# placed, committed) after announcing it on stderr, so tests can kill it there.
PAUSE_ENV = "HEMAEDGE_STORE_TEST_PAUSE"

# Version folder names: what `_slug(name)-<seq>` produces. Anything else in store.json (a
# hand edit, a damaged disk, an attack: "../../victim") is refused before any path is built.
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")  # used with fullmatch


class ContractChangeError(StoreError):
    """The new bundle's class list or input contract differs from the active one."""

    def __init__(self, message: str, changes: list[str]):
        super().__init__(message)
        self.changes = changes


def default_store_path() -> Path:
    """$HEMAEDGE_STORE, else the per-user data directory (e.g. ~/.local/share/hemaedge/models)."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("hemaedge")) / "models"


def default_store() -> "ModelStore":
    return ModelStore(default_store_path())


def backend_available(backend: str) -> str | None:
    """The module(s) that would run `backend` here, or None (checked without importing them)."""
    from hemaedge.edge.backends import REGISTRY

    info = REGISTRY.get(backend)
    return info.available() if info else None


def manifest_digest(bundle_root) -> str:
    """sha256 of manifest.json: it lists every file's sha256, so it names the whole bundle."""
    return hashlib.sha256((Path(bundle_root) / MANIFEST_NAME).read_bytes()).hexdigest()


def contract_changes(old: dict, new: dict) -> list[str]:
    """What differs between two manifests in what the running configuration relies on."""
    changes = []
    old_c, new_c = list(old.get("classes", [])), list(new.get("classes", []))
    if old_c != new_c:
        removed = [c for c in old_c if c not in new_c]
        added = [c for c in new_c if c not in old_c]
        detail = []
        if removed:
            detail.append(f"removed {removed}")
        if added:
            detail.append(f"added {added}")
        if not removed and not added:
            detail.append("same names in a different order (class indices change)")
        changes.append(f"class list: {len(old_c)} -> {len(new_c)} classes, " + ", ".join(detail))
    old_in, new_in = old.get("input", {}), new.get("input", {})
    for key in sorted(set(old_in) | set(new_in)):
        if old_in.get(key) != new_in.get(key):
            changes.append(f"input contract {key}: {old_in.get(key)!r} -> {new_in.get(key)!r}")
    return changes


def manifest_accuracy(manifest: dict):
    """The accuracy recorded at export (test split preferred), or None."""
    from hemaedge.edge.manifest import Manifest

    try:
        return Manifest.from_dict(manifest).accuracy()
    except BundleError:
        return None


def state_problems(state: dict) -> list[str]:
    """What is wrong with a parsed store.json (empty list: valid). Checked on every read."""
    problems = []
    versions = state.get("versions")
    if not isinstance(versions, dict):
        return [f"'versions' must be an object, not {type(versions).__name__}"]
    for name, rec in versions.items():
        if not VERSION_NAME.fullmatch(name) or name in (".", ".."):
            problems.append(f"version name {name!r:.100} is not a valid version name (letters, digits, '.', '_', "
                            "'-'; no path separators)")
        elif not isinstance(rec, dict):
            problems.append(f"version {name}: its record must be an object")
        elif not isinstance(rec.get("seq"), int) or isinstance(rec.get("seq"), bool) or rec["seq"] < 1:
            problems.append(f"version {name}: 'seq' must be a positive whole number")
        elif not all(isinstance(rec.get(k, ""), str) for k in ("installed", "manifest_sha256", "source", "name",
                                                                "built_from")):
            problems.append(f"version {name}: installed, manifest_sha256, source, name and built_from must be strings")
    active = state.get("active")
    if active is not None and (not isinstance(active, str) or not VERSION_NAME.fullmatch(active)):
        problems.append(f"the active version {active!r:.100} is not a valid version name")
    history = state.get("history", [])
    if not isinstance(history, list) or not all(isinstance(v, str) and VERSION_NAME.fullmatch(v) for v in history):
        problems.append("'history' must be a list of valid version names")
    seq = state.get("next_seq", 1)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        problems.append("'next_seq' must be a positive whole number")
    settings = state.get("settings", {})
    if not isinstance(settings, dict):
        problems.append("'settings' must be an object")
    elif not isinstance(settings.get("require_signature", False), bool):
        problems.append("settings.require_signature must be true or false")
    return problems


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")[:60]
    return slug or "model"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _copy_synced(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def _pause(point: str) -> None:
    spec = os.environ.get(PAUSE_ENV, "")
    name, _, seconds = spec.partition(":")
    if name == point:
        print(f"hemaedge-store-pause: {point}", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 60))


@dataclass
class VersionInfo:
    """One installed version, as `hemaedge edge models` lists it."""

    version: str
    path: Path
    active: bool
    installed: str
    seq: int
    manifest_sha256: str
    name: str = ""
    backend: str = ""
    model_format: str = ""
    classes: list = field(default_factory=list)
    input: dict = field(default_factory=dict)
    size_bytes: int = 0
    accuracy: float | None = None
    accuracy_split: str = ""
    validation: str = ""  # the exporter's parity verdict: passed / failed-validation / not-validated
    problem: str = ""  # filled when the directory is missing or fails verification

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass
class InstallResult:
    version: str
    previous: str | None
    path: Path
    manifest_sha256: str
    reused: bool = False  # the same bundle was already installed: re-activated, not copied
    changes: list = field(default_factory=list)  # accepted class/contract changes
    pruned: list = field(default_factory=list)
    files: dict = field(default_factory=dict)  # name -> sha256 of the installed copy
    seconds: float = 0.0  # wall time of the whole install (verify, copy, re-verify, switch)
    signed_by: str | None = None  # key id of a trusted key that validly signed the bundle

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


class ModelStore:
    """A versioned store of verified bundles with one active version."""

    def __init__(self, root):
        self.root = Path(root).expanduser()
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / ".staging"
        self.state_path = self.root / STATE_NAME
        self.lock_path = self.root / ".lock"

    # ------------------------------------------------------------------ state

    def _empty_state(self) -> dict:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "active": None,
                "history": [], "next_seq": 1, "versions": {}}

    def read_state(self) -> dict:
        if not self.state_path.exists():
            return self._empty_state()
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{self.state_path}: store state is unreadable ({exc}); "
                             "it is only ever replaced atomically, so the disk may be damaged") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise StoreError(f"{self.state_path}: not a hemaedge model store state file")
        if state.get("version") != STATE_VERSION:
            raise StoreError(f"{self.state_path}: store format version {state.get('version')!r} "
                             f"is not supported by this hemaedge (supports {STATE_VERSION}); upgrade hemaedge")
        for key, value in self._empty_state().items():
            state.setdefault(key, value)
        problems = state_problems(state)
        if problems:
            raise StoreError(f"{self.state_path}: the store state is not valid (edited by hand or damaged), so "
                             "nothing was changed:\n  - " + "\n  - ".join(problems[:10]) +
                             "\nRestore it from a backup, or move the store folder away and install again.")
        return state

    def _write_state(self, state: dict) -> None:
        """The commit point: one atomic replace of store.json."""
        fd, tmp = tempfile.mkstemp(prefix=".store.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(self.root)

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self, timeout: float = 600.0, on_wait=None):
        """Exclusive store lock (fcntl.flock); released by the kernel if the holder dies."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited and on_wait:
                        on_wait(self._lock_holder(fd))
                    waited = True
                    if time.monotonic() > deadline:
                        raise StoreError(f"{self.root}: another install has held the store lock for "
                                         f"over {timeout:.0f} s; try again later") from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @staticmethod
    def _lock_holder(fd) -> str:
        with contextlib.suppress(OSError):
            return os.pread(fd, 32, 0).decode(errors="replace").strip()
        return ""

    # ------------------------------------------------------------------ queries

    def version_path(self, version: str) -> Path:
        """The folder of an installed version; never outside `versions/` whatever the name says."""
        if not isinstance(version, str) or not VERSION_NAME.fullmatch(version) or version in (".", ".."):
            raise StoreError(f"{version!r} is not a valid model version name")
        path = self.versions_dir / version
        if not path.resolve().is_relative_to(self.versions_dir.resolve()):
            raise StoreError(f"{self.root}: version {version} resolves outside the store "
                             "(a symbolic link?); refusing to use it")
        return path

    def active_version(self) -> str | None:
        return self.read_state().get("active")

    def active_path(self) -> Path | None:
        """The active bundle's folder, or None when nothing is installed (used by `edge run`)."""
        state = self.read_state()
        active = state["active"]
        if not active:
            return None
        path = self.version_path(active)
        if active not in state["versions"] or not (path / MANIFEST_NAME).is_file():
            # never fall back silently to some other model: the active one is gone
            raise StoreError(f"{self.root}: the active model {active} is missing from the store "
                             "(deleted by hand or a damaged disk); run `hemaedge edge rollback` or "
                             "install a bundle again")
        return path

    def list_versions(self, verify: bool = False) -> list[VersionInfo]:
        """Installed versions, oldest first."""
        state = self.read_state()
        rows = []
        for version, rec in sorted(state["versions"].items(), key=lambda kv: kv[1]["seq"]):
            path = self.version_path(version)
            info = VersionInfo(version=version, path=path, active=version == state["active"],
                               installed=rec.get("installed", ""), seq=rec["seq"],
                               manifest_sha256=rec.get("manifest_sha256", ""))
            try:
                manifest = load_manifest(path)
            except BundleError as exc:
                info.problem = f"unreadable: {exc}" if path.is_dir() else "directory missing"
                rows.append(info)
                continue
            info.name = manifest.name
            info.backend = manifest.model.backend
            info.model_format = manifest.model.format
            info.classes = list(manifest.classes)
            info.input = dict(manifest.raw["input"])
            info.size_bytes = manifest.size_bytes
            acc = manifest.accuracy()
            if acc:
                info.accuracy, info.accuracy_split = acc
            info.validation = manifest.validation_status
            if verify:
                info.problem = "; ".join(self._verify_version(path, info.manifest_sha256, manifest))
            rows.append(info)
        return rows

    def _verify_version(self, path: Path, digest: str, manifest) -> list[str]:
        """What `edge models --verify` checks: checksums, the manifest unchanged, and a smoke run."""
        problems = verify_bundle(path)
        if manifest_digest(path) != digest:
            problems.insert(0, "manifest.json changed since install")
        if not problems:
            if backend_available(manifest.model.backend) is None:
                problems.append(f"the {manifest.model.backend} back end is not installed here, so the model "
                                "could not be loaded")
            else:
                try:
                    check_runnable(Bundle(path, manifest.to_dict()))
                except BundleError as exc:
                    problems.append(str(exc))
        return problems

    # ------------------------------------------------------------------ signatures

    @property
    def trust(self):
        from hemaedge.edge.signing import TrustStore

        return TrustStore(self.root)

    def requires_signature(self) -> bool:
        """The store setting: accept only bundles signed by a trusted key (`edge trust require`)."""
        return bool(self.read_state().get("settings", {}).get("require_signature", False))

    def set_require_signature(self, on: bool, lock_timeout: float = 600.0) -> None:
        if on and not self.trust.keys():
            raise StoreError(f"{self.root}: no trusted keys yet, so no bundle could be installed; "
                             "add one first with `hemaedge edge trust add KEY.pub`")
        with self.lock(lock_timeout):
            state = self.read_state()
            state.setdefault("settings", {})["require_signature"] = bool(on)
            self._write_state(state)

    def check_signature(self, manifest: dict, require: bool = False) -> str | None:
        """The trusted key id that signed `manifest`, or None for an unsigned bundle where allowed.

        A signature is always checked when the key is trusted here (a wrong one is refused even
        if signatures are not required); BundleError when required and missing or not trusted."""
        from hemaedge.edge.signing import check_signature

        required = require or self.requires_signature()
        sig = manifest.get("signature")
        if not required:
            if not isinstance(sig, dict):
                return None
            trusted = self.trust.keys()
            if sig.get("key_id") not in trusted:
                return None  # signed by a key this device does not know, and nothing requires it
            return check_signature(manifest, trusted)
        return check_signature(manifest, self.trust.keys())

    def _signed_by(self, manifest: dict, require: bool, built_from: str | None) -> str | None:
        """check_signature, where an engine built on this device from an installed version is
        vouched for by that version's signature (an engine cannot be signed on the build machine)."""
        if not built_from:
            return self.check_signature(manifest, require)
        parent = self.version_path(built_from)
        source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
        if not (parent / MANIFEST_NAME).is_file() or source.get("onnx_manifest_sha256") != manifest_digest(parent):
            raise BundleError(f"this engine bundle was not built from the installed version {built_from}; "
                              "its signature cannot vouch for it")
        return self.check_signature(read_manifest(parent), require)

    def signature_status(self, manifest: dict) -> str:
        """One line for `edge verify`: unsigned, valid by a trusted key, or by a key not trusted here.
        A signature by a trusted key that does not match raises BundleError."""
        sig = manifest.get("signature")
        if not isinstance(sig, dict):
            return "none (unsigned)" + (" - this store requires signed bundles" if self.requires_signature() else "")
        kid = self.check_signature(manifest)
        if kid:
            return f"valid, key {kid} (trusted in {self.trust.dir})"
        return (f"by key {str(sig.get('key_id'))[:40]}, which is not in this device's trust store "
                f"({self.trust.dir}), so it was not checked")

    # ------------------------------------------------------------------ install

    def install(self, bundle_dir, *, keep: int = DEFAULT_KEEP, accept_change: bool = False,
                check_backend: bool = True, source: str | None = None, lock_timeout: float = 600.0,
                on_wait=None, require_signature: bool = False, built_from: str | None = None) -> InstallResult:
        """Verify `bundle_dir`, copy it into a new version and make it active, atomically.

        Raises BundleError (bundle damaged/unsafe), StoreError (back end missing, store
        problem) or ContractChangeError (class list or input contract differ from the active
        version and `accept_change` is False). On any failure the active model is unchanged.
        """
        start = time.monotonic()
        result = self._install(bundle_dir, keep=keep, accept_change=accept_change, check_backend=check_backend,
                               source=source, lock_timeout=lock_timeout, on_wait=on_wait,
                               require_signature=require_signature, built_from=built_from)
        result.seconds = round(time.monotonic() - start, 3)
        return result

    def _install(self, bundle_dir, *, keep, accept_change, check_backend, source, lock_timeout,
                 on_wait, require_signature, built_from) -> InstallResult:
        if keep < 1:
            raise StoreError(f"--keep must be at least 1 (got {keep})")
        bundle_dir = Path(bundle_dir)
        bundle = load_bundle(bundle_dir)  # schema, checksums, path escapes
        self._signed_by(bundle.manifest, require_signature, built_from)  # early: before copying anything
        if check_backend and backend_available(bundle.backend) is None:
            from hemaedge.edge.backends import REGISTRY

            info = REGISTRY[bundle.backend]
            raise StoreError(
                f"{bundle_dir}: this bundle needs the {bundle.backend!r} back end, which is not installed "
                f"on this device (missing: {'; '.join(info.missing())}): {info.install_hint}")
        manifest_bytes = (bundle_dir / MANIFEST_NAME).read_bytes()
        digest = hashlib.sha256(manifest_bytes).hexdigest()

        with self.lock(lock_timeout, on_wait):
            _pause("locked")
            state = self.read_state()
            previous = state["active"]
            changes = []
            if previous and previous in state["versions"]:
                try:
                    changes = contract_changes(read_manifest(self.version_path(previous)), bundle.manifest)
                except BundleError:
                    changes = []  # the active one is damaged: nothing trustworthy to compare to
            if changes and not accept_change:
                raise ContractChangeError(
                    f"{bundle_dir} differs from the active model {previous} in what the running "
                    "configuration relies on:\n  - " + "\n  - ".join(changes) +
                    "\nNothing was changed. If this is intended, install again with --accept-change.",
                    changes)
            self._clean_debris(state)

            same = [v for v, rec in state["versions"].items()
                    if rec.get("manifest_sha256") == digest and self.version_path(v).is_dir()]
            if same:  # identical bundle already here: switch to it, copy nothing
                version = same[0]
                if check_backend:
                    check_runnable(Bundle(self.version_path(version), read_manifest(self.version_path(version))))
                if version != previous:
                    self._activate(state, version)
                    _pause("committed")
                pruned = self._prune(keep)
                return InstallResult(version, previous if previous != version else self._prev_of(version),
                                     self.version_path(version), digest, reused=True, changes=changes,
                                     pruned=pruned, files=_installed_digests(self.version_path(version)),
                                     signed_by=self._signed_by(bundle.manifest, require_signature, built_from))

            seq = int(state.get("next_seq", 1))
            version = f"{_slug(bundle.manifest.get('name') or bundle_dir.name)}-{seq}"
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f"{version}.", dir=self.staging_dir))
            try:
                self._stage(bundle_dir, bundle.manifest, manifest_bytes, staging)
                signed_by = self._signed_by(read_manifest(staging), require_signature, built_from)  # what is activated
                if check_backend:  # the very copy that will be activated must load and run
                    check_runnable(Bundle(staging, bundle.manifest))
                _pause("staged")
                final = self.version_path(version)
                replace_dir(staging, final, fsync=True)  # a folder already there: an orphan of a crashed install
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _pause("placed")
            state["versions"][version] = {
                "seq": seq, "installed": _now(), "manifest_sha256": digest,
                "source": source or str(bundle_dir.resolve()),
                "name": bundle.manifest.get("name", ""),
            }
            if built_from:
                state["versions"][version]["built_from"] = built_from
            state["next_seq"] = seq + 1
            self._activate(state, version)
            _pause("committed")
            pruned = self._prune(keep)
            return InstallResult(version, previous, final, digest, changes=changes, pruned=pruned,
                                 files=_installed_digests(final), signed_by=signed_by)

    def _stage(self, bundle_dir: Path, manifest: dict, manifest_bytes: bytes, staging: Path) -> None:
        """Copy only the files the manifest lists (plus the manifest) and re-verify the copy."""
        for name in manifest["files"]:
            rel = _safe_relpath(name)
            _copy_synced(bundle_dir / rel, staging / rel)
        with open(staging / MANIFEST_NAME, "wb") as fh:
            fh.write(manifest_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        problems = verify_bundle(staging)
        if problems:
            raise BundleError(f"{bundle_dir} changed while it was being copied (or the disk is failing):\n  - "
                              + "\n  - ".join(problems))
        for sub in sorted({p for p in staging.rglob("*") if p.is_dir()}, reverse=True):
            fsync_dir(sub)
        fsync_dir(staging)

    def _activate(self, state: dict, version: str) -> None:
        previous = state["active"]
        if previous and previous != version:
            history = [v for v in state["history"] if v != previous and v != version]
            state["history"] = history + [previous]
        else:
            state["history"] = [v for v in state["history"] if v != version]
        state["active"] = version
        state["switched"] = _now()
        self._write_state(state)

    def _prev_of(self, version: str):
        hist = self.read_state()["history"]
        return hist[-1] if hist else None

    def _clean_debris(self, state: dict) -> None:
        """Remove what crashed installs left: staging folders and uncommitted version folders.

        Called with the lock held, so nothing in `.staging/` can belong to a live install.
        """
        if self.staging_dir.is_dir():
            for item in self.staging_dir.iterdir():
                shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
        if self.versions_dir.is_dir():
            for item in self.versions_dir.iterdir():
                if item.name not in state["versions"]:
                    shutil.rmtree(item, ignore_errors=True)
        for tmp in self.root.glob(".store.*.tmp"):
            tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ prune / rollback

    def _prune(self, keep: int) -> list[str]:
        """Keep the `keep` newest versions and the active one; drop the rest (lock held)."""
        state = self.read_state()
        by_age = sorted(state["versions"], key=lambda v: state["versions"][v]["seq"], reverse=True)
        keep_set = set(by_age[:keep]) | {state["active"]}
        doomed = [v for v in by_age if v not in keep_set]
        if not doomed:
            return []
        for v in doomed:
            del state["versions"][v]
        state["history"] = [v for v in state["history"] if v in state["versions"]]
        self._write_state(state)  # forget them first, then delete: never a listed-but-gone version
        for v in doomed:
            shutil.rmtree(self.version_path(v), ignore_errors=True)
        return doomed

    def prune(self, keep: int = DEFAULT_KEEP, lock_timeout: float = 600.0) -> list[str]:
        if keep < 1:
            raise StoreError(f"--keep must be at least 1 (got {keep})")
        with self.lock(lock_timeout):
            return self._prune(keep)

    def rollback(self, to: str | None = None, *, accept_change: bool = False,
                 lock_timeout: float = 600.0) -> tuple[str, str | None, list[str]]:
        """Make the previously active version (or `to`) active again; returns (new, old, changes)."""
        with self.lock(lock_timeout):
            state = self.read_state()
            current = state["active"]
            if to is None:
                candidates = [v for v in reversed(state["history"])
                              if v in state["versions"] and self.version_path(v).is_dir()]
                if not candidates:
                    raise StoreError(f"{self.root}: no earlier version to roll back to "
                                     f"(active: {current or 'none'}); see `hemaedge edge models`")
                target = candidates[0]
            else:
                if to not in state["versions"]:
                    known = ", ".join(state["versions"]) or "none"
                    raise StoreError(f"version {to!r} is not installed in {self.root} (installed: {known})")
                target = to
            if target == current:
                raise StoreError(f"{target} is already the active version")
            problems = verify_bundle(self.version_path(target))
            if problems:
                raise StoreError(f"{target} failed verification and stays inactive:\n  - " + "\n  - ".join(problems))
            self._signed_by(read_manifest(self.version_path(target)), False,
                            state["versions"][target].get("built_from"))
            changes = []
            if current and current in state["versions"]:
                with contextlib.suppress(BundleError):
                    changes = contract_changes(read_manifest(self.version_path(current)),
                                               read_manifest(self.version_path(target)))
            if changes and not accept_change:
                raise ContractChangeError(
                    f"rolling back from {current} to {target} changes what the running configuration "
                    "relies on:\n  - " + "\n  - ".join(changes) +
                    "\nNothing was changed. If this is intended, run again with --accept-change.", changes)
            if to is None:  # a plain rollback pops the history (the version left is not pushed)
                state["history"] = [v for v in state["history"] if v != target]
                state["active"] = target
                state["switched"] = _now()
                self._write_state(state)
            else:  # choosing a version is an activation: the current one can be rolled back to
                self._activate(state, target)
            return target, current, changes


def _installed_digests(path: Path) -> dict:
    manifest = read_manifest(path)
    files = {name: info["sha256"] for name, info in manifest["files"].items()}
    files[MANIFEST_NAME] = manifest_digest(path)
    return files
