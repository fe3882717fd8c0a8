"""The data-set loaders on the real shared files and on small broken inputs."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from hemaedge.edge.preprocess import read_image_rgb
from hemaedge.train import data as D
from hemaedge.train.data import DataError, open_dataset

from data_helpers import make_flat_tree, make_npz, make_split_tree, real_jpegs

SPLIT_COUNTS = {"train": 11959, "val": 1712, "test": 3421}
TRAIN_PER_CLASS = [852, 2181, 1085, 2026, 849, 993, 2330, 1643]


# ----------------------------------------------------------------------------- real data


@pytest.mark.parametrize("which", ["tree", "npz"])
def test_bloodmnist_counts_match_the_official_split(which, bloodmnist128, bloodmnist28_npz):
    ds = open_dataset(bloodmnist128 if which == "tree" else bloodmnist28_npz)
    assert ds.classes == D.CLASS_NAMES_BLOODMNIST
    assert {s: len(d) for s, d in ds.splits.items()} == SPLIT_COUNTS
    assert ds.counts("train").tolist() == TRAIN_PER_CLASS
    assert ds.protocol == "official split"


def test_tree_and_npz_agree_on_every_label(bloodmnist128, bloodmnist28_npz):
    """The tree's file names carry the npz row: both must give each row the same label."""
    tree, npz = open_dataset(bloodmnist128), open_dataset(bloodmnist28_npz)
    for split in ("val", "test"):
        rows = [int(p.stem.split("_")[1]) for p in tree.files(split)]
        assert sorted(rows) == list(range(len(npz.splits[split])))
        assert np.array_equal(tree.splits[split].labels, npz.splits[split].labels[rows])


def test_load_images_from_tree_are_the_decoded_files(bloodmnist128):
    ds = open_dataset(bloodmnist128)
    idx = [0, 500, 1711]
    x, y = ds.load_images("val", indices=idx)
    assert x.shape == (3, 128, 128, 3) and x.dtype == np.uint8
    assert y.tolist() == ds.splits["val"].labels[idx].tolist()
    for img, i in zip(x, idx):
        assert np.array_equal(img, read_image_rgb(ds.files("val")[i]))
    small, _ = ds.load_images("val", size=32, indices=idx)
    assert small.shape == (3, 32, 32, 3)


def test_load_images_from_npz_and_resize(bloodmnist28_npz):
    ds = open_dataset(bloodmnist28_npz)
    x, y = ds.load_images("test")
    assert x.shape == (3421, 28, 28, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    with np.load(bloodmnist28_npz) as raw:
        assert np.array_equal(x[:5], raw["test_images"][:5])
    big, _ = ds.load_images("test", size=64, indices=[3, 4])
    assert big.shape == (2, 64, 64, 3)


def test_iter_batches_covers_a_split_once(bloodmnist28_npz):
    ds = open_dataset(bloodmnist28_npz)
    seen = [y for _, y in ds.iter_batches("val", batch_size=500, shuffle=True)]
    assert [len(y) for y in seen] == [500, 500, 500, 212]
    assert np.bincount(np.concatenate(seen)).tolist() == ds.counts("val").tolist()


def test_names_are_found_through_HEMAEDGE_DATA(monkeypatch, tmp_path, shared_data, bloodmnist128):
    monkeypatch.setenv("HEMAEDGE_DATA", str(shared_data))
    monkeypatch.setenv("HEMAEDGE_CACHE", str(tmp_path / "cache"))
    assert open_dataset("bloodmnist").kind == "npz"        # bloodmnist28/bloodmnist.npz, one level down
    assert open_dataset("bloodmnist128").kind == "tree"
    with pytest.raises(DataError, match="HEMAEDGE_DATA"):
        open_dataset("bloodmnist_64")


def test_folder_holding_one_npz_opens_it(tmp_path):
    make_npz(tmp_path / "tiny.npz")
    ds = open_dataset(tmp_path)
    assert ds.kind == "npz" and ds.root == tmp_path / "tiny.npz"


# ----------------------------------------------------------------------------- trees


def test_flat_tree_split_is_stratified_72_8_20_and_reproducible(tmp_path, bloodmnist128):
    root = make_flat_tree(tmp_path / "flat", bloodmnist128, {"zeta": 50, "alpha": 25, "mid": 100})
    ds = open_dataset(root)
    assert ds.kind == "flat-tree" and ds.classes == ("alpha", "mid", "zeta")  # sorted names
    sizes = {s: len(d) for s, d in ds.splits.items()}
    assert sizes == {"train": 126, "val": 14, "test": 35}  # 175 images: 20% test, 8% val
    for split, frac in (("train", 0.72), ("val", 0.08), ("test", 0.20)):
        # every class keeps (about) its share in every split
        np.testing.assert_allclose(ds.counts(split), np.array([25, 100, 50]) * frac, atol=1.0)
    every = sorted(p for d in ds.splits.values() for p in d.paths)
    assert len(every) == len(set(every)) == 175  # a partition
    again = open_dataset(root)
    assert all(again.splits[s].paths == ds.splits[s].paths for s in ds.splits)
    # The same split as sklearn's train_test_split (seed 42) on the (class, file name) order.
    ref = D.stratified_split(np.repeat([0, 1, 2], [25, 100, 50]), seed=42)
    files = [p for c in ds.classes for p in sorted((root / c).iterdir())]
    assert [files[i] for i in ref["val"]] == list(ds.splits["val"].paths)


def test_class_list_file_sets_label_order(tmp_path, bloodmnist128):
    root = make_split_tree(tmp_path / "t", bloodmnist128)
    assert open_dataset(root).classes == ("basophil", "lymphocyte", "platelet")
    (root / "classes.txt").write_text("# label order\nplatelet\nbasophil\nlymphocyte\n")
    ds = open_dataset(root)
    assert ds.classes == ("platelet", "basophil", "lymphocyte")
    first_platelet = ds.files("train")[0]
    assert first_platelet.parent.name == "platelet" and ds.splits["train"].labels[0] == 0


def test_class_list_must_cover_the_folders(tmp_path, bloodmnist128):
    root = make_split_tree(tmp_path / "t", bloodmnist128)
    lst = tmp_path / "classes.txt"
    lst.write_text("basophil\nlymphocyte\n")
    with pytest.raises(DataError, match="platelet.*not in the class list"):
        open_dataset(root, classes=lst)


def test_missing_split_names_the_folder(tmp_path, bloodmnist128):
    root = make_split_tree(tmp_path / "t", bloodmnist128)
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match=r"t/val: missing split folder"):
        open_dataset(root)


def test_empty_class_names_the_folder(tmp_path, bloodmnist128):
    root = make_split_tree(tmp_path / "t", bloodmnist128)
    for f in (root / "test" / "lymphocyte").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"test/lymphocyte: empty class"):
        open_dataset(root)


def test_corrupt_image_names_the_file(tmp_path, bloodmnist128):
    root = make_split_tree(tmp_path / "t", bloodmnist128)
    bad = root / "val" / "basophil" / "broken.jpg"
    bad.write_bytes(b"this is not an image at all")
    ds = open_dataset(root)  # opening lists files; decoding finds the problem
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image"):
        ds.load_images("val")


def test_truncated_jpeg_names_the_file(tmp_path, bloodmnist128):
    root = make_split_tree(tmp_path / "t", bloodmnist128)
    victim = sorted((root / "train" / "platelet").iterdir())[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # OpenCV 4 would decode this with only a warning
    ds = open_dataset(root)
    with pytest.raises(DataError, match=rf"{victim.name}: truncated JPEG"):
        ds.load_images("train")


def test_mixed_sizes_need_a_size(tmp_path, bloodmnist128):
    import cv2

    root = make_split_tree(tmp_path / "t", bloodmnist128)
    one = sorted((root / "val" / "basophil").iterdir())[0]
    cv2.imwrite(str(one), cv2.resize(cv2.imread(str(one)), (64, 64)))
    ds = open_dataset(root)
    with pytest.raises(DataError, match="differs from"):
        ds.load_images("val")
    assert ds.load_images("val", size=96)[0].shape == (9, 96, 96, 3)


def test_flat_tree_too_small_to_split(tmp_path, bloodmnist128):
    root = make_flat_tree(tmp_path / "flat", bloodmnist128, {"basophil": 1, "platelet": 3})
    with pytest.raises(DataError, match="cannot split 72/8/20"):
        open_dataset(root)


# ----------------------------------------------------------------------------- npz


def test_tiny_gray_npz_becomes_rgb(tmp_path):
    path = make_npz(tmp_path / "grays.npz", channels=None, size=10)
    ds = open_dataset(path)
    assert ds.classes == ("class_0", "class_1", "class_2") and ds.expected_md5 is None
    x, y = ds.load_images("train")
    assert x.shape == (12, 10, 10, 3)
    assert np.array_equal(x[..., 0], x[..., 2])
    assert ds.load_images("val", size=16)[0].shape == (4, 16, 16, 3)


@pytest.mark.parametrize("override, message", [
    ({"val_images": None}, r"missing split 'val'"),
    ({"test_labels": np.zeros((5, 1), np.uint8)}, r"'test_images' has 6 images but 'test_labels' has 5 labels"),
    ({"train_images": np.zeros((12, 8, 8, 3), np.float32)}, r"'train_images' has dtype float32; expected uint8"),
    ({"train_labels": np.zeros((12, 4), np.uint8)}, r"multi-label"),
    ({"val_labels": np.zeros((4, 1), np.float32)}, r"'val_labels' has dtype float32"),
    ({"train_images": np.zeros((12, 8, 8, 5), np.uint8)}, r"expected \(N, H, W\) or \(N, H, W, 3\)"),
])
def test_broken_npz_names_file_and_problem(tmp_path, override, message):
    path = make_npz(tmp_path / "broken.npz", **override)
    with pytest.raises(DataError, match=message) as err:
        open_dataset(path)
    assert str(path) in str(err.value)


def test_labels_out_of_range_for_the_class_list(tmp_path):
    path = make_npz(tmp_path / "bloodmnist.npz", num_classes=3,
                    val_labels=np.array([[0], [1], [9], [2]], np.uint8))
    with pytest.raises(DataError, match=r"bloodmnist\.npz: 'val_labels' has labels outside 0\.\.7"):
        open_dataset(path)


def test_not_a_zip(tmp_path):
    path = tmp_path / "fake.npz"
    path.write_bytes(b"PK but not really")
    with pytest.raises(DataError, match=r"fake\.npz: not a readable \.npz"):
        open_dataset(path)


def test_folders_that_are_not_classification_sets_say_so(tmp_path, bccd, bloodmnist128):
    with pytest.raises(DataError, match="Pascal VOC detection set"):
        open_dataset(bccd)
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copyfile(real_jpegs(bloodmnist128, "val", 1)["basophil"][0], loose / "a.jpg")
    with pytest.raises(DataError, match=r"loose: images lie directly in the folder"):
        open_dataset(loose)


def test_other_files_are_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not a data set"):
        open_dataset(path)


# ----------------------------------------------------------------------------- verify


def test_verify_lists_every_problem_of_a_tree(tmp_path, bloodmnist128):
    root = make_split_tree(tmp_path / "t", bloodmnist128)
    bad = sorted((root / "train" / "basophil").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:700])
    (root / "val" / "platelet" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nnothing")
    for f in (root / "test" / "lymphocyte").iterdir():
        f.unlink()
    report = D.verify_dataset(root)
    text = "\n".join(report.problems)
    assert not report.ok and len(report.problems) == 3, text
    assert f"{bad}: truncated JPEG" in text
    assert "junk.png: truncated PNG" in text
    assert "test/lymphocyte: empty class" in text


def test_verify_finds_duplicates_and_relabels(tmp_path, bloodmnist128):
    root = make_split_tree(tmp_path / "t", bloodmnist128)
    src = sorted((root / "train" / "basophil").iterdir())[0]
    shutil.copyfile(src, root / "test" / "platelet" / "copy.jpg")
    report = D.verify_dataset(root)
    assert report.ok and report.checked == 28
    assert any("across splits" in w for w in report.warnings)
    assert any("different labels" in w and "copy.jpg (platelet)" in w for w in report.warnings)


def test_verify_npz_md5(bloodmnist28_npz, tmp_path):
    good = D.verify_dataset(bloodmnist28_npz)
    assert good.ok and good.md5 == "7053d0359d879ad8a5505303e11de1dc" == good.expected_md5
    assert good.checked == 17092 and good.sizes == {"28x28": 17092}
    fake = make_npz(tmp_path / "bloodmnist.npz", num_classes=8)  # right name, wrong bytes
    bad = D.verify_dataset(fake)
    assert any("differs from MedMNIST's published 7053d0359d879ad8a5505303e11de1dc" in p for p in bad.problems)


def test_verify_npz_reports_classes_without_images(tmp_path):
    path = make_npz(tmp_path / "two.npz", num_classes=2)
    report = D.verify_dataset(path, classes=["a", "b", "platelet"])
    assert [p for p in report.problems if "no images" in p] == [
        f"{path}: class 'platelet' has no images in split {s!r}" for s in ("train", "val", "test")]
    assert any("no published md5" in w for w in report.warnings)


# ----------------------------------------------------------------------------- download


def test_download_checks_md5_into_the_cache(tmp_path, monkeypatch, bloodmnist28_npz):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(bloodmnist28_npz, mirror / "bloodmnist.npz")
    monkeypatch.setenv("HEMAEDGE_MEDMNIST_URL", mirror.as_uri())
    monkeypatch.setenv("HEMAEDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HEMAEDGE_DATA", raising=False)
    got = D.download_medmnist("bloodmnist", 28, progress=False)
    assert got == tmp_path / "cache" / "bloodmnist.npz" and D.md5sum(got) == D.MEDMNIST_MD5["bloodmnist"][28]
    assert open_dataset("bloodmnist").root == got  # now found by name in the cache

    make_npz(mirror / "bloodmnist_64.npz")  # the mirror serves wrong bytes
    with pytest.raises(DataError, match="does not match the published 2b94928a2ae4916078ca51e05b6b800b"):
        D.download_medmnist("bloodmnist", 64, progress=False)
    assert not (tmp_path / "cache" / "bloodmnist_64.npz").exists()
    assert not list((tmp_path / "cache").glob(".*part*"))


def test_medmnist_names():
    assert D.medmnist_id("bloodmnist_128.npz") == ("bloodmnist", 128)
    assert D.medmnist_id("/x/bloodmnist.npz") == ("bloodmnist", 28)
    assert D.medmnist_id("bloodmnist_100.npz") is None and D.medmnist_id("mydata.npz") is None
    assert D.medmnist_url("bloodmnist", 224).startswith("https://zenodo.org/records/10519652/files/bloodmnist_224.npz")
    with pytest.raises(DataError):
        D.medmnist_url("nosuchmnist")


def test_real_jpegs_helper_sees_every_class(bloodmnist128):
    assert list(real_jpegs(bloodmnist128, "val", 1)) == list(D.CLASS_NAMES_BLOODMNIST)
