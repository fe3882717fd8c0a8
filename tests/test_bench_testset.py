"""The benchmark's own test-set reader (no TensorFlow): ImageFolder trees and MedMNIST .npz,
evenly spread --limit samples, and class lists matched to the model's."""
import numpy as np
import pytest

from hemaedge.benchmarks.testset import TestSetError, label_map, open_test_set

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
    lut, how = label_map(ts.class_names, CLASSES)
    assert lut.tolist() == list(range(8)) and "position" in how


def test_label_map_by_name_and_errors():
    lut, how = label_map(["platelet", "basophil"], CLASSES)
    assert lut.tolist() == [7, 0] and how == "by name"
    lut, how = label_map(["Immature Granulocyte"], ["immature_granulocyte", "x"])
    assert lut.tolist() == [0]
    with pytest.raises(TestSetError, match="not among the model's classes"):
        label_map(["a", "b", "c"], ["x", "y"])


def test_bad_paths(tmp_path):
    with pytest.raises(TestSetError, match="not found"):
        open_test_set(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TestSetError, match="expected a MedMNIST"):
        open_test_set(tmp_path / "x.txt")
    (tmp_path / "tree" / "test" / "a").mkdir(parents=True)
    with pytest.raises(TestSetError, match="hold no images"):
        open_test_set(tmp_path / "tree")
