"""Which images a quick run or a calibration set takes: every subsetting policy, once.

Each policy has one name and one command-line flag wherever it is offered:
  first_per_class(labels, n)      the first n images of every class      (--per-class N, --limit-per-class N)
  sample_per_class(labels, k, n)  n seeded random images of every class  (hemaedge data calibration --sample-per-class N --seed S)
  sample(n_total, n, seed)        n seeded random images of the split    (hemaedge export ... --sample N)
  spread(n_total, n)              n images spread evenly over the split  (hemaedge bench run --spread N)
All return sorted index arrays (int64), so images keep the data set's order.
"""
from __future__ import annotations

import numpy as np


def first_per_class(labels, n: int | None) -> np.ndarray:
    """Indices of the first `n` images of every class (all when n is None or 0)."""
    labels = np.asarray(labels)
    if not n:
        return np.arange(len(labels))
    keep = [np.flatnonzero(labels == k)[:int(n)] for k in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def sample_per_class(labels, num_classes: int, per_class: int, seed: int = 42) -> np.ndarray:
    """Sorted indices: `per_class` drawn without replacement from each class (all if fewer).

    One seeded generator visits the classes in label order, so the sample depends only on the
    labels, the count and the seed.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        n = min(int(per_class), members.size)
        picked.append(np.sort(rng.choice(members, size=n, replace=False)) if n else members[:0])
    return np.concatenate(picked) if picked else np.zeros(0, np.int64)


def sample(n_total: int, n: int | None, seed: int = 0) -> np.ndarray:
    """`n` of `n_total` indices, a seeded random subset (all when n is None or too big)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=int(n), replace=False))


def spread(n_total: int, n: int | None) -> np.ndarray:
    """`n` indices spread evenly from the first to the last (all when n is None or too big)."""
    if not n or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, int(n)).round().astype(int))
