"""The benchmark's test-set reader (the data package, no TensorFlow): ImageFolder trees and
MedMNIST .npz, evenly spread --spread samples, and class lists matched to the model's by name."""
import numpy as np
import pytest

from hemaedge.benchmarks.testset import TestSetError, label_map, open_test_set
from hemaedge.edge.errors import DataError

CLASSES = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte",
           "neutrophil", "platelet"]


def test_imagefolder_limit_covers_every_class(bloodmnist128):
    ts = open_test_set(bloodmnist128, limit=40)
    assert len(ts) == 40 and ts.class_names == CLASSES
    assert set(ts.labels.tolist()) == set(range(8))
    imgs = ts.images(0, 3)
    assert all(im.shape == (128, 128, 3) and im.dtype == np.uint8 for im in imgs)
    chunks = list(ts.chunks(16))
    assert [len(c[0]) for c in chunks] == [16, 16, 8]


def test_npz_reader(bloodmnist28_npz):
    ts = open_test_set(bloodmnist28_npz, limit=24)
    assert len(ts) == 24 and ts.images(0, 1)[0].shape == (28, 28, 3)
    assert ts.class_names == CLASSES  # the data package knows BloodMNIST's names
    lut, how = label_map(ts.class_names, CLASSES)
    assert lut.tolist() == list(range(8)) and how == "by name"
    lut, how = label_map([str(i) for i in range(8)], CLASSES)  # a .npz without names
    assert lut.tolist() == list(range(8)) and "position" in how


def test_label_map_by_name_and_errors():
    lut, how = label_map(["platelet", "basophil"], CLASSES)
    assert lut.tolist() == [7, 0] and how == "by name"
    lut, how = label_map(["Immature Granulocyte"], ["immature_granulocyte", "x"])
    assert lut.tolist() == [0]
    with pytest.raises(DataError, match="not among the model's classes"):
        label_map(["a", "b", "c"], ["x", "y"])
    # same count, different names: an error, not a silent match by position
    with pytest.raises(DataError, match=r"\['a', 'b'\] of the data set are not among the model's classes"):
        label_map(["a", "b"], ["x", "y"])


def test_bad_paths(tmp_path):
    with pytest.raises(TestSetError, match="not found"):
        open_test_set(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TestSetError, match="expected a MedMNIST"):
        open_test_set(tmp_path / "x.txt")
    (tmp_path / "tree" / "test" / "a").mkdir(parents=True)
    with pytest.raises(TestSetError, match="empty class"):
        open_test_set(tmp_path / "tree")
    with pytest.raises(TestSetError, match="missing split folder"):
        open_test_set(tmp_path / "tree", split="val")


def test_classes_txt_and_webp_are_read_like_training(tmp_path, bloodmnist128):
    import shutil

    import cv2

    root = tmp_path / "ds"
    for split in ("test",):  # an evaluation copy needs only the split it scores
        for cls in ("platelet", "basophil"):
            src = sorted((bloodmnist128 / split / cls).iterdir())[0]
            (root / split / cls).mkdir(parents=True)
            shutil.copy(src, root / split / cls / src.name)
            cv2.imwrite(str(root / split / cls / "extra.webp"), cv2.imread(str(src)))
    (root / "classes.txt").write_text("platelet\nbasophil\n")
    ts = open_test_set(root)
    assert ts.class_names == ["platelet", "basophil"] and len(ts) == 4  # classes.txt order, .webp counted
    assert sorted(ts.labels.tolist()) == [0, 0, 1, 1]


def test_reads_on_an_edge_only_install(bloodmnist128):
    """`hemaedge bench` runs on devices: the data package it reads with needs no training stack."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('tensorflow', 'keras', 'sklearn', 'albumentations', 'onnx', 'torch'): sys.modules[m] = None\n"
            "from hemaedge.benchmarks.testset import open_test_set\n"
            f"print(len(open_test_set({str(bloodmnist128)!r}, limit=16)))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "16", p.stderr[-2000:]
