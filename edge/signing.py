"""Signed bundles: Ed25519 signatures (PyNaCl) over the manifest and so over every file digest.

* A key pair is two small JSON files: `<name>.key` (private, mode 0600, stays on the build
  machine) and `<name>.pub` (public, goes into a device's trust store).
* A signature lives in the manifest's `signature` field. It signs the canonical JSON of the
  manifest without that field (sorted keys, no spaces, UTF-8). The manifest lists the sha256 and
  size of every file, so editing the manifest *or* any file is caught: the first breaks the
  signature, the second the checksum that the signature covers.
* A device trusts the public keys in its model store's `trusted_keys/` folder
  (`hemaedge edge trust add KEY.pub`). Private keys are refused there.
"""
from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from hemaedge.edge.errors import BundleError, UsageError

ALGORITHM = "ed25519"
PRIVATE_FORMAT = "hemaedge-signing-key"
PUBLIC_FORMAT = "hemaedge-public-key"
MAX_KEY_FILE_BYTES = 64 << 10


def _nacl():
    try:
        import nacl.exceptions
        import nacl.signing
    except ImportError:
        raise BundleError("bundle signatures need PyNaCl, which is not installed here: "
                          "pip install 'hemaedge[edge]' (or pip install pynacl)") from None
    return nacl.signing, nacl.exceptions


def key_id(public_key: bytes) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def canonical_payload(manifest: dict) -> bytes:
    """The exact bytes a signature covers: the manifest without `signature`, canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except ValueError as exc:
        raise BundleError(f"the manifest cannot be signed or checked: {exc}") from None


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    raw: bytes  # 32 bytes
    comment: str = ""

    def to_dict(self) -> dict:
        return {"format": PUBLIC_FORMAT, "algorithm": ALGORITHM, "key_id": self.key_id,
                "public_key": base64.b64encode(self.raw).decode(), "comment": self.comment}


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    seed: bytes  # 32 bytes
    comment: str = ""

    def public(self) -> PublicKey:
        signing, _ = _nacl()
        return PublicKey(self.key_id, bytes(signing.SigningKey(self.seed).verify_key), self.comment)


# ----------------------------------------------------------------------------- key files


def new_key_pair(out_dir, name: str = "hemaedge", comment: str = "") -> tuple[Path, Path]:
    """Write `<name>.key` (0600) and `<name>.pub` into out_dir; never overwrites a key."""
    signing, _ = _nacl()
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"key name {name!r} must be a plain file name")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise UsageError(f"{p} exists; keys are never overwritten (choose another --name or folder)")
    sk = signing.SigningKey.generate()
    pub = bytes(sk.verify_key)
    kid = key_id(pub)
    private = {"format": PRIVATE_FORMAT, "algorithm": ALGORITHM, "key_id": kid, "comment": comment,
               "private_key": base64.b64encode(bytes(sk)).decode(),
               "warning": "PRIVATE KEY: keep it on the build machine; never copy it to a device"}
    # created 0600 from the start (no moment where another user could read it)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(private, fh, indent=2)
    os.chmod(priv_path, 0o600)
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(PublicKey(kid, pub, comment).to_dict(), fh, indent=2)
    return priv_path, pub_path


def _read_key_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such key file")
    if path.stat().st_size > MAX_KEY_FILE_BYTES:
        raise UsageError(f"{path}: too large to be a hemaedge key file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UsageError(f"{path}: not a hemaedge key file (not JSON); make keys with `hemaedge keys new`") from None
    if not isinstance(data, dict) or data.get("algorithm") != ALGORITHM:
        raise UsageError(f"{path}: not a hemaedge {ALGORITHM} key file; make keys with `hemaedge keys new`")
    return data


def _b64_32(value, path, what) -> bytes:
    try:
        raw = base64.b64decode(value if isinstance(value, str) else "", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"{path}: the {what} is damaged (expected 32 bytes of base64)")
    return raw


def read_signing_key(path) -> SigningKey:
    data = _read_key_json(path)
    if data.get("format") == PUBLIC_FORMAT:
        raise UsageError(f"{path} is a public key; signing needs the private .key file made with it")
    if data.get("format") != PRIVATE_FORMAT:
        raise UsageError(f"{path}: not a hemaedge signing key")
    seed = _b64_32(data.get("private_key"), path, "private key")
    signing, _ = _nacl()
    pub = bytes(signing.SigningKey(seed).verify_key)
    return SigningKey(key_id(pub), seed, str(data.get("comment") or ""))


def read_public_key(path) -> PublicKey:
    data = _read_key_json(path)
    if data.get("format") == PRIVATE_FORMAT or "private_key" in data:
        raise UsageError(f"{path} is a PRIVATE key: a device needs only the public .pub file, and private keys "
                         "must never be copied to devices")
    if data.get("format") != PUBLIC_FORMAT:
        raise UsageError(f"{path}: not a hemaedge public key")
    raw = _b64_32(data.get("public_key"), path, "public key")
    return PublicKey(key_id(raw), raw, str(data.get("comment") or ""))


# ----------------------------------------------------------------------------- signing / checking


def sign_manifest(manifest: dict, key: SigningKey) -> dict:
    """A copy of `manifest` with its `signature` field set (any old signature replaced)."""
    signing, _ = _nacl()
    signed = copy.deepcopy(manifest)
    sig = signing.SigningKey(key.seed).sign(canonical_payload(signed)).signature
    signed["signature"] = {"algorithm": ALGORITHM, "key_id": key.key_id,
                           "value": base64.b64encode(sig).decode()}
    return signed


def check_signature(manifest: dict, trusted: dict) -> str:
    """The key id that validly signed `manifest`, among `trusted` (key id -> PublicKey).

    BundleError when the manifest is unsigned, signed by a key not trusted here, or the
    signature does not match (the manifest or a file digest was changed after signing)."""
    sig = manifest.get("signature")
    if sig is None:
        raise BundleError("the bundle is not signed, and this device accepts only signed bundles; "
                          "sign it with `hemaedge keys sign BUNDLE --key KEY` (or export with --sign KEY)")
    if not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM or not isinstance(sig.get("key_id"), str):
        raise BundleError(f"the bundle's signature is not an {ALGORITHM} hemaedge signature")
    kid = sig["key_id"]
    if kid not in trusted:
        known = ", ".join(sorted(trusted)) or "none"
        raise BundleError(f"the bundle is signed by key {kid[:40]}, which this device does not trust "
                          f"(trusted: {known}); add its public key with `hemaedge edge trust add KEY.pub`")
    try:
        value = base64.b64decode(sig.get("value") if isinstance(sig.get("value"), str) else "", validate=True)
    except (binascii.Error, ValueError):
        value = b""
    signing, exceptions = _nacl()
    try:
        if len(value) != 64:
            raise exceptions.BadSignatureError("wrong length")
        signing.VerifyKey(trusted[kid].raw).verify(canonical_payload(manifest), value)
    except exceptions.BadSignatureError:
        raise BundleError(f"the bundle's signature (key {kid}) does not match its manifest: the manifest or a "
                          "file's checksum was changed after signing; do not install it") from None
    return kid


def sign_bundle(bundle_dir, key: SigningKey) -> str:
    """Sign a bundle in place (the files must verify first); returns the key id."""
    from hemaedge.edge.bundle import MANIFEST_NAME, read_manifest, verify_bundle

    bundle_dir = Path(bundle_dir)
    problems = verify_bundle(bundle_dir)
    if problems:
        raise BundleError(f"{bundle_dir} does not verify, so it is not signed:\n  - " + "\n  - ".join(problems))
    signed = sign_manifest(read_manifest(bundle_dir), key)
    path = bundle_dir / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.signing")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(signed, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return key.key_id


# ----------------------------------------------------------------------------- the device's trust store


class TrustStore:
    """Public keys a device accepts bundle signatures from: `<model store>/trusted_keys/<id>.pub`."""

    def __init__(self, root):
        self.dir = Path(root) / "trusted_keys"

    def add(self, pub_path) -> PublicKey:
        key = read_public_key(pub_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        dest = self.dir / f"{key.key_id}.pub"
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(json.dumps(key.to_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, dest)
        return key

    def remove(self, kid: str) -> None:
        path = self.dir / f"{kid}.pub"
        if not kid or "/" in kid or not path.is_file():
            raise UsageError(f"key {kid!r} is not in the trust store {self.dir}")
        path.unlink()

    def keys(self) -> dict:
        """key id -> PublicKey; a damaged key file is skipped (it can only make trust narrower)."""
        out = {}
        if self.dir.is_dir():
            for p in sorted(self.dir.glob("*.pub")):
                try:
                    key = read_public_key(p)
                except UsageError:
                    continue
                out[key.key_id] = key
        return out
