"""Killing an install at any point, and two installs at once (real processes, real SIGKILL)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from hemaedge.edge.bundle import verify_bundle
from hemaedge.edge.store import ModelStore
from store_helpers import HEMAEDGE, make_bundle, run_cli


def _start_install(bundle, store, pause):
    env = dict(os.environ, HEMAEDGE_STORE_TEST_PAUSE=pause)
    return subprocess.Popen([HEMAEDGE, "edge", "install", str(bundle), "--store", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc, needle, timeout=60):
    """Read the child's stderr until `needle` appears (the pause hook announces itself)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return
    proc.kill()
    raise AssertionError(f"child never reached {needle!r}; stderr: {''.join(seen)}")


@pytest.mark.parametrize("point", ["locked", "staged", "placed"])
def test_kill_midway_leaves_active_model_untouched(tmp_path, point):
    store = ModelStore(tmp_path / "store")
    old = make_bundle(tmp_path / "b", "old-model", model_bytes=1 << 16)
    new = make_bundle(tmp_path / "b", "new-model", model_bytes=1 << 20)
    store.install(old)
    before_state = store.state_path.read_bytes()
    before_active = store.active_path()

    proc = _start_install(new, store.root, point)
    _wait_for(proc, f"hemaedge-store-pause: {point}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # the committed state, and so the active model, is exactly as before, and still runs-ready
    assert store.state_path.read_bytes() == before_state
    assert store.active_path() == before_active
    assert verify_bundle(store.active_path()) == []
    assert [v.version for v in store.list_versions()] == ["old-model-1"]
    # nothing half-written in versions/: every folder there is a complete, verified bundle
    for d in (store.root / "versions").iterdir():
        assert verify_bundle(d) == [], d
    # the next install cleans the debris and succeeds
    res = store.install(new)
    assert res.previous == "old-model-1" and store.active_version() == res.version
    assert sorted(p.name for p in (store.root / "versions").iterdir()) == sorted(["old-model-1", res.version])
    assert not any((store.root / ".staging").iterdir())


def test_kill_after_commit_leaves_new_model_complete(tmp_path):
    store = ModelStore(tmp_path / "store")
    store.install(make_bundle(tmp_path / "b", "old-model"))
    proc = _start_install(make_bundle(tmp_path / "b", "new-model"), store.root, "committed")
    _wait_for(proc, "hemaedge-store-pause: committed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert store.active_version() == "new-model-2"
    assert verify_bundle(store.active_path()) == []


def test_two_installs_at_once_are_serialised(tmp_path):
    store = ModelStore(tmp_path / "store")
    a = make_bundle(tmp_path / "b", "first", model_bytes=1 << 18)
    b = make_bundle(tmp_path / "b", "second", model_bytes=1 << 18)
    # the first holds the lock for a while; the second must wait for it, not interleave
    first = _start_install(a, store.root, "locked:4")
    _wait_for(first, "hemaedge-store-pause: locked")
    second = subprocess.Popen([HEMAEDGE, "edge", "install", str(b), "--store", str(store.root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out2, err2 = second.communicate(timeout=120)
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "Waiting for another install" in err2
    assert "Installed first-1" in out1 and "Installed second-2 (previous: first-1)" in out2
    assert store.active_version() == "second-2"
    assert [v.version for v in store.list_versions(verify=True)] == ["first-1", "second-2"]
    assert all(not v.problem for v in store.list_versions(verify=True))


def test_cli_bad_bundle_path_is_a_clear_error(tmp_path):
    r = run_cli("edge", "install", tmp_path / "nope", "--store", tmp_path / "store")
    assert r.returncode == 2 and "Error:" in r.stderr and "Traceback" not in r.stderr
