"""Class imbalance and mixup for fine-tuning: inverse-frequency sampling, weighted loss, mixup.

BloodMNIST is imbalanced (basophils ~7 %, neutrophils ~20 %). The recipe counters it twice,
as published: training batches are drawn with probability inversely proportional to class
frequency, and the cross-entropy is weighted by inverse class frequency.
"""
from __future__ import annotations

import numpy as np
from sklearn.utils.class_weight import compute_class_weight


def class_weights(labels, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights n / (k * count_c) (sklearn "balanced"); absent classes get 0."""
    labels = np.asarray(labels).astype(int)
    present = np.unique(labels)
    w = np.zeros(n_classes, dtype=np.float32)
    w[present] = compute_class_weight("balanced", classes=present, y=labels)
    return w


def sampling_probabilities(labels, n_classes: int) -> np.ndarray:
    """Per-sample draw probability ∝ 1 / count of its class: every class is drawn equally often."""
    w = class_weights(labels, n_classes)[np.asarray(labels).astype(int)].astype(np.float64)
    return w / w.sum()


def epoch_order(labels, n_classes: int, rng: np.random.Generator, weighted: bool) -> np.ndarray:
    """Sample indices for one epoch (as many as there are samples)."""
    n = len(labels)
    if weighted:
        return rng.choice(n, size=n, replace=True, p=sampling_probabilities(labels, n_classes))
    return rng.permutation(n)


BALANCE_CAP = 4.0  # a rare class weighs at most this many times its count's share


def capped_balance_weights(labels: np.ndarray, cap: float = BALANCE_CAP) -> np.ndarray:
    """Per-cell weights (mean 1) that give every class of `labels` the same total, a rare class
    at most `cap` times its weight by count (one basophil must not carry a fifth of the loss)."""
    ks, counts = np.unique(labels, return_counts=True)
    per = {int(k): min(cap, len(labels) / (len(ks) * c)) for k, c in zip(ks, counts)}
    w = np.asarray([per[int(k)] for k in labels], np.float32)
    return w / w.mean()


def extra_draws(labels, n_base: int, share: float, rng: np.random.Generator, balanced: bool) -> np.ndarray:
    """Indices into a second microscope's cells for one epoch of `n_base` draws from the data
    set, so that they make `share` of the epoch. Balanced: every class drawn alike, a rare one
    capped (`capped_balance_weights`): a few hundred cells from a lab are far from balanced."""
    k = int(round(n_base * share / (1.0 - share)))
    p = capped_balance_weights(np.asarray(labels)).astype(np.float64) if balanced else None
    return rng.choice(len(labels), size=k, replace=True, p=None if p is None else p / p.sum())


def one_hot(labels, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[np.asarray(labels).astype(int)]


def mixup(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, p: float = 0.5,
          alpha: float = 0.2):
    """With probability p, mix the batch with a shuffled copy of itself (Zhang et al. 2018).

    x: float images, y: one-hot (or soft) targets. Returns (x, y, lam); lam = 1.0 when the
    batch was left alone. One lam per batch, drawn from Beta(alpha, alpha).
    """
    if p <= 0 or rng.random() >= p:
        return x, y, 1.0
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    xm = lam * x + (1.0 - lam) * x[perm]
    ym = lam * y + (1.0 - lam) * y[perm]
    return xm.astype(np.float32), ym.astype(np.float32), lam


def weight_targets(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Targets scaled by class weight: categorical cross-entropy on them is the weighted CE
    -sum_c w_c y_c log p_c exactly, also for mixed (soft) targets."""
    return (y * weights[None, :]).astype(np.float32)
