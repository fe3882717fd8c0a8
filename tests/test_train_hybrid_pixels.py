"""Hybrid inputs: the Otsu pipeline on real cells and the paper's three augmentation types."""
import numpy as np
import pytest

from hemaedge.edge.preprocess import InputContract, apply_preprocess, masked_rgb, otsu_binary
from hemaedge.train import augment as A
from hybrid_helpers import load_slice


@pytest.fixture(scope="module")
def cells(bloodmnist128):
    x, y, _ = load_slice(bloodmnist128, "val", 3)
    return x, y


def test_otsu_mask_finds_the_central_cell(cells):
    x, _ = cells
    c = InputContract(size=128, preprocess="otsu-mask")
    centre_hits = 0
    for img in x:
        m = apply_preprocess(img, c)
        assert m.shape == (128, 128, 3) and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 255}
        assert (m[..., 0] == m[..., 1]).all() and (m[..., 1] == m[..., 2]).all()  # replicated
        fg = (m[..., 0] > 0).mean()
        assert 0.03 < fg < 0.8  # some cells, not the whole field
        centre_hits += m[56:72, 56:72, 0].mean() > 127  # the labelled cell sits in the middle
    assert centre_hits >= 0.8 * len(x)


def test_otsu_pipeline_cleans_noise():
    # A dark disc on a light background plus salt noise: closing/opening remove the specks.
    img = np.full((128, 128, 3), 220, np.uint8)
    yy, xx = np.mgrid[:128, :128]
    img[(yy - 64) ** 2 + (xx - 64) ** 2 < 30 ** 2] = 90
    rng = np.random.default_rng(0)
    img[rng.integers(0, 128, 40), rng.integers(0, 128, 40)] = 0
    m = otsu_binary(img)
    disc = (yy - 64) ** 2 + (xx - 64) ** 2 < 28 ** 2
    outside = (yy - 64) ** 2 + (xx - 64) ** 2 > 34 ** 2
    assert (m[disc] == 255).all() and (m[outside] == 0).mean() > 0.995


def test_masked_rgb_keeps_cell_colour_only(cells):
    img = cells[0][0]
    mask = otsu_binary(img) > 0
    out = masked_rgb(img)
    assert (out[~mask] == 0).all() and (out[mask] == img[mask]).all()


@pytest.mark.parametrize("kind", A.PAPER_TYPES)
def test_each_type_is_seeded_and_changes_images(cells, kind):
    x = cells[0][:6]
    a = A.augment_type(x, kind, seed=1)
    assert a.shape == x.shape and a.dtype == np.uint8
    assert all(np.abs(a[i].astype(int) - x[i]).mean() > 1 for i in range(len(x)))
    assert (A.augment_type(x, kind, seed=1) == a).all()                 # reproducible
    assert not (A.augment_type(x, kind, seed=2) == a).all()             # seed matters
    assert (A.augment_type(x[3:], kind, seed=1, start_index=3) == a[3:]).all()  # chunking-proof


def test_brightness_and_contrast_change_by_10_to_20_percent():
    flat = np.full((1, 32, 32, 3), 128, np.uint8)
    shifts = []
    for s in range(40):
        t = A._brightness()
        t = A.A.Compose([t], seed=s)
        shifts.append(float(t(image=flat[0])["image"].mean()) - 128)
    shifts = np.array(shifts)
    assert (np.abs(shifts) >= 0.1 * 255 - 1).all() and (np.abs(shifts) <= 0.2 * 255 + 1).all()
    assert (shifts > 0).any() and (shifts < 0).any()
    two = np.zeros((32, 32, 3), np.uint8)
    two[:, :16], two[:, 16:] = 100, 160
    ratios = []
    for s in range(40):
        t = A.A.Compose([A._contrast()], seed=s)
        ratios.append(float(t(image=two)["image"].std()) / two.std())
    ratios = np.array(ratios)
    assert ((np.abs(ratios - 1) >= 0.09) & (np.abs(ratios - 1) <= 0.21)).all()


def test_type1_zoom_and_type2_elastic_are_geometric():
    # A centred square: zoom changes its area, elastic deformation bends its edges.
    sq = np.full((1, 96, 96, 3), 230, np.uint8)
    sq[0, 32:64, 32:64] = 40
    areas = [(A.augment_type(sq, 1, seed=s)[0, ..., 0] < 128).sum() for s in range(10)]
    assert min(areas) < 32 * 32 * 0.98 or max(areas) > 32 * 32 * 1.02
    assert all(0.75 * 1024 < a < 1.3 * 1024 for a in areas)  # 0.9-1.1 zoom: area 0.81-1.21
    t = A.A.Compose([A.A.ElasticTransform(alpha=5, sigma=3, border_mode=0, p=1.0)], seed=0)
    assert (t(image=sq[0])["image"] != sq[0]).any()


def test_paper_mode_triples_the_training_set(cells):
    x, y = cells
    xa, ya, kinds = A.expand_training_set(x, y, "paper", seed=42)
    assert len(xa) == 3 * len(x) == A.augmented_size(len(x), "paper")
    assert (ya == np.tile(y, 3)).all() and list(np.unique(kinds)) == [0, 1, 2]
    xn, yn, kn = A.expand_training_set(x, y, "none")
    assert xn is x and (kn == -1).all()
    with pytest.raises(ValueError):
        A.expand_training_set(x, y, "mixup")
