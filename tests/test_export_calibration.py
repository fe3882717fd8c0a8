"""Calibration reading (a calibration set with its manifest; a bare folder is refused) and the
TensorRT calibrator's data/caching side, all without TensorRT."""
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from export_helpers import calibration_dir
from hemaedge.edge.errors import DataError
from hemaedge.edge.preprocess import InputContract, prepare_batch
from hemaedge.export.calibration import calibration_batches, load_calibration
from hemaedge.export.tensorrt import CalibrationStream


@pytest.fixture(scope="module")
def calib(bloodmnist128):
    return calibration_dir(bloodmnist128)


def test_reads_a_calibration_folder_with_manifest(calib):
    images = load_calibration(calib)
    assert len(images) == 32
    assert all(im.dtype == np.uint8 and im.shape == (128, 128, 3) for im in images)
    assert len(load_calibration(calib, count=10)) == 10


def test_a_bare_folder_of_images_is_refused(calib, tmp_path):
    # No manifest: nothing says which images these are or checks them (no glob fallback).
    bare = tmp_path / "bare"
    shutil.copytree(calib, bare)
    (bare / "manifest.csv").unlink()
    with pytest.raises(DataError, match="not a calibration set .*hemaedge data calibration"):
        load_calibration(bare, count=5)
    assert load_calibration(calib, count=3, size=64)[0].shape == (64, 64, 3)


def test_missing_or_empty_calibration_folder_is_a_user_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_calibration(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a calibration set"):
        load_calibration(tmp_path / "empty")


def test_calibration_batches_are_prepare_batch_output(calib):
    images = load_calibration(calib, count=5)
    contract = InputContract(size=32, preprocess="clahe")
    batches = list(calibration_batches(images, contract, batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), prepare_batch(images, contract))


def test_tensorrt_stream_batches_and_cache(calib, tmp_path):
    images = load_calibration(calib, count=10)
    contract = InputContract(size=48, preprocess="otsu-mask")
    cache = tmp_path / "sub" / "calib.cache"
    s = CalibrationStream(images, contract, batch_size=4, cache_path=cache)
    assert len(s) == 2 and s.input_shape == (4, 48, 48, 3) and s.batch_nbytes == 4 * 48 * 48 * 3 * 4
    b1, b2, end = s.next_batch(), s.next_batch(), s.next_batch()
    assert end is None  # the partial last batch (2 images) is dropped
    assert b1.dtype == np.float32 and b1.flags["C_CONTIGUOUS"] and b1.shape == (4, 48, 48, 3)
    np.testing.assert_array_equal(b2, prepare_batch(images[4:8], contract))
    s.reset()
    np.testing.assert_array_equal(s.next_batch(), b1)
    assert s.read_cache() is None  # nothing cached yet: TensorRT must calibrate
    s.write_cache(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    again = CalibrationStream(images, contract, batch_size=4, cache_path=cache)
    assert again.read_cache().startswith(b"TRT-8601")
    assert CalibrationStream(images, contract, batch_size=4).read_cache() is None  # no cache path


def test_tensorrt_stream_refuses_integer_contracts(calib):
    with pytest.raises(ValueError):
        CalibrationStream([], InputContract(size=32, dtype="uint8", quant_scale=1.0, quant_zero_point=0))
    with pytest.raises(ValueError):
        CalibrationStream([], InputContract(size=32), batch_size=0)


def test_tensorrt_missing_is_a_clear_exit_2(tmp_path):
    pytest.importorskip("tensorflow")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from hemaedge.cli import main

    res = CliRunner().invoke(main, ["export", "tensorrt", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2
    assert "TensorRT is not installed here" in res.output and "Traceback" not in res.output
