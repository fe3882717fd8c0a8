"""Shared fixtures: where the read-only shared data lives, and small real slices of it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HEMAEDGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set HEMAEDGE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def bloodmnist128(shared_data) -> Path:
    return _need(shared_data / "bloodmnist128")


@pytest.fixture(scope="session")
def bloodmnist28_npz(shared_data) -> Path:
    return _need(shared_data / "bloodmnist28" / "bloodmnist.npz")


@pytest.fixture(scope="session")
def bccd(shared_data) -> Path:
    return _need(shared_data / "bccd")


@pytest.fixture(scope="session")
def pbc_raw_val(shared_data) -> Path:
    return _need(shared_data / "pbc_raw_val")
