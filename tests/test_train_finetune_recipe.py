"""The fine-tuning recipe's pieces on real BloodMNIST-128 data: CLAHE from the edge code,
augmentation, inverse-frequency sampling and loss, mixup, cosine annealing."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("albumentations")

from hemaedge.edge.preprocess import InputContract, clahe, resize  # noqa: E402
from hemaedge.train import sampling  # noqa: E402
from hemaedge.train.finetune_augment import BatchAugmenter  # noqa: E402


@pytest.fixture(scope="module")
def ds(bloodmnist128):
    from hemaedge.train.data import open_dataset

    return open_dataset(bloodmnist128)


@pytest.fixture(scope="module")
def train_labels(ds):
    return np.asarray(ds.split("train").labels)


@pytest.fixture(scope="module")
def small_batch(ds):
    from hemaedge.train.finetune import limit_per_class

    idx = limit_per_class(ds.split("val").labels, 2)
    return ds.load_images("val", size=64, indices=idx)


# ----------------------------------------------------------------------------- CLAHE


def test_training_images_get_the_edge_clahe(ds):
    from hemaedge.train.finetune import FinetuneConfig, limit_per_class, load_split

    cfg = FinetuneConfig(data="", out="", size=64, clahe_clip=2.0, clahe_tiles=8, normalize="none")
    assert cfg.contract() == InputContract(size=64, preprocess="clahe", scaling="raw")
    x, y = load_split(ds, "val", cfg.contract(), limit=1)
    raw, y2 = ds.load_images("val", indices=limit_per_class(ds.split("val").labels, 1))
    assert np.array_equal(y, y2) and len(y) == 8
    expected = np.stack([clahe(resize(img, 64), 2.0, 8) for img in raw])
    assert np.array_equal(x, expected)  # the one CLAHE implementation, not a copy
    plain = np.stack([resize(img, 64) for img in raw])
    assert not np.array_equal(x, plain)
    # CLAHE stretches local contrast of the lightness channel
    assert x.std() > plain.std() * 0.98


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_is_reproducible_per_batch(small_batch):
    x, _ = small_batch
    aug = BatchAugmenter("full", seed=7)
    a = aug(x, epoch=3, batch=5)
    b = BatchAugmenter("full", seed=7)(x, epoch=3, batch=5)  # e.g. after a resume
    c = aug(x, epoch=3, batch=6)
    assert a.shape == x.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, x)
    assert np.array_equal(BatchAugmenter("none")(x, 0, 0), x)
    with pytest.raises(ValueError, match="preset"):
        BatchAugmenter("heavy")


# ----------------------------------------------------------------------------- imbalance


def test_inverse_frequency_class_weights(train_labels):
    counts = np.bincount(train_labels, minlength=8)
    w = sampling.class_weights(train_labels, 8)
    # weight x count is the same for every class, and the mean sample weight is 1
    np.testing.assert_allclose(w * counts, (w * counts)[0], rtol=1e-5)
    assert abs(w[train_labels].mean() - 1.0) < 1e-5
    assert w.argmax() == counts.argmin()  # the rarest class weighs most
    assert sampling.class_weights([0, 0, 2], 3)[1] == 0.0  # absent class


def test_weighted_sampling_balances_classes(train_labels):
    counts = np.bincount(train_labels, minlength=8) / len(train_labels)
    assert counts.max() / counts.min() > 2.5  # BloodMNIST is imbalanced
    rng = np.random.default_rng(0)
    order = sampling.epoch_order(train_labels, 8, rng, weighted=True)
    drawn = np.bincount(train_labels[order], minlength=8) / len(order)
    np.testing.assert_allclose(drawn, 1 / 8, atol=0.015)
    plain = sampling.epoch_order(train_labels, 8, rng, weighted=False)
    assert np.array_equal(np.sort(plain), np.arange(len(train_labels)))


def test_weighted_targets_give_weighted_cross_entropy():
    import keras

    p = sampling.one_hot([0, 1, 2, 1], 3) * 0.5 + 0.5 / 3
    y = sampling.one_hot([0, 1, 2, 2], 3)
    y_mix = 0.7 * y + 0.3 * y[[1, 2, 3, 0]]
    w = np.array([0.5, 1.0, 3.0], np.float32)
    got = keras.losses.CategoricalCrossentropy(reduction=None)(sampling.weight_targets(y_mix, w), p)
    expected = -(w[None] * y_mix * np.log(p)).sum(axis=1)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


# ----------------------------------------------------------------------------- mixup


def test_mixup(small_batch):
    x, y = small_batch
    x = x.astype(np.float32)
    y1 = sampling.one_hot(y, 8)
    xm, ym, lam = sampling.mixup(x, y1, np.random.default_rng(3), p=1.0, alpha=0.2)
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, rtol=1e-6)
    # each mixed image is lam * itself + (1 - lam) * one other image of the batch (a permutation),
    # and its target mixes the same two labels with the same lam
    partners = []
    for i in range(len(x)):
        err = [np.abs(xm[i] - (lam * x[i] + (1 - lam) * x[j])).max() for j in range(len(x))]
        j = int(np.argmin(err))
        assert err[j] < 1e-2
        np.testing.assert_allclose(ym[i], lam * y1[i] + (1 - lam) * y1[j], atol=1e-6)
        partners.append(j)
    assert sorted(partners) == list(range(len(x)))
    same = sampling.mixup(x, y1, np.random.default_rng(3), p=1.0, alpha=0.2)
    assert np.array_equal(same[0], xm)
    x0, y0, lam0 = sampling.mixup(x, y1, np.random.default_rng(3), p=0.0)
    assert lam0 == 1.0 and x0 is x and y0 is y1
    # p=0.5: about half the batches are mixed
    rng = np.random.default_rng(4)
    mixed = [sampling.mixup(x[:2], y1[:2], rng, p=0.5)[2] < 1.0 for _ in range(400)]
    assert 0.4 < np.mean(mixed) < 0.6


# ----------------------------------------------------------------------------- schedule


def test_cosine_annealing():
    from hemaedge.train.finetune import FinetuneConfig, cosine_lr

    cfg = FinetuneConfig(data="", out="", epochs=10, lr=1e-4)
    lrs = [cosine_lr(e, cfg) for e in range(10)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[5] == pytest.approx(5e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0
    assert cosine_lr(4, FinetuneConfig(data="", out="", epochs=10, lr=1e-4, t_max=4)) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- robustness


def test_robust_preset_runs_camera_stage_before_the_device_preprocessing(small_batch):
    from hemaedge.train.finetune_augment import ROBUST_PIECES

    x, _ = small_batch
    seen = []

    def spy(img):
        seen.append(img.copy())
        return img

    a = BatchAugmenter("robust", seed=3, preprocess=spy)(x, epoch=1, batch=2)
    assert a.shape == x.shape and a.dtype == np.uint8
    # the preprocessing saw camera-augmented images (not the originals) ...
    assert len(seen) == len(x) and any(not np.array_equal(s, o) for s, o in zip(seen, x))
    # ... and the result is reproducible per (seed, epoch, batch), as for resume
    assert np.array_equal(a, BatchAugmenter("robust", seed=3, preprocess=spy)(x, epoch=1, batch=2))
    # pieces can be switched off one by one (ablations) and unknown pieces are refused
    only = BatchAugmenter("robust", seed=3, pieces=("jpeg",))
    assert len(only.camera.transforms) == 1
    assert len(BatchAugmenter("robust", seed=3).camera.transforms) == len(ROBUST_PIECES)
    with pytest.raises(ValueError, match="robustness pieces"):
        BatchAugmenter("robust", pieces=("h&e",))


def test_stain_strength_keeps_background_and_changes_stained_parts():
    import albumentations as A

    from hemaedge.train.finetune_augment import StainStrength

    img = np.zeros((4, 4, 3), np.uint8)
    img[:2] = 250          # background
    img[2:] = (90, 40, 120)  # a stained nucleus
    t = A.Compose([StainStrength(scale_range=(0.5, 0.5), p=1.0)])
    out = t(image=img)["image"]
    assert np.abs(out[:2].astype(int) - 250).max() <= 3
    assert (out[2:].astype(int) > img[2:]).all()  # half the optical density: paler


def test_the_double_imbalance_correction_over_weights_rare_classes(train_labels):
    """Why weighted loss is off by default: with inverse-frequency SAMPLING every class already
    contributes equally to the loss; weighting the loss as well multiplies each class's share by
    its weight again, so the rarest class counts (w_max / w_min) times the commonest."""
    w = sampling.class_weights(train_labels, 8)
    n = len(train_labels)
    rng = np.random.default_rng(0)
    order = sampling.epoch_order(train_labels, 8, rng, weighted=True)
    drawn = np.bincount(train_labels[order], minlength=8) / n
    share_single = drawn / drawn.sum()
    share_double = drawn * w / (drawn * w).sum()
    np.testing.assert_allclose(share_single, 1 / 8, atol=0.015)
    ratio = share_double.max() / share_double.min()
    assert ratio == pytest.approx(w.max() / w.min(), rel=0.1) and ratio > 2.5
    # and weighted targets no longer sum to 1: the logged loss is scaled by the batch's mean weight
    y = sampling.weight_targets(sampling.one_hot(train_labels[order][:256], 8), w)
    assert abs(y.sum(axis=1).mean() - w.mean()) < 0.1 and w.mean() > 1.1


# ----------------------------------------------------------------------------- focal loss


def test_focal_loss_is_the_focal_formula_and_cross_entropy_at_gamma_0():
    """`--loss focal`: -sum y (1-p)^gamma log p, for hard, soft (mixed) and class-weighted targets."""
    from hemaedge.train.finetune import FinetuneConfig, training_loss

    p = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]], np.float32)
    y = sampling.one_hot([0, 1, 2, 1], 3)
    y_soft = sampling.weight_targets(0.7 * y + 0.3 * y[[1, 2, 3, 0]], np.array([0.5, 1.0, 3.0], np.float32))
    for targets in (y, y_soft):
        for gamma in (0.0, 2.0):
            cfg = FinetuneConfig(data="d", out="o", loss="focal", focal_gamma=gamma)
            got = np.asarray(training_loss(cfg, reduction=None)(targets, p))
            np.testing.assert_allclose(got, -(targets * (1 - p) ** gamma * np.log(p)).sum(axis=1), rtol=1e-4)
    ce = np.asarray(training_loss(FinetuneConfig(data="d", out="o"), reduction=None)(y, p))
    focal0 = np.asarray(training_loss(FinetuneConfig(data="d", out="o", loss="focal", focal_gamma=0), reduction=None)(y, p))
    np.testing.assert_allclose(focal0, ce, rtol=1e-5)
    # gamma 2 shrinks a well-classified example's loss far more than a hard one's
    focal2 = np.asarray(training_loss(FinetuneConfig(data="d", out="o", loss="focal"), reduction=None)(y, p))
    assert focal2[0] / ce[0] < 0.02 < 0.25 < focal2[3] / ce[3]


def test_focal_loss_options_are_checked():
    from hemaedge.train.finetune import FinetuneConfig, FinetuneError

    with pytest.raises(FinetuneError, match="--loss"):
        FinetuneConfig(data="d", out="o", loss="hinge").validate()
    with pytest.raises(FinetuneError, match="focal gamma"):
        FinetuneConfig(data="d", out="o", loss="focal", focal_gamma=float("nan")).validate()


def _bar_angles(preset, n=64):
    """Angle (degrees from horizontal) of a horizontal bar after `n` augmented copies."""
    import cv2

    img = np.full((64, 64, 3), 230, np.uint8)
    img[28:36, 8:56] = 40  # a horizontal bar through the centre: flips keep it horizontal
    x = np.repeat(img[None], n, axis=0)
    out = BatchAugmenter(preset, seed=5)(x, epoch=0, batch=0)
    angles = []
    for o in out:
        m = cv2.moments((o[..., 0] < 128).astype(np.uint8), binaryImage=True)
        angles.append(abs(np.degrees(0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"]))))
    return np.asarray(angles)


def test_isotropic_preset_turns_cells_any_way_light_only_a_little():
    light, iso = _bar_angles("light"), _bar_angles("isotropic")
    assert light.max() < 30  # ±25° rotation, flips
    assert (iso > 45).mean() > 0.25  # any rotation: about half the copies end up closer to vertical
