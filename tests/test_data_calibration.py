"""The committed calibration_data/ and its reader."""
from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hemaedge.train.data import calibration as C
from hemaedge.train.data import CLASS_NAMES_BLOODMNIST, DataError, open_dataset

from data_helpers import make_npz

REPO = Path(__file__).resolve().parents[1]
CALIB = REPO / "calibration_data"


def _rows():
    with open(CALIB / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_committed_manifest_matches_the_files():
    assert C.verify_calibration(CALIB) == []
    rows = _rows()
    assert len(rows) == 512
    assert Counter(r["class"] for r in rows) == {c: 64 for c in CLASS_NAMES_BLOODMNIST}
    assert {r["split"] for r in rows} == {"train"}
    listed = {r["file"] for r in rows}
    on_disk = {p.relative_to(CALIB).as_posix() for p in CALIB.rglob("*.jpg")}
    assert listed == on_disk
    for r in rows:
        assert hashlib.sha256((CALIB / r["file"]).read_bytes()).hexdigest() == r["sha256"]
        assert r["file"].split("/")[0] == r["class"] == CLASS_NAMES_BLOODMNIST[int(r["label"])]


def test_committed_files_are_byte_identical_train_images(bloodmnist128):
    train = open_dataset(bloodmnist128).splits["train"]
    for r in _rows():
        src = train.paths[int(r["index"])]
        assert src.relative_to(bloodmnist128).as_posix() == r["source"]
        assert int(train.labels[int(r["index"])]) == int(r["label"])
        assert src.read_bytes() == (CALIB / r["file"]).read_bytes()


def test_regenerating_gives_the_same_manifest(tmp_path, bloodmnist128):
    out = C.make_calibration_set(open_dataset(bloodmnist128), tmp_path / "again", per_class=64)
    assert (out / "manifest.csv").read_text() == (CALIB / "manifest.csv").read_text()
    assert "CC BY 4.0" in (out / "README.md").read_text()


def test_load_calibration_images_interleaves_classes():
    x, y = C.load_calibration_images(return_labels=True)
    assert x.shape == (512, 128, 128, 3) and x.dtype == np.uint8
    few, labels = C.load_calibration_images(limit=16, size=64, return_labels=True)
    assert few.shape == (16, 64, 64, 3)
    assert sorted(labels.tolist()) == sorted(list(range(8)) * 2)  # every class in a small prefix


def test_reader_works_without_tensorflow_or_sklearn():
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['sklearn'] = None; "
            "sys.modules['keras'] = None\n"
            "from hemaedge.train.data import load_calibration_images\n"
            "print(load_calibration_images(limit=8).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(8, 128, 128, 3)"


def test_changed_or_missing_files_are_caught(tmp_path, bloodmnist128):
    import shutil

    copy = tmp_path / "calib"
    shutil.copytree(CALIB, copy)
    rows = _rows()
    (copy / rows[3]["file"]).write_bytes((copy / rows[4]["file"]).read_bytes())
    (copy / rows[10]["file"]).unlink()
    (copy / "platelet" / "stray.jpg").write_bytes((copy / rows[0]["file"]).read_bytes())
    problems = C.verify_calibration(copy)
    assert len(problems) == 3
    assert "sha256 differs" in problems[0] and "missing" in problems[1] and "not listed" in problems[2]
    with pytest.raises(DataError, match=r"sha256 differs"):
        C.load_calibration_images(copy)


def test_missing_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match="hemaedge data calibration"):
        C.load_calibration_images(tmp_path / "nowhere")


def test_npz_source_is_written_as_lossless_png(tmp_path):
    ds = open_dataset(make_npz(tmp_path / "tiny.npz", n=(30, 3, 3), size=12))
    out = C.make_calibration_set(ds, tmp_path / "calib", per_class=4, seed=1)
    images, labels = C.load_calibration_images(out, return_labels=True)
    rows = C.read_manifest(out)
    assert len(rows) == 12 and all(r["file"].endswith(".png") for r in rows)
    by_file = {r["file"]: r for r in rows}
    for r in rows:
        assert by_file[r["file"]]["source"] == f"tiny.npz:train_images[{r['index']}]"
    train_x, train_y = ds.load_images("train")
    for img, row in zip(images, C._round_robin(rows)):
        assert np.array_equal(img, train_x[row["index"]])  # PNG is lossless: same pixels back


def test_sampling_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 3, 40])
    a = C.sample_per_class(labels, 3, per_class=5, seed=42)
    assert np.bincount(labels[a]).tolist() == [5, 3, 5]  # a small class gives all it has
    assert np.array_equal(a, C.sample_per_class(labels, 3, per_class=5, seed=42))
    assert not np.array_equal(a, C.sample_per_class(labels, 3, per_class=5, seed=0))
