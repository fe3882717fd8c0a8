"""`hemaedge deploy` against a real OpenSSH server started on 127.0.0.1 by the test.

The server is Debian's openssh-server (/usr/sbin/sshd) run as the current user on an
unprivileged port with a temporary host key and a temporary authorized key; the "device" is
this machine, with its model store in a temporary folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hemaedge.edge.store import ModelStore
from ssh_helpers import SshdUnavailable, free_port as _free_port, sshd_server, why_no_sshd
from store_helpers import HEMAEDGE, make_bundle, run_cli

pytestmark = pytest.mark.skipif(why_no_sshd() is not None, reason=why_no_sshd() or "")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    try:
        with sshd_server(tmp_path_factory.mktemp("sshd")) as server:
            yield server
    except SshdUnavailable as exc:
        pytest.skip(str(exc))


def _deploy(sshd, bundle, store, *targets, key="client_key", extra=()):
    d = sshd["dir"]
    args = ["deploy", bundle, *sum((["--to", t] for t in targets), []), "--identity", d / key,
            "-o", f"UserKnownHostsFile={d / 'known_hosts'}", "-F", "/dev/null",
            "--remote-hemaedge", HEMAEDGE, "--remote-store", store, *extra]
    return run_cli(*args)


def _table(stdout: str) -> dict:
    rows = {}
    for line in stdout.splitlines()[1:]:
        parts = line.split()
        if parts and "@" in parts[0]:
            rows[parts[0]] = line
    return rows


def test_fleet_push_with_refusing_hosts(sshd, tmp_path):
    user, port = sshd["user"], sshd["port"]
    store = tmp_path / "device-store"
    v1 = make_bundle(tmp_path / "b", "bm-v1")
    good = f"{user}@127.0.0.1:{port}"
    stranger = f"nobody@127.0.0.1:{port}"  # not an allowed user/key on that server
    closed = f"{user}@127.0.0.1:{_free_port()}"  # nothing listens there
    report = tmp_path / "deploy.json"
    remote_tmp_before = set(Path("/tmp").glob("hemaedge-deploy.*"))
    r = _deploy(sshd, v1, store, closed, good, stranger, extra=["--json", report])
    assert r.returncode == 1, r.stdout + r.stderr
    rows = _table(r.stdout)
    assert "ok" in rows[good] and "bm-v1-1" in rows[good] and "match" in rows[good]
    assert "FAILED (connect+upload)" in rows[closed] and "Connection refused" in rows[closed]
    assert "FAILED (connect+upload)" in rows[stranger] and "Permission denied" in rows[stranger]
    assert "2 of 3 device(s) failed" in r.stderr
    results = {x["target"]: x for x in json.loads(report.read_text())}
    assert results[good]["ok"] and results[good]["checksum_ok"] and not results[closed]["ok"]

    # the device really has it: verified, active, byte-identical to what was sent
    dev = ModelStore(store)
    assert dev.active_version() == "bm-v1-1"
    assert (dev.active_path() / "model.onnx").read_bytes() == (v1 / "model.onnx").read_bytes()
    # and the temporary upload folder on the device is gone
    assert set(Path("/tmp").glob("hemaedge-deploy.*")) <= remote_tmp_before

    # second push: the summary names the previous version; all hosts fine -> exit 0
    v2 = make_bundle(tmp_path / "b", "bm-v2")
    r = _deploy(sshd, v2, store, good)
    assert r.returncode == 0, r.stdout + r.stderr
    row = _table(r.stdout)[good]
    assert "bm-v2-2" in row and "bm-v1-1" in row and "match" in row
    assert "All 1 device(s) installed" in r.stdout

    # a bundle with another class list is refused on the device before switching
    other = make_bundle(tmp_path / "b", "leukemia", classes=["ALL", "AML", "CLL", "CML", "normal", "other"])
    r = _deploy(sshd, other, store, good)
    assert r.returncode == 1 and "FAILED (install)" in r.stdout and "--accept-change" in r.stdout
    assert dev.active_version() == "bm-v2-2"
    r = _deploy(sshd, other, store, good, extra=["--accept-change"])
    assert r.returncode == 0 and dev.active_version() == "leukemia-3"


def test_unauthorized_key_and_missing_remote_hemaedge(sshd, tmp_path):
    user, port = sshd["user"], sshd["port"]
    store = tmp_path / "device-store"
    b = make_bundle(tmp_path / "b", "bm")
    good = f"{user}@127.0.0.1:{port}"
    r = _deploy(sshd, b, store, good, key="stranger_key")  # a key the server does not authorize
    assert r.returncode == 1 and "Permission denied" in r.stdout
    d = sshd["dir"]
    r = run_cli("deploy", b, "--to", good, "--identity", d / "client_key", "-o",
                f"UserKnownHostsFile={d / 'known_hosts'}", "-F", "/dev/null",
                "--remote-hemaedge", "/nonexistent/bin/hemaedge", "--remote-store", store)
    assert r.returncode == 1 and "FAILED (install)" in r.stdout and "--remote-hemaedge" in r.stdout
    assert ModelStore(store).active_path() is None
    # BatchMode is not negotiable, and a bad --to is a usage error (exit 2), not a host failure
    r = run_cli("deploy", b, "--to", good, "-o", "BatchMode=no")
    assert r.returncode == 2 and "never asks for passwords" in r.stderr
    r = run_cli("deploy", b, "--to", "-oProxyCommand=evil")
    assert r.returncode == 2 and "expected user@host" in r.stderr
