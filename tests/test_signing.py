"""Only trusted bundles run: Ed25519 key pairs, signed bundles, the device's trust store and
`--require-signature` (issue 16, "Only trusted bundles run")."""
from __future__ import annotations

import json
import stat
import tarfile

import pytest
from click.testing import CliRunner

from hemaedge.cli import main
from hemaedge.edge.bundle import read_manifest
from hemaedge.edge.errors import BundleError, UsageError
from hemaedge.edge.signing import check_signature, read_public_key, read_signing_key, sign_bundle
from hemaedge.edge.store import ModelStore
from store_helpers import make_bundle, tiny_onnx
from trust_helpers import edit_manifest, rehash



def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def keys(tmp_path):
    r = cli("keys", "new", "--out", tmp_path / "keys", "--name", "lab", "--comment", "haematology lab")
    assert r.exit_code == 0, r.output
    other = cli("keys", "new", "--out", tmp_path / "keys", "--name", "other")
    assert other.exit_code == 0, other.output
    return tmp_path / "keys"


def test_keys_new_private_file_is_0600_and_never_overwritten(keys):
    assert stat.S_IMODE((keys / "lab.key").stat().st_mode) == 0o600
    assert read_signing_key(keys / "lab.key").key_id == read_public_key(keys / "lab.pub").key_id
    r = cli("keys", "new", "--out", keys, "--name", "lab")
    assert r.exit_code == 2 and "never overwritten" in r.output
    with pytest.raises(UsageError, match="PRIVATE key"):
        read_public_key(keys / "lab.key")
    with pytest.raises(UsageError, match="public key"):
        read_signing_key(keys / "lab.pub")


def test_signature_covers_manifest_and_every_file_digest(tmp_path, keys):
    bundle = make_bundle(tmp_path, "signed")
    r = cli("keys", "sign", bundle, "--key", keys / "lab.key")
    assert r.exit_code == 0, r.output
    trusted = {k.key_id: k for k in [read_public_key(keys / "lab.pub")]}
    manifest = read_manifest(bundle)
    assert check_signature(manifest, trusted) == read_public_key(keys / "lab.pub").key_id
    # an edited manifest value breaks the signature
    edited = json.loads(json.dumps(manifest))
    edited["classes"][0] = "blast"
    with pytest.raises(BundleError, match="does not match"):
        check_signature(edited, trusted)
    # so does a swapped file whose new digest was written into the manifest
    tiny_onnx(bundle / "model.onnx", 8, 128, "swapped")
    rehash(bundle)
    with pytest.raises(BundleError, match="does not match"):
        check_signature(read_manifest(bundle), trusted)
    # a key this device does not trust
    with pytest.raises(BundleError, match="does not trust"):
        check_signature(manifest, {})


def test_install_require_signature(tmp_path, keys):
    store = tmp_path / "store"
    unsigned = make_bundle(tmp_path / "b", "unsigned")
    good = make_bundle(tmp_path / "b", "good")
    by_other = make_bundle(tmp_path / "b", "by-other")
    edited = make_bundle(tmp_path / "b", "edited")
    for b, key in ((good, "lab"), (by_other, "other"), (edited, "lab")):
        sign_bundle(b, read_signing_key(keys / f"{key}.key"))
    edit_manifest(edited, lambda m: m["input"].update(preprocess="clahe"))

    assert cli("edge", "trust", "add", keys / "lab.pub", "--store", store).exit_code == 0
    r = cli("edge", "trust", "add", keys / "lab.key", "--store", store)
    assert r.exit_code == 2 and "PRIVATE key" in r.output
    assert not list((store / "trusted_keys").glob("*.key"))
    listed = cli("edge", "trust", "list", "--store", store)
    assert read_public_key(keys / "lab.pub").key_id in listed.output and "not required" in listed.output

    for bundle, needle in ((unsigned, "not signed"), (by_other, "does not trust"), (edited, "does not match")):
        r = cli("edge", "install", bundle, "--store", store, "--require-signature")
        assert r.exit_code == 2 and needle in r.output, r.output
        assert ModelStore(store).active_version() is None
    r = cli("edge", "install", good, "--store", store, "--require-signature")
    assert r.exit_code == 0 and "signed by trusted key" in r.output, r.output

    # a wrong signature by a trusted key is refused even when signatures are not required
    r = cli("edge", "install", edited, "--store", store, "--accept-change")
    assert r.exit_code == 2 and "does not match" in r.output
    # the store setting makes it permanent: a plain install of an unsigned bundle is refused
    assert cli("edge", "trust", "require", "--store", store).exit_code == 0
    r = cli("edge", "install", unsigned, "--store", store)
    assert r.exit_code == 2 and "not signed" in r.output
    assert ModelStore(store).active_version() == "good-1"
    assert cli("edge", "trust", "require", "--off", "--store", store).exit_code == 0
    assert cli("edge", "install", unsigned, "--store", store).exit_code == 0


def test_require_without_trusted_keys_is_refused(tmp_path):
    r = cli("edge", "trust", "require", "--store", tmp_path / "store")
    assert r.exit_code == 2 and "no trusted keys" in r.output


def test_deploy_carries_the_signature_and_never_a_private_key(tmp_path, keys):
    from hemaedge.deploy import pack_bundle

    bundle = make_bundle(tmp_path, "signed")
    sign_bundle(bundle, read_signing_key(keys / "lab.key"))
    (bundle / "lab.key").write_bytes((keys / "lab.key").read_bytes())  # left there by mistake
    pack_bundle(bundle, tmp_path / "b.tar")
    with tarfile.open(tmp_path / "b.tar") as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("bundle/manifest.json"))
    assert "bundle/lab.key" not in names and manifest["signature"]["key_id"] == read_signing_key(keys / "lab.key").key_id


def test_export_bundle_sign_and_refuse_mismatched_classes(tmp_path, keys):
    pytest.importorskip("tensorflow")
    from edge_helpers import cached_tflite

    model, _ = cached_tflite(32)
    r = cli("export", "bundle", model, "--classes", "a,b,c", "--size", 32, "--out", tmp_path / "ok",
            "--sign", keys / "lab.key")
    assert r.exit_code == 0, r.output
    trusted = {read_public_key(keys / "lab.pub").key_id: read_public_key(keys / "lab.pub")}
    check_signature(read_manifest(tmp_path / "ok"), trusted)
    # issue 16 #10: a 3-output model wrapped with two class names is refused, nothing written
    r = cli("export", "bundle", model, "--classes", "a,b", "--size", 32, "--out", tmp_path / "bad")
    assert r.exit_code == 2 and "3 outputs but the bundle lists 2 classes" in r.output, r.output
    assert not (tmp_path / "bad").exists()
    r = cli("export", "bundle", model, "--classes", "a,b,c", "--size", 32, "--out", tmp_path / "x",
            "--sign", keys / "lab.pub")
    assert r.exit_code == 2 and "public key" in r.output and not (tmp_path / "x").exists()


def test_edge_run_respects_the_store_signature_policy(tmp_path, keys, monkeypatch):
    from hemaedge.edge.defaults import load_model

    store = tmp_path / "store"
    monkeypatch.setenv("HEMAEDGE_STORE", str(store))
    unsigned = make_bundle(tmp_path / "b", "unsigned", size=32)
    signed = make_bundle(tmp_path / "b", "signed", size=32)
    sign_bundle(signed, read_signing_key(keys / "lab.key"))
    assert load_model(bundle=unsigned).classes  # no policy: runs
    assert cli("edge", "trust", "add", keys / "lab.pub", "--store", store).exit_code == 0
    assert cli("edge", "trust", "require", "--store", store).exit_code == 0
    with pytest.raises(BundleError, match="not signed"):
        load_model(bundle=unsigned)
    with pytest.raises(BundleError, match="cannot be signed"):
        load_model(model=signed / "model.onnx", classes="a,b,c,d,e,f,g,h")
    assert load_model(bundle=signed).classes
    r = cli("edge", "run", "--bundle", unsigned, "--source", "samples", "--out", tmp_path / "o", "--max-frames", 1)
    assert r.exit_code == 2 and "requires signed bundles" in r.output


def test_engine_built_on_device_is_vouched_for_by_its_signed_onnx_version(tmp_path, keys, monkeypatch):
    """--build-engine under a signature policy: the engine (built here, unsigned) is accepted because
    the signed ONNX version it was built from is; an engine from elsewhere is not."""
    from test_store_engine import FAKE_TRTEXEC  # the stand-in trtexec of the engine tests
    import os
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "trtexec"
    exe.write_text(FAKE_TRTEXEC.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    store = tmp_path / "store"
    bundle = make_bundle(tmp_path / "b", "signed", size=32)
    sign_bundle(bundle, read_signing_key(keys / "lab.key"))
    assert cli("edge", "trust", "add", keys / "lab.pub", "--store", store).exit_code == 0
    assert cli("edge", "trust", "require", "--store", store).exit_code == 0
    r = cli("edge", "install", bundle, "--store", store, "--build-engine", "--max-batch", 4, "--no-backend-check",
            "--json")
    assert r.exit_code == 0, r.output
    s = ModelStore(store)
    assert s.active_version() == "signed-trt-fp16-2"
    # the engine bundle on its own (not built from an installed version) is refused: unsigned
    with pytest.raises(BundleError, match="not signed"):
        s.install(s.active_path(), check_backend=False, keep=5)


def test_verify_reports_the_signature(tmp_path, keys, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("HEMAEDGE_STORE", str(store))
    b = make_bundle(tmp_path / "b", "v", size=32)
    assert "signature: none (unsigned)" in cli("edge", "verify", b).output
    sign_bundle(b, read_signing_key(keys / "lab.key"))
    assert "not in this device's trust store" in cli("edge", "verify", b).output
    assert cli("edge", "trust", "add", keys / "lab.pub", "--store", store).exit_code == 0
    r = cli("edge", "verify", b)
    assert r.exit_code == 0 and "signature: valid, key" in r.output, r.output
    edit_manifest(b, lambda m: m.update(name="edited"))
    r = cli("edge", "verify", b)
    assert r.exit_code == 2 and "does not match" in r.output
