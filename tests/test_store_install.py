"""The device model store: install, list, roll back, prune, and what it refuses."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from click.testing import CliRunner

from hemaedge.edge import defaults
from hemaedge.edge.bundle import BundleError
from hemaedge.edge.store import (ContractChangeError, ModelStore, StoreError, backend_available,
                                 default_store, default_store_path)
from hemaedge.cli import main
from store_helpers import tiny_onnx, make_bundle


@pytest.fixture
def bundles(tmp_path):
    return {n: make_bundle(tmp_path / "bundles", n, accuracy=acc)
            for n, acc in (("bm-a", 0.81), ("bm-b", 0.85), ("bm-c", 0.87), ("bm-d", 0.9))}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_install_list_rollback_prune_via_cli(tmp_path, bundles):
    store = tmp_path / "store"
    r = invoke("edge", "install", bundles["bm-a"], "--store", store)
    assert r.exit_code == 0, r.output
    assert "Installed bm-a-1" in r.output
    r = invoke("edge", "install", bundles["bm-b"], "--store", store)
    assert r.exit_code == 0 and "previous: bm-a-1" in r.output

    r = invoke("edge", "models", "--store", store)
    assert r.exit_code == 0
    lines = {ln.split()[1] if ln.startswith("*") else ln.split()[0]: ln for ln in r.output.splitlines()[2:]}
    assert lines["bm-b-2"].startswith("*") and not lines["bm-a-1"].startswith("*")
    assert "0.8500 test" in lines["bm-b-2"] and "0.8100 test" in lines["bm-a-1"]
    assert "128px rgb/float32" in lines["bm-a-1"]

    r = invoke("edge", "rollback", "--store", store)
    assert r.exit_code == 0 and "now bm-a-1 (was bm-b-2)" in r.output
    assert ModelStore(store).active_path() == store / "versions" / "bm-a-1"
    # nothing earlier than the first version: a clear error, exit 2
    r = CliRunner().invoke(main, ["edge", "rollback", "--store", str(store)])
    assert r.exit_code == 2 and "no earlier version" in r.output
    # but any installed version can be chosen explicitly
    r = invoke("edge", "rollback", "--store", store, "--to", "bm-b-2")
    assert r.exit_code == 0 and ModelStore(store).active_version() == "bm-b-2"

    # prune beyond --keep: the oldest goes, the active one and the newest stay
    r = invoke("edge", "install", bundles["bm-c"], "--store", store, "--keep", "2")
    assert r.exit_code == 0 and "Pruned old versions: bm-a-1" in r.output
    assert not (store / "versions" / "bm-a-1").exists()
    versions = [v.version for v in ModelStore(store).list_versions(verify=True)]
    assert versions == ["bm-b-2", "bm-c-3"]

    listing = json.loads(invoke("edge", "models", "--store", store, "--json").output)
    assert [v["version"] for v in listing["versions"] if v["active"]] == ["bm-c-3"]


def test_prune_keeps_active_even_if_old(tmp_path, bundles):
    s = ModelStore(tmp_path / "store")
    for n in ("bm-a", "bm-b", "bm-c"):
        s.install(bundles[n])
    s.rollback(to="bm-a-1")
    pruned = s.prune(keep=1)
    assert sorted(pruned) == ["bm-b-2"]  # newest (bm-c-3) and active (bm-a-1) stay
    assert {v.version for v in s.list_versions()} == {"bm-a-1", "bm-c-3"}
    assert s.active_version() == "bm-a-1"
    # version numbers never repeat, even after pruning
    assert s.install(bundles["bm-d"]).version == "bm-d-4"


def test_rollback_history_follows_installs(tmp_path, bundles):
    s = ModelStore(tmp_path / "store")
    for n in ("bm-a", "bm-b", "bm-c"):
        s.install(bundles[n])
    assert s.rollback()[:2] == ("bm-b-2", "bm-c-3")
    assert s.rollback()[:2] == ("bm-a-1", "bm-b-2")
    with pytest.raises(StoreError, match="no earlier version"):
        s.rollback()


def test_reinstalling_same_bundle_reuses_version(tmp_path, bundles):
    s = ModelStore(tmp_path / "store")
    s.install(bundles["bm-a"])
    s.install(bundles["bm-b"])
    res = s.install(bundles["bm-a"])
    assert res.reused and res.version == "bm-a-1" and res.previous == "bm-b-2"
    assert len(s.list_versions()) == 2


def test_contract_change_reported_before_switch(tmp_path):
    s = ModelStore(tmp_path / "store")
    s.install(make_bundle(tmp_path, "eight"))
    six = make_bundle(tmp_path, "six", classes=["a", "b", "c", "d", "e", "f"])
    big = make_bundle(tmp_path, "big", size=224)
    with pytest.raises(ContractChangeError) as exc:
        s.install(six)
    assert any("class list: 8 -> 6" in c for c in exc.value.changes)
    with pytest.raises(ContractChangeError, match="input contract size: 128 -> 224"):
        s.install(big)
    assert s.active_version() == "eight-1" and len(s.list_versions()) == 1
    # the CLI refuses with exit 2 and says how to proceed
    r = CliRunner().invoke(main, ["edge", "install", str(six), "--store", str(s.root)])
    assert r.exit_code == 2 and "--accept-change" in r.output and "removed" in r.output
    r = CliRunner().invoke(main, ["edge", "install", str(six), "--store", str(s.root), "--accept-change"])
    assert r.exit_code == 0 and "Accepted change: class list" in r.output
    assert s.active_version() == "six-2"
    # rolling back across the change is reported too
    with pytest.raises(ContractChangeError):
        s.rollback()
    assert s.rollback(accept_change=True)[0] == "eight-1"


def _edit_manifest(bundle: Path, fn):
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_refuses_damaged_or_unsafe_bundles(tmp_path, bundles):
    s = ModelStore(tmp_path / "store")
    s.install(bundles["bm-a"])
    state_before = (s.root / "store.json").read_bytes()

    tampered = make_bundle(tmp_path / "t", "tampered")
    (tampered / "model.onnx").write_bytes(b"not what was exported")
    escape = make_bundle(tmp_path / "t", "escape")
    _edit_manifest(escape, lambda m: m["files"].update({"../../outside.txt": {"sha256": "0" * 64, "bytes": 1}}))
    future = make_bundle(tmp_path / "t", "future")
    _edit_manifest(future, lambda m: m.update(manifest_version=99))
    link = make_bundle(tmp_path / "t", "link")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (link / "extra" / "labels.txt").unlink()
    (link / "extra" / "labels.txt").symlink_to(secret)

    for bad, needle in ((tampered, "checksum mismatch"), (escape, "escapes the bundle"),
                        (future, "manifest version 99"), (link, "outside the bundle")):
        with pytest.raises(BundleError, match=needle):
            s.install(bad)
        r = CliRunner().invoke(main, ["edge", "install", str(bad), "--store", str(s.root)])
        assert r.exit_code == 2 and r.output.startswith("Error:") and "Traceback" not in r.output
    assert (s.root / "store.json").read_bytes() == state_before
    assert [p.name for p in (s.root / "versions").iterdir()] == ["bm-a-1"]


def test_install_copies_only_listed_files_and_never_unpickles(tmp_path):
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    pkl = tmp_path / "weights.pkl"
    pkl.write_bytes(pickle.dumps(Boom()))
    from hemaedge.edge.bundle import write_bundle
    from hemaedge.edge.preprocess import InputContract

    model = tiny_onnx(tmp_path / "tiny.onnx", 2, 128, "pickly")
    bundle = write_bundle(tmp_path / "pickly", {"model.onnx": model, "head.pkl": pkl}, model_file="model.onnx",
                          backend="onnx", model_format="onnx", classes=["a", "b"], contract=InputContract())
    (bundle / "unlisted.py").write_text("raise SystemExit('ran code from a bundle')\n")
    s = ModelStore(tmp_path / "store")
    res = s.install(bundle)  # loads and runs the model: still nothing unpickled
    assert not marker.exists()
    assert sorted(p.name for p in res.path.iterdir()) == ["head.pkl", "manifest.json", "model.onnx"]
    # a pickle posing as the model is refused as not a model, and still never unpickled
    with pytest.raises(BundleError, match="not a readable ONNX model"):
        write_bundle(tmp_path / "pickly2", {"model.onnx": pkl}, model_file="model.onnx", backend="onnx",
                     model_format="onnx", classes=["a", "b"], contract=InputContract())
    assert not marker.exists()


def test_backend_must_exist_on_device(tmp_path):
    if backend_available("tensorrt"):
        pytest.skip("TensorRT is installed here")
    trt = make_bundle(tmp_path, "trt", backend="tensorrt")
    s = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError, match="needs the 'tensorrt' back end"):
        s.install(trt)
    assert s.active_path() is None
    assert s.install(trt, check_backend=False).version == "trt-1"  # --no-backend-check
    assert backend_available("onnx") == "onnxruntime"


def test_default_store_location(tmp_path, monkeypatch, bundles):
    monkeypatch.setenv("HEMAEDGE_STORE", str(tmp_path / "envstore"))
    assert default_store_path() == tmp_path / "envstore"
    assert default_store().active_path() is None  # nothing installed: `edge run` needs --bundle
    r = invoke("edge", "install", bundles["bm-a"])
    assert r.exit_code == 0
    assert default_store().active_path() == tmp_path / "envstore" / "versions" / "bm-a-1"
    monkeypatch.delenv("HEMAEDGE_STORE")
    assert default_store_path().parts[-2:] == ("hemaedge", "models")


def test_models_verify_detects_rot_and_empty_store(tmp_path, bundles):
    store = tmp_path / "store"
    r = invoke("edge", "models", "--store", store)
    assert r.exit_code == 0 and "No models installed" in r.output
    invoke("edge", "install", bundles["bm-a"], "--store", store)
    (store / "versions" / "bm-a-1" / "model.onnx").write_bytes(b"bit rot")
    r = CliRunner().invoke(main, ["edge", "models", "--store", str(store), "--verify"])
    assert r.exit_code == 1 and "checksum mismatch" in r.output
    # a rollback target that fails verification is refused
    invoke("edge", "install", bundles["bm-b"], "--store", store)
    with pytest.raises(StoreError, match="failed verification"):
        ModelStore(store).rollback()


def test_edge_run_default_is_the_active_model(tmp_path, monkeypatch, bundles):
    monkeypatch.setenv("HEMAEDGE_STORE", str(tmp_path / "store"))
    ModelStore(tmp_path / "store").install(bundles["bm-a"])
    ModelStore(tmp_path / "store").install(bundles["bm-b"])
    assert defaults.resolve_default_bundle() == tmp_path / "store" / "versions" / "bm-b-2"
    ModelStore(tmp_path / "store").rollback()
    assert defaults.resolve_default_bundle() == tmp_path / "store" / "versions" / "bm-a-1"


def test_missing_active_model_is_an_error_not_a_silent_fallback(tmp_path, bundles):
    s = ModelStore(tmp_path / "store")
    s.install(bundles["bm-a"])
    s.install(bundles["bm-b"])
    import shutil

    shutil.rmtree(s.root / "versions" / "bm-b-2")
    with pytest.raises(StoreError, match="active model bm-b-2 is missing"):
        s.active_path()
    r = CliRunner().invoke(main, ["edge", "models", "--store", str(s.root)])
    assert r.exit_code == 0 and "directory missing" in r.output
    assert s.rollback()[0] == "bm-a-1" and s.active_path().name == "bm-a-1"
