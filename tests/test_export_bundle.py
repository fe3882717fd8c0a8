"""Bundles written by export: manifest round trip, and every refusal case of loading (missing
file, checksum mismatch, unknown manifest version, path escape) via load_bundle and
`hemaedge edge verify`."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tensorflow")

from export_helpers import CLASSES, calibration_dir, tiny_model, workdir  # noqa: E402
from hemaedge.cli import main  # noqa: E402
from hemaedge.edge.bundle import BundleError, load_bundle, sha256_file  # noqa: E402
from hemaedge.export.bundle_writer import write_export_bundle  # noqa: E402
from hemaedge.export.calibration import load_calibration  # noqa: E402
from hemaedge.export.source import load_source  # noqa: E402


@pytest.fixture(scope="module")
def int8_bundle(bloodmnist128):
    """A real full-integer TFLite bundle of the tiny EfficientNet-like model."""
    from hemaedge.export.tflite import convert_tflite

    src = load_source(tiny_model(bloodmnist128, "effnet"))
    res = convert_tflite(src.model, src.contract, "int8", calib_images=load_calibration(calibration_dir(bloodmnist128), 8))
    art = workdir() / "bundle-test.tflite"
    art.write_bytes(res.data)
    metrics = {"test": {"n": 3, "accuracy": 0.5, "macro_f1": 0.4, "agreement": 1.0}}
    out = write_export_bundle(workdir() / "bundle-int8", art, model_format="tflite-int8", classes=src.classes,
                              contract=res.contract, output=res.output, source=src.source_info(),
                              settings=res.settings, metrics=metrics, validation={"status": "passed"}, overwrite=True)
    return out, src, res


@pytest.fixture
def bundle_copy(int8_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(int8_bundle[0], dst)
    return dst


def _verify(path):
    return CliRunner().invoke(main, ["edge", "verify", str(path)])


def _edit_manifest(path, change):
    m = json.loads((path / "manifest.json").read_text())
    change(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_manifest_round_trip(int8_bundle):
    out, src, res = int8_bundle
    b = load_bundle(out)
    assert b.classes == CLASSES and b.backend == "tflite"
    assert b.contract == res.contract and b.contract.dtype == "uint8" and b.contract.quant_scale == 1.0
    assert b.output == res.output
    m = b.manifest
    assert m["source"]["sha256"] == sha256_file(src.path)
    assert m["export"]["quant"] == "int8" and m["export"]["calibration_images"] == 8
    assert m["metrics"]["test"]["accuracy"] == 0.5 and m["validation"]["status"] == "passed"
    assert m["files"]["model.tflite"]["sha256"] == sha256_file(out / "model.tflite")
    res_cli = _verify(out)
    assert res_cli.exit_code == 0, res_cli.output


def test_refuses_missing_file(bundle_copy):
    (bundle_copy / "model.tflite").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_copy)
    r = _verify(bundle_copy)
    assert r.exit_code != 0 and "missing" in r.output and "Traceback" not in r.output


def test_refuses_checksum_mismatch(bundle_copy):
    data = bytearray((bundle_copy / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(bundle_copy)
    r = _verify(bundle_copy)
    assert r.exit_code != 0 and "checksum mismatch" in r.output


def test_refuses_unknown_manifest_version(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m.update(manifest_version=99))
    with pytest.raises(BundleError, match="manifest version 99"):
        load_bundle(bundle_copy)
    r = _verify(bundle_copy)
    assert r.exit_code != 0 and "version" in r.output


@pytest.mark.parametrize("name", ["../outside.tflite", "/etc/passwd", "sub/../../x"])
def test_refuses_path_escape(bundle_copy, name):
    (bundle_copy.parent / "outside.tflite").write_bytes(b"x")

    def escape(m):
        m["files"][name] = {"sha256": sha256_file(bundle_copy.parent / "outside.tflite"), "bytes": 1}

    _edit_manifest(bundle_copy, escape)
    with pytest.raises(BundleError, match="escapes the bundle"):
        load_bundle(bundle_copy)
    r = _verify(bundle_copy)
    assert r.exit_code != 0 and "escapes" in r.output


def test_bundle_never_unpickles(bundle_copy):
    # A pickle dropped into the bundle and listed in the manifest is only hashed, never loaded.
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    (bundle_copy / "evil.pkl").write_bytes(pickle.dumps(Boom()))
    _edit_manifest(bundle_copy, lambda m: m["files"].update(
        {"evil.pkl": {"sha256": sha256_file(bundle_copy / "evil.pkl"), "bytes": (bundle_copy / "evil.pkl").stat().st_size}}))
    assert load_bundle(bundle_copy).classes == CLASSES


def test_wrap_existing_artifact_reads_quantization(int8_bundle, tmp_path):
    out, src, res = int8_bundle
    r = CliRunner().invoke(main, ["export", "bundle", str(out / "model.tflite"), "--classes", ",".join(CLASSES),
                                  "--out", str(tmp_path / "wrapped")])
    assert r.exit_code == 0, r.output
    b = load_bundle(tmp_path / "wrapped")
    assert b.contract.dtype == "uint8" and b.contract.quant_zero_point == 0 and b.contract.size == 32
    assert b.output["quant_scale"] == pytest.approx(res.output["quant_scale"])
    assert b.manifest["validation"]["status"] == "not-validated"
    assert np.isclose(b.size_bytes, (out / "model.tflite").stat().st_size + 0, rtol=0.01)
