"""`hemaedge edge install --build-engine` plumbing, with a stand-in for TensorRT's trtexec.

Real TensorRT needs a Jetson; here a small script plays trtexec (checks its arguments, writes
an engine file), so what is tested is hemaedge's side: the shape arguments it passes, the
engine bundle it writes and verifies, and that the engine becomes the active version.
"""
from __future__ import annotations

import json
import os
import stat
import sys

import pytest
from click.testing import CliRunner

from hemaedge.cli import main
from hemaedge.edge.bundle import load_bundle, write_bundle
from hemaedge.edge.engine_build import trtexec_command
from hemaedge.edge.preprocess import InputContract
from hemaedge.edge.store import ModelStore
from store_helpers import make_bundle

FAKE_TRTEXEC = """#!{python}
import sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
flags = [a for a in sys.argv[1:] if "=" not in a]
assert open(args["onnx"], "rb").read(4), "empty onnx"
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300]")
print("[I] TensorRT version: 10.3.0")
with open(args["saveEngine"], "wb") as fh:
    fh.write(b"ENGINE" + " ".join(sys.argv[1:]).encode())
"""


def _tiny_onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 32, 32, 3])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Transpose", ["pixels"], ["probs"], perm=[0, 3, 1, 2])],
                              "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture
def fake_trtexec(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "trtexec"
    exe.write_text(FAKE_TRTEXEC.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return exe


def test_trtexec_shapes_for_dynamic_batch():
    cmd = trtexec_command("trtexec", "m.onnx", "m.engine", precision="fp16", input_name="input_1:0",
                          input_shape=[None, 128, 128, 3], size=128, max_batch=16)
    assert "--fp16" in cmd
    assert "--minShapes='input_1:0':1x128x128x3" in cmd and "--maxShapes='input_1:0':16x128x128x3" in cmd
    nchw = trtexec_command("trtexec", "m.onnx", "m.engine", precision="fp32", input_name="x",
                           input_shape=[None, 3, None, None], size=224, max_batch=8)
    assert "--optShapes=x:8x3x224x224" in nchw and "--fp16" not in nchw
    fixed = trtexec_command("trtexec", "m.onnx", "m.engine", precision="fp16", input_name="x",
                            input_shape=[1, 128, 128, 3], size=128, max_batch=8)
    assert not any(a.startswith("--minShapes") for a in fixed)


def test_install_build_engine_makes_engine_active(tmp_path, fake_trtexec):
    _tiny_onnx(tmp_path / "tiny.onnx")
    bundle = write_bundle(tmp_path / "tiny-bundle", {"model.onnx": tmp_path / "tiny.onnx"}, model_file="model.onnx",
                          backend="onnx", model_format="onnx", classes=["a", "b", "c"],
                          contract=InputContract(size=32), metrics={"test": {"accuracy": 0.5}}, name="tiny")
    store = tmp_path / "store"
    # TensorRT's Python module is absent here, so the engine bundle skips the back-end check
    r = CliRunner().invoke(main, ["edge", "install", str(bundle), "--store", str(store), "--build-engine",
                                  "--max-batch", "4", "--no-backend-check", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["onnx_version"] == "tiny-1" and out["version"] == "tiny-trt-fp16-2" and out["previous"] is None
    s = ModelStore(store)
    engine = load_bundle(s.active_path())
    assert engine.backend == "tensorrt" and engine.classes == ["a", "b", "c"] and engine.contract.size == 32
    assert engine.manifest["export"]["tensorrt_version"] == "10.3.0"
    assert engine.manifest["validation"]["status"] == "not-validated" and engine.manifest["metrics"] == {}
    assert engine.manifest["source"]["onnx_metrics"] == {"test": {"accuracy": 0.5}}
    assert b"--minShapes=pixels:1x32x32x3" in engine.model_path.read_bytes()
    assert [v.version for v in s.list_versions()] == ["tiny-1", "tiny-trt-fp16-2"]


def test_build_engine_refuses_non_onnx_before_installing(tmp_path, fake_trtexec):
    tfl = make_bundle(tmp_path, "lite", backend="tflite")
    r = CliRunner().invoke(main, ["edge", "install", str(tfl), "--store", str(tmp_path / "store"), "--build-engine"])
    assert r.exit_code == 2 and "needs an ONNX bundle" in r.output
    assert ModelStore(tmp_path / "store").active_path() is None


def test_export_tensorrt_uses_the_same_builder(tmp_path, fake_trtexec, monkeypatch):
    """`hemaedge export tensorrt` and `edge install --build-engine` share one engine builder
    (edge/engine_build.build_engine): fp16 goes through trtexec even without the tensorrt module."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    _tiny_onnx(tmp_path / "tiny.onnx")
    bundle = write_bundle(tmp_path / "tiny-bundle", {"model.onnx": tmp_path / "tiny.onnx"}, model_file="model.onnx",
                          backend="onnx", model_format="onnx", classes=["a", "b", "c"],
                          contract=InputContract(size=32), name="tiny")
    r = CliRunner().invoke(main, ["export", "tensorrt", str(bundle), "--max-batch", "4", "--out", str(tmp_path / "trt")])
    assert r.exit_code == 0, r.output
    engine = load_bundle(tmp_path / "trt")
    assert engine.backend == "tensorrt" and engine.manifest["export"]["tool"] == "trtexec"
    assert engine.manifest["export"]["tensorrt_version"] == "10.3.0"
    assert b"--minShapes=pixels:1x32x32x3" in engine.model_path.read_bytes()
    # int8 needs the calibrating Python API: refused here with a clear message, nothing written
    r = CliRunner().invoke(main, ["export", "tensorrt", str(bundle), "--precision", "int8", "--out",
                                  str(tmp_path / "trt8")])
    assert r.exit_code == 2 and "TensorRT is not installed" in r.output and not (tmp_path / "trt8").exists()
