"""Helpers for the fine-tuning tests: a small ImageFolder tree with its own class list, and
tiny real training runs (the small from-scratch CNN at 32 px, so a run takes seconds)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# A 3-class set with a different class list from BloodMNIST's (renamed folders).
TREE_CLASSES = {"lymphocyte": "lymphoid", "neutrophil": "granulocyte", "platelet": "thrombocyte"}


def make_tree(src: Path, dst: Path, per_split=(("train", 12), ("val", 6), ("test", 6))) -> Path:
    """{split}/{class}/*.jpg copied from bloodmnist128 with renamed classes."""
    for split, n in per_split:
        for old, new in TREE_CLASSES.items():
            out = dst / split / new
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted((src / split / old).glob("*.jpg"))[:n]:
                shutil.copy(f, out / f.name)
    return dst


def tiny_config(data, out, **kw):
    from hemaedge.train.finetune import FinetuneConfig

    opts = dict(data=str(data), out=str(out), backbone="smallcnn", weights=None, size=32, epochs=2,
                batch_size=8, bootstrap=20, seed=42)
    opts.update(kw)
    return FinetuneConfig(**opts)


# Fixtures imported into several test modules are set up once per module by pytest; this
# cache makes the (expensive) training happen once per session.
_CACHE: dict = {}


@pytest.fixture(scope="session")
def tree3(bloodmnist128, tmp_path_factory) -> Path:
    if "tree3" not in _CACHE:
        _CACHE["tree3"] = make_tree(bloodmnist128, tmp_path_factory.mktemp("tree3"))
    return _CACHE["tree3"]


@pytest.fixture(scope="session")
def tiny_runs(tree3, tmp_path_factory):
    """Two tiny fine-tuning runs on the 3-class tree (different seeds): ensemble members."""
    from hemaedge.train.finetune import finetune

    if "runs" not in _CACHE:
        root = tmp_path_factory.mktemp("tiny_runs")
        runs = []
        for seed in (1, 2):
            cfg = tiny_config(tree3, root / f"seed{seed}", seed=seed)
            finetune(cfg, log=lambda *_: None)
            runs.append(cfg)
        _CACHE["runs"] = runs
    return _CACHE["runs"]
