"""`hemaedge deploy --inventory`: the packaged Ansible role rolls a bundle out to a fleet.

The slow test runs the playbook over SSH against three real sshd instances on 127.0.0.1 (three
"devices", each its own folder), installing hemaedge on each from a wheel built once; one
device has a latency budget no model can meet (0.001 ms per frame, standing in for a model too
slow for that hardware), so the new bundle installs there but fails its health check, and the
device must roll back. The default-run test runs the same role once on two local "devices"
(Ansible's local connection, the test's own hemaedge), which checks the role's logic: health
check, rollback, the record of a failed bundle and the report; the slow test also checks that a
second run changes nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from click.testing import CliRunner

import fleet_helpers as fh
from hemaedge.edge.store import ModelStore
from store_helpers import make_bundle, run_cli

ANSIBLE = Path(sys.executable).with_name("ansible-playbook")
needs_ansible = pytest.mark.skipif(not ANSIBLE.exists(), reason="needs ansible-core (pip install 'hemaedge[dev]')")
# the packaged default bundle, installed first everywhere (version 1 of its name in each store)
V1 = json.loads((Path(__file__).parents[1] / "src/hemaedge/models/default/manifest.json").read_text())["name"] + "-1"
V2 = "tiny-onnx-2"
TOO_FAST = 0.001  # ms per frame: a latency budget no device meets, so that device's health check fails


def _deploy(inventory, bundle, report, forks=3, timeout=900):
    return run_cli("deploy", "--inventory", inventory, "--bundle", bundle, "--forks", forks, "--report-dir", report,
                   timeout=timeout)


def _preinstall_v1(stores):
    for store in stores:
        r = run_cli("edge", "install", fh.DEFAULT_BUNDLE, "--store", store)
        assert r.returncode == 0, r.stderr


def _check_rollout(r, report_dir, stores, failing: str, hosts: list[str], refused: dict | None = None):
    """First run: every device of `stores` but `failing` runs V2; `failing` was rolled back to V1;
    the `refused` ones ({host: message}) failed at install without a change; the report lists all."""
    refused = refused or {}
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    recap = fh.recap(r.stdout)
    assert set(hosts) <= set(recap), out
    for host in stores:
        assert recap[host]["changed"] > 0, (host, recap)
    assert all(recap[h]["failed"] == (h == failing or h in refused) for h in hosts), recap
    for host, store in stores.items():
        want = V1 if host == failing else V2
        assert ModelStore(store).active_version() == want, (host, out)
    report = json.loads((report_dir / "report.json").read_text())
    rows = {d["host"]: d for d in report["devices"]}
    assert sorted(rows) == sorted(hosts)
    bad = rows[failing]
    assert not bad["ok"] and bad["step"] == "health check" and bad["rolled_back"] is True
    assert f"<= {TOO_FAST} ms per frame" in bad["message"] and f"rolled back to {V1}" in bad["message"]
    assert bad["active_version"] == V1 and bad["installed"] == V2
    assert bad["last_run_model"] == V2  # the status file still describes the health check of the failed bundle
    for host, message in refused.items():
        row = rows[host]
        assert not row["ok"] and row["step"] == "install" and message in row["message"] and not row["rolled_back"]
        assert row["active_version"] == V1 and row["installed"] is None
    v2_digest = ModelStore(stores[hosts[0]]).list_versions()[-1].manifest_sha256
    for host in stores:
        if host == failing:
            continue
        row = rows[host]
        assert row["ok"] and row["active_version"] == V2 and row["active_digest"] == v2_digest
        assert row["hemaedge_version"] and row["last_run_model"] == V2 and row["last_run_frames"] == 1
        assert isinstance(row["fps"], float) and row["fps"] > 0 and row["latency_p50_ms"] > 0
        assert 0.0 <= row["flagged_ratio"] <= 1.0
    table = (report_dir / "report.md").read_text()
    assert all(f"| {h} | " in table for h in hosts) and "FAILED (health check), rolled back" in table
    assert "| device | status | active model | digest | hemaedge | last run of | last run fps | latency p50 ms |" in table
    assert f"| {failing} | FAILED (health check), rolled back | {V1} |" in table


def _check_second_run(r, stores_before, stores, failing, hosts):
    """Second run of the same rollout: nothing changes anywhere; the failed bundle is not retried."""
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    recap = fh.recap(r.stdout)
    assert all(recap[h]["changed"] == 0 for h in [*hosts, "localhost"]), recap
    assert recap[failing]["failed"] == 1 and "failed its health check on this device before" in out
    assert {h: (Path(s) / "store.json").read_bytes() for h, s in stores.items()} == stores_before


@pytest.fixture(scope="module")
def onnx_v2(tmp_path_factory):
    pytest.importorskip("onnx")
    return fh.onnx_bundle_like_default(tmp_path_factory.mktemp("bundles"))


@needs_ansible
def test_role_logic_on_local_devices(tmp_path, onnx_v2):
    """Local devices (Ansible's local connection): one healthy, one whose health check fails and
    rolls back, one that accepts only signed bundles (role variable hemaedge_require_signature)."""
    hosts = ["bench-a", "bench-b", "bench-c"]
    stores = {h: tmp_path / h / "store" for h in hosts}
    _preinstall_v1(stores.values())
    devices = {h: {"hemaedge_home": str(tmp_path / h / "home"), "hemaedge_store": str(stores[h])} for h in hosts}
    devices["bench-b"]["hemaedge_health_max_latency_ms"] = TOO_FAST
    devices["bench-c"]["hemaedge_require_signature"] = True
    inv = {"all": {"children": {"microscopes": {"hosts": devices, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "hemaedge_manage_software": False, "hemaedge_venv": sys.prefix}}}}}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps(inv))
    r = _deploy(inventory, onnx_v2, tmp_path / "report1", forks=3)
    _check_rollout(r, tmp_path / "report1", {h: stores[h] for h in hosts[:2]}, "bench-b", hosts,
                   refused={"bench-c": "not signed"})
    assert ModelStore(stores["bench-c"]).active_version() == V1  # refused before anything changed
    assert json.loads(next((tmp_path / "bench-b" / "home" / "failed-bundles").glob("*.json")).read_text())["reason"]
    assert not list((tmp_path / "bench-c" / "home" / "failed-bundles").glob("*.json"))  # not a health failure
    assert not (tmp_path / "bench-a" / "home" / "incoming").exists()  # the copied bundle is cleaned up
    # the report folder of a run is never overwritten (idempotence: see the slow three-device test)
    r = _deploy(inventory, onnx_v2, tmp_path / "report1", forks=2)
    assert r.returncode == 2 and "already holds a fleet report" in r.stderr


@pytest.mark.slow
@needs_ansible
@pytest.mark.skipif(__import__("ssh_helpers").why_no_sshd() is not None, reason="needs sshd and ssh")
def test_fleet_of_three_sshd_devices(tmp_path, onnx_v2):
    """Three real sshd devices: hemaedge installed by the role from a wheel, one health check fails."""
    from ssh_helpers import SshdUnavailable, make_keys, sshd_server

    keys = tmp_path / "keys"
    keys.mkdir()
    make_keys(keys)
    wheel = fh.build_wheel(tmp_path / "wheel")
    site = fh.device_site_packages(tmp_path / "site")
    devices = [tmp_path / f"dev{i}" for i in (1, 2, 3)]
    hosts = ["scope-1", "scope-2", "scope-3"]
    stores = {h: d / "store" for h, d in zip(hosts, devices)}
    _preinstall_v1(stores.values())
    with ExitStack() as stack:
        try:
            servers = [stack.enter_context(sshd_server(tmp_path / f"sshd{i}", keys)) for i in (1, 2, 3)]
        except SshdUnavailable as exc:
            pytest.skip(str(exc))
        assert len({s["port"] for s in servers}) == 3
        inventory = fh.write_inventory(tmp_path / "inventory.yml", servers, devices, wheel=wheel, site=site,
                                       host_vars={"scope-3": {"hemaedge_health_max_latency_ms": TOO_FAST}})
        r = _deploy(inventory, onnx_v2, tmp_path / "report1")
        _check_rollout(r, tmp_path / "report1", stores, "scope-3", hosts)
        for d in devices:  # hemaedge was installed on each device, from the wheel, by the role
            assert (d / "home" / "venv" / "bin" / "hemaedge").exists()
        before = {h: (s / "store.json").read_bytes() for h, s in stores.items()}
        # the second run from a regular (non-editable) install: the wheel's hemaedge on device 1,
        # which must find the playbook in its own site-packages
        installed = devices[0] / "home" / "venv" / "bin"
        env = dict(os.environ, PYTHONPATH=str(site), PATH=f"{installed}:{Path(sys.executable).parent}:{os.environ['PATH']}")
        where = subprocess.run([str(installed / "python"), "-c", "import hemaedge.fleet as f; print(f.ansible_dir())"],
                               capture_output=True, text=True, env=env)
        assert where.returncode == 0 and "site-packages" in where.stdout, where.stdout + where.stderr
        r = subprocess.run([str(installed / "hemaedge"), "deploy", "--inventory", str(inventory), "--bundle",
                            str(onnx_v2), "--forks", "3", "--report-dir", str(tmp_path / "report2")],
                           capture_output=True, text=True, env=env, timeout=900)
        _check_second_run(r, before, stores, "scope-3", hosts)


@needs_ansible
def test_playbook_and_sample_inventory_pass_ansible_syntax_check():
    from hemaedge.fleet import ansible_dir

    d = ansible_dir()
    r = subprocess.run([str(ANSIBLE), "--syntax-check", "-i", str(d / "inventory.sample.yml"), str(d / "fleet.yml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_missing_ansible_is_one_error_line_with_the_install_hint(tmp_path, monkeypatch):
    from hemaedge.deploy_cli import deploy

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no ansible-playbook next to it
    monkeypatch.setenv("PATH", str(tmp_path))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all: {}\n")
    r = CliRunner().invoke(deploy, ["--inventory", str(inventory), "--bundle", str(fh.DEFAULT_BUNDLE),
                                    "--report-dir", str(tmp_path / "rep")])
    assert r.exit_code == 2, r.output
    assert "Error: `hemaedge deploy --inventory` runs Ansible" in r.output and "pip install 'ansible-core==" in r.output


def test_inventory_option_mistakes_are_usage_errors(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all: {}\n")
    bad = make_bundle(tmp_path / "b", "bm")
    (bad / "model.onnx").write_bytes(b"damaged")
    cases = [
        (["--inventory", inventory, "--to", "pi@scope", fh.DEFAULT_BUNDLE], "not both"),
        (["--inventory", inventory, "--identity", inventory], "belong to the direct SSH path"),
        ([fh.DEFAULT_BUNDLE], "--to USER@HOST"),
        (["--to", "pi@scope"], "needs the BUNDLE"),
        (["--inventory", inventory, "--bundle", bad], "checksum mismatch"),  # refused before Ansible runs
        (["--inventory", inventory, "-e", "not a var"], "expected NAME=VALUE"),
    ]
    for args, message in cases:
        r = run_cli("deploy", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr


def test_playbook_command_carries_variables_in_a_file(tmp_path):
    from hemaedge.fleet import parse_extra_var, playbook_command

    if not ANSIBLE.exists() and shutil.which("ansible-playbook") is None:
        pytest.skip("needs ansible-core")
    vars_file = tmp_path / "vars.json"
    cmd = playbook_command(tmp_path / "inv.yml", bundle=fh.DEFAULT_BUNDLE, forks=3, report_dir=tmp_path / "r",
                           extra_vars=dict([parse_extra_var("hemaedge_require_signature=true"),
                                            parse_extra_var("hemaedge_extra=jetson")]),
                           limit="ward_7", vars_file=vars_file)
    assert cmd[cmd.index("--forks") + 1] == "3" and cmd[cmd.index("--limit") + 1] == "ward_7"
    assert f"@{vars_file}" in cmd and cmd[3].endswith("fleet.yml")
    variables = json.loads(vars_file.read_text())
    assert variables == {"hemaedge_require_signature": True, "hemaedge_extra": "jetson",
                         "hemaedge_bundle": str(fh.DEFAULT_BUNDLE.resolve()),
                         "hemaedge_report_dir": str((tmp_path / "r").resolve())}


@needs_ansible
def test_an_inventory_without_devices_is_a_usage_error(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {"wards": {"hosts": {"scope-x": {}}}}}}))
    r = run_cli("deploy", "--inventory", inventory, "--report-dir", tmp_path / "r")
    assert r.returncode == 2 and "has no device in the group" in r.stderr, r.stdout + r.stderr
