"""The feature cache: its key changes when anything that changes the features changes."""
import shutil

import numpy as np
import pytest

from hemaedge.train import features as F

BASE = dict(data="d" * 64, split="train", backbone="efficientnet-lite0",
            weights="efficientnet-lite0 ImageNet (sha256 abc)", size=128, preprocess="otsu-mask",
            augment="paper", seed=42, limit_per_class=None, code="c" * 64)


def test_key_is_stable():
    assert F.feature_key(**BASE)[0] == F.feature_key(**dict(BASE))[0]


@pytest.mark.parametrize("field,value", [
    ("data", "e" * 64), ("split", "val"), ("backbone", "efficientnet-lite1"),
    ("weights", "random init (from scratch)"), ("size", 224), ("preprocess", "rgb"),
    ("augment", "none"), ("seed", 7), ("limit_per_class", 10), ("code", "f" * 64),
])
def test_key_changes_with_every_input(field, value):
    assert F.feature_key(**dict(BASE, **{field: value}))[0] != F.feature_key(**BASE)[0]


def test_augmentation_does_not_apply_to_val_and_test():
    a = F.feature_key(**dict(BASE, split="val", augment="paper"))[0]
    b = F.feature_key(**dict(BASE, split="val", augment="none"))[0]
    assert a == b


def test_code_fingerprint_is_stable_and_covers_pixel_code():
    assert F.code_fingerprint() == F.code_fingerprint()
    assert len(F.code_fingerprint()) == 64


def test_data_fingerprint_follows_the_file_list(bloodmnist128, tmp_path):
    tree = tmp_path / "tree"
    for split in ("train", "val"):
        src = sorted((bloodmnist128 / split / "basophil").glob("*.jpg"))[:3]
        (tree / split / "basophil").mkdir(parents=True)
        for f in src:
            shutil.copy(f, tree / split / "basophil" / f.name)
    train0, val0 = F.data_fingerprint(tree, "train"), F.data_fingerprint(tree, "val")
    assert F.data_fingerprint(tree, "train") == train0 and train0 != val0
    extra = sorted((bloodmnist128 / "train" / "basophil").glob("*.jpg"))[5]
    shutil.copy(extra, tree / "train" / "basophil" / extra.name)
    assert F.data_fingerprint(tree, "train") != train0       # a new training image
    assert F.data_fingerprint(tree, "val") == val0            # other splits unaffected
    npz = tmp_path / "x.npz"
    np.savez(npz, a=np.zeros(3))
    assert F.data_fingerprint(npz) != F.data_fingerprint(tree)


def test_cache_roundtrip_hits_and_never_pickles(tmp_path):
    key, parts = F.feature_key(**BASE)
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float64).reshape(4, 3), np.array([0, 1, 0, 1]), 2.0

    f1, y1, i1 = F.cached_split_features(tmp_path, key, parts, compute)
    f2, y2, i2 = F.cached_split_features(tmp_path, key, parts, compute)
    assert len(calls) == 1 and not i1["cached"] and i2["cached"]
    assert f2.dtype == np.float32 and (f1 == f2).all() and (y1 == y2).all()
    assert i2["images_per_s"] == pytest.approx(2.0)
    files = list(tmp_path.glob("features-*.npz"))
    assert [p.name for p in files] == [f"features-{key}.npz"]
    with np.load(files[0], allow_pickle=False) as z:  # loads without pickle
        assert set(z.files) == {"features", "labels", "meta"}
    # a truncated cache file is recomputed, not trusted
    files[0].write_bytes(files[0].read_bytes()[:50])
    F.cached_split_features(tmp_path, key, parts, compute)
    assert len(calls) == 2
