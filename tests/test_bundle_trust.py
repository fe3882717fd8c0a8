"""Nothing broken reaches the device (issue 16 #1, #5, #8, #9): the typed manifest refuses bad
values with a clear message, install runs verify's checks plus a real load and a smoke inference
before switching, the store confines every path, and ONNX external data must be checksummed."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from hemaedge.cli import main
from hemaedge.edge.bundle import read_manifest, verify_bundle, write_bundle
from hemaedge.edge.errors import BundleError, HemaedgeError, StoreError
from hemaedge.edge.manifest import Manifest
from hemaedge.edge.preprocess import InputContract
from hemaedge.edge.store import ModelStore
from store_helpers import HEMAEDGE, make_bundle, tiny_onnx
from trust_helpers import edit_manifest, rehash

from hemaedge.edge.defaults import packaged_default_bundle  # noqa: E402

DEFAULT_DIR = packaged_default_bundle()
DEFAULT = read_manifest(DEFAULT_DIR)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ----------------------------------------------------------------------------- the typed manifest

BAD_VALUES = [
    ("clahe_tiles 0", lambda m: m["input"].update(clahe_tiles=0), "clahe_tiles"),
    ("clahe_tiles 100000", lambda m: m["input"].update(clahe_tiles=100000), "clahe_tiles"),
    ("clahe_clip negative", lambda m: m["input"].update(clahe_clip=-1), "clahe_clip"),
    ("classes [[0]]", lambda m: m.update(classes=[[0]]), "class name"),
    ("one class", lambda m: m.update(classes=["a"]), "class list"),
    ("files entry a string", lambda m: m["files"].update({"model.tflite": "abc"}), "files['model.tflite']"),
    ("missing bytes", lambda m: m["files"]["model.tflite"].pop("bytes"), "bytes"),
    ("bytes a string", lambda m: m["files"]["model.tflite"].update(bytes="12"), "bytes"),
    ("sha256 not hex", lambda m: m["files"]["model.tflite"].update(sha256="zz"), "sha256"),
    ("sha256 with newline", lambda m: m["files"]["model.tflite"].update(sha256="0" * 64 + "\n"), "sha256"),
    ("size 128.7", lambda m: m["input"].update(size=128.7), "input.size"),
    ('size "128"', lambda m: m["input"].update(size="128"), "input.size"),
    ("size 100000", lambda m: m["input"].update(size=100000), "input.size"),
    ("size true", lambda m: m["input"].update(size=True), "input.size"),
    ("files a list", lambda m: m.update(files=["model.tflite"]), "'files'"),
    ("model a string", lambda m: m.update(model="model.tflite"), "'model'"),
    ("unknown backend", lambda m: m["model"].update(backend="pytorch"), "back end"),
    ("int8 input without scale", lambda m: m["input"].update(dtype="int8"), "quant_scale"),
    ("zero point out of range", lambda m: m["input"].update(dtype="uint8", quant_scale=0.1, quant_zero_point=300),
     "quant_zero_point"),
    ("output kind", lambda m: m["output"].update(kind="scores"), "output.kind"),
    ("temperature 0", lambda m: m["output"].update(temperature=0), "temperature"),
    ("normalize a string", lambda m: m["input"].update(normalize="macenko"), "normalize"),
    ("ood a list", lambda m: m.update(ood=[1, 2]), "'ood'"),
    ("path escape", lambda m: m["files"].update({"../x": {"sha256": "0" * 64, "bytes": 1}}), "escapes"),
    ("input missing", lambda m: m.pop("input"), "'input'"),
]


@pytest.mark.parametrize("label,edit,needle", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_manifest_schema_refuses_bad_values(label, edit, needle):
    m = copy.deepcopy(DEFAULT)
    edit(m)
    with pytest.raises(BundleError, match="manifest is not valid") as exc:
        Manifest.from_dict(m, where="b/manifest.json")
    assert needle in str(exc.value)


def test_manifest_keeps_unknown_and_new_sections_verbatim():
    m = copy.deepcopy(DEFAULT)
    m["future_section"] = {"anything": [1, 2, {"x": None}]}
    m["ood"] = {"energy_p95": 3.2}
    m["domain"] = {"lab_mean": [70.1, 10.2, -5.0]}
    m["provenance"] = {"git": "abc"}
    m["rbc_model"] = {"file": "rbc.tflite"}
    m["output"]["temperature"] = 1.7
    parsed = Manifest.from_dict(m)
    assert parsed.to_dict() == m and parsed.output.temperature == 1.7
    assert parsed.accuracy() == (DEFAULT["metrics"]["test"]["accuracy"], "test")
    # the export's parity check on the test split (500 images for default-v6-ep3, all 3,421 for default-v2)
    assert parsed.parity_split("test") == DEFAULT["metrics"]["parity"]["splits"]["test"]
    assert parsed.parity_split("test")["n"] >= 500 and parsed.validation_status == "passed"


@pytest.mark.parametrize("edit", [lambda m: m["input"].update(clahe_tiles=0),
                                  lambda m: m["input"].update(clahe_tiles=100000),
                                  lambda m: m.update(classes=[[0]]),
                                  lambda m: m["input"].update(size="128")])
def test_verify_and_run_refuse_bad_manifest_with_one_error_line(tmp_path, edit):
    """Issue 16 #9: `clahe_tiles: 0` was a SIGFPE (exit 136), the others tracebacks."""
    bundle = tmp_path / "b"
    shutil.copytree(DEFAULT_DIR, bundle)
    edit_manifest(bundle, edit)
    for args in (["edge", "verify", bundle], ["edge", "run", "--bundle", bundle, "--source", "samples",
                                              "--out", tmp_path / "out", "--max-frames", "1"]):
        p = subprocess.run([HEMAEDGE, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (p.returncode, p.stderr[-500:])
        assert "manifest is not valid" in p.stderr and "Traceback" not in p.stderr


# ----------------------------------------------------------------------------- install = verify + load + run


def _broken_bundles(tmp_path):
    """Bundles whose checksums are right but which cannot run, as the issue found them."""
    made = {}
    t = make_bundle(tmp_path, "truncated")
    model = t / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    made["truncated, re-hashed model"] = (rehash(t), "not")
    made["class count != outputs"] = (
        edit_manifest(make_bundle(tmp_path, "nine"), lambda m: m.update(classes=m["classes"] + ["extra"])),
        "9 classes")
    made["wrong input size"] = (edit_manifest(make_bundle(tmp_path, "big"), lambda m: m["input"].update(size=64)),
                                "input contract gives")
    made["wrong dtype"] = (edit_manifest(make_bundle(tmp_path, "dtype"), lambda m: m["input"].update(
        dtype="uint8", quant_scale=1.0, quant_zero_point=0)), "input contract says uint8")
    wrong_backend = make_bundle(tmp_path, "backend")
    shutil.move(wrong_backend / "model.onnx", wrong_backend / "model.tflite")
    edit_manifest(wrong_backend, lambda m: (m["files"].update({"model.tflite": m["files"].pop("model.onnx")}),
                                            m["model"].update(file="model.tflite", backend="tflite")))
    made["wrong backend"] = (wrong_backend, "TFLite")
    made["clahe_tiles 0"] = (edit_manifest(make_bundle(tmp_path, "tiles"),
                                           lambda m: m["input"].update(clahe_tiles=0)), "clahe_tiles")
    logits = tmp_path / "logits.onnx"
    from edge_helpers import make_onnx

    make_onnx(logits, size=128, output="logits", weights=(np.eye(3, 8, dtype=np.float32) * 50,
                                                           np.zeros(8, np.float32)))
    made["logits declared probabilities"] = (
        write_bundle(tmp_path / "logits", {"model.onnx": logits}, model_file="model.onnx", backend="onnx",
                     model_format="onnx", classes=[f"c{i}" for i in range(8)], contract=InputContract(size=128)),
        "not")
    return made


def test_install_refuses_every_bundle_that_cannot_run(tmp_path):
    store = ModelStore(tmp_path / "store")
    good = make_bundle(tmp_path / "ok", "good")
    store.install(good)
    for label, (bundle, needle) in _broken_bundles(tmp_path / "bad").items():
        with pytest.raises(HemaedgeError) as exc:
            store.install(bundle, accept_change=True)
        assert needle in str(exc.value), (label, str(exc.value))
        assert store.active_version() == "good-1", label
        # verify (the default, with a load) refuses the same bundle
        r = cli("edge", "verify", bundle)
        assert r.exit_code == 2, (label, r.output)
    assert [v.version for v in store.list_versions()] == ["good-1"]
    assert [p.name for p in (store.root / "versions").iterdir()] == ["good-1"]


def test_install_cli_refuses_with_error_line(tmp_path):
    bad = edit_manifest(make_bundle(tmp_path, "nine"), lambda m: m.update(classes=m["classes"] + ["extra"]))
    r = cli("edge", "install", bad, "--store", tmp_path / "store")
    assert r.exit_code == 2 and "Error:" in r.output and "9 classes" in r.output
    assert ModelStore(tmp_path / "store").active_path() is None


def test_models_verify_runs_the_model(tmp_path):
    """An installed copy whose model was swapped and re-hashed (manifest and store state too) is caught."""
    store = ModelStore(tmp_path / "store")
    res = store.install(make_bundle(tmp_path, "good"))
    tiny_onnx(res.path / "model.onnx", 3, 128, "swapped")  # a valid model, but 3 outputs for 8 classes
    rehash(res.path)
    state = json.loads(store.state_path.read_text())
    from hemaedge.edge.store import manifest_digest

    state["versions"]["good-1"]["manifest_sha256"] = manifest_digest(res.path)
    store.state_path.write_text(json.dumps(state))
    assert verify_bundle(res.path) == []  # the checksums alone cannot tell
    r = cli("edge", "models", "--store", store.root, "--verify")
    assert r.exit_code == 1 and "gives 3 outputs but the bundle lists 8 classes" in r.output, r.output


# ----------------------------------------------------------------------------- the store confines its paths


def _state(store: ModelStore, edit):
    state = json.loads(store.state_path.read_text())
    edit(state)
    store.state_path.write_text(json.dumps(state))


def test_hostile_version_name_cannot_delete_outside_the_store(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    store = ModelStore(tmp_path / "a" / "b" / "store")
    store.install(make_bundle(tmp_path / "x", "one"))
    _state(store, lambda s: s["versions"].update({"../../../victim": {"seq": 0 + 1, "installed": "", "manifest_sha256": ""}}))
    r = cli("edge", "install", make_bundle(tmp_path / "x", "two"), "--store", store.root, "--keep", "1")
    assert r.exit_code == 2 and "not a valid version name" in r.output, r.output
    assert (victim / "precious.txt").read_text() == "keep me"
    with pytest.raises(StoreError):
        store.prune(1)
    assert victim.is_dir()


@pytest.mark.parametrize("active", ["../../victim", "/etc", "a/b", "..", "one-1\n"])
def test_active_pointing_outside_is_refused(tmp_path, active):
    store = ModelStore(tmp_path / "store")
    store.install(make_bundle(tmp_path / "x", "one"))
    _state(store, lambda s: s.update(active=active))
    with pytest.raises(StoreError, match="not a valid version name"):
        store.active_path()
    r = cli("edge", "models", "--store", store.root)
    assert r.exit_code == 2 and "Error:" in r.output


def test_models_says_when_the_active_version_is_missing(tmp_path):
    store = ModelStore(tmp_path / "store")
    store.install(make_bundle(tmp_path / "x", "one"))
    store.install(make_bundle(tmp_path / "x", "two"))
    shutil.rmtree(store.version_path("two-2"))
    r = cli("edge", "models", "--store", store.root)
    assert "active model two-2 is missing" in r.output, r.output
    _state(store, lambda s: s["versions"].pop("two-2"))
    r = cli("edge", "models", "--store", store.root)
    assert "active model two-2 is missing" in r.output, r.output


# ----------------------------------------------------------------------------- ONNX external data


def test_onnx_external_data_must_be_listed(tmp_path):
    import onnx

    model = onnx.load(str(tiny_onnx(tmp_path / "tiny.onnx", 8, 128, "ext")))
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(model, str(src / "model.onnx"), save_as_external_data=True, location="weights.bin",
              size_threshold=100)  # W outside (sys.getsizeof >= 100), the ReduceMean axes inline
    args = dict(model_file="model.onnx", backend="onnx", model_format="onnx", classes=[f"c{i}" for i in range(8)],
                contract=InputContract(size=128))
    # unlisted weights: refused when written...
    with pytest.raises(BundleError, match="external data 'weights.bin'"):
        write_bundle(tmp_path / "unlisted", {"model.onnx": src / "model.onnx"}, **args)
    # ...and a bundle made by hand with the weights beside it is refused by verify and install
    listed = write_bundle(tmp_path / "listed", {"model.onnx": src / "model.onnx", "weights.bin": src / "weights.bin"},
                          **args)
    assert verify_bundle(listed) == []
    store = ModelStore(tmp_path / "store")
    store.install(listed)  # listed and hashed: it runs, and every byte it loads is checksummed
    hand = tmp_path / "hand"
    shutil.copytree(listed, hand)
    edit_manifest(hand, lambda m: m["files"].pop("weights.bin"))
    assert any("external data 'weights.bin'" in p for p in verify_bundle(hand))
    with pytest.raises(BundleError, match="external data"):
        store.install(hand)
    r = cli("edge", "verify", hand, "--checksums-only")
    assert r.exit_code == 2 and "external data" in r.output
    # editing the listed weights is a checksum mismatch
    w = hand.parent / "listed" / "weights.bin"
    w.write_bytes(bytes(len(w.read_bytes())))
    assert any("checksum mismatch" in p for p in verify_bundle(hand.parent / "listed"))


def test_model_dtype_error_names_the_model_file(tmp_path):
    """Issue 16, smaller: with --model, a dtype error named the packaged default bundle."""
    pytest.importorskip("tensorflow")
    from edge_helpers import cached_tflite

    model, _ = cached_tflite(32, int8=True)
    r = cli("edge", "run", "--model", model, "--classes", "a,b,c", "--source", "samples", "--out", tmp_path / "o",
            "--max-frames", "1")
    assert r.exit_code == 2 and f"{model}: this model takes int8 input" in r.output, r.output
    assert "models/default" not in r.output


def test_onnx_with_label_output_first_runs_on_the_device(tmp_path):
    """scikit-learn heads (skl2onnx) output (label int64, scores): the device took the labels and
    refused the hybrid bundle that export had parity-checked on the scores. It takes the scores."""
    import onnx
    from onnx import TensorProto, helper

    base = onnx.load(str(tiny_onnx(tmp_path / "t.onnx", 3, 32, "labels")))
    g = base.graph
    g.node.append(helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0))
    label = helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])
    outputs = [label, *g.output]
    del g.output[:]
    g.output.extend(outputs)
    onnx.save(base, str(tmp_path / "two.onnx"))
    b = write_bundle(tmp_path / "two", {"model.onnx": tmp_path / "two.onnx"}, model_file="model.onnx", backend="onnx",
                     model_format="onnx", classes=["a", "b", "c"], contract=InputContract(size=32))
    r = cli("edge", "verify", b)
    assert r.exit_code == 0, r.output


def test_tensorrt_export_verifies_the_onnx_bundle_it_reads(tmp_path):
    """`export tensorrt dir/model.onnx` read the manifest beside the file without checking it."""
    from hemaedge.export.trt_bundle import _onnx_and_manifest

    b = make_bundle(tmp_path, "onnx32", size=32)
    path, manifest = _onnx_and_manifest(b / "model.onnx")
    assert path == b / "model.onnx" and manifest["name"] == "onnx32"
    tiny_onnx(b / "model.onnx", 8, 32, "tampered")  # changed after export, checksums not updated
    with pytest.raises(BundleError, match="checksum mismatch"):
        _onnx_and_manifest(b / "model.onnx")
    with pytest.raises(HemaedgeError, match="not the model of the bundle"):
        stray = b / "other.onnx"
        tiny_onnx(stray, 8, 32, "stray")
        rehash(b)
        _onnx_and_manifest(stray)
