"""`hemaedge deploy --inventory`: run the packaged Ansible playbook on a fleet of devices.

A thin layer: Ansible (ansible-core) does the inventory, parallelism (--forks), retries and
idempotence; the playbook and role live in deploy/ansible/ of the repository, installed as the
package data `hemaedge.ansible`. This module finds them, builds the ansible-playbook command,
runs it and reads the fleet report the playbook writes (report.json + report.md).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from hemaedge.edge.bundle import load_bundle
from hemaedge.edge.errors import UsageError

PLAYBOOK = "fleet.yml"
INSTALL_HINT = ("pip install 'ansible-core==2.18.19' (or pip install 'hemaedge[dev]'); "
                "for one or two devices, `hemaedge deploy BUNDLE --to user@host` needs no Ansible")


def ansible_dir() -> Path:
    """The folder holding fleet.yml and roles/: the installed package data, else the source tree."""
    try:
        import hemaedge.ansible as pkg

        where = Path(pkg.__file__).parent
    except ImportError:  # an editable install made before the package existed
        import hemaedge

        where = Path(hemaedge.__file__).resolve().parents[2] / "deploy" / "ansible"
    if not (where / PLAYBOOK).is_file():
        raise UsageError(f"the Ansible playbook is missing from this hemaedge install ({where / PLAYBOOK}); "
                         "reinstall hemaedge")
    return where


def ansible_playbook() -> str:
    """The ansible-playbook command: next to this Python first (same venv), else on PATH."""
    here = Path(sys.executable).with_name("ansible-playbook")
    found = str(here) if here.is_file() else shutil.which("ansible-playbook")
    if not found:
        raise UsageError(f"`hemaedge deploy --inventory` runs Ansible, and ansible-playbook is not installed: "
                         f"{INSTALL_HINT}")
    return found


def parse_extra_var(spec: str) -> tuple[str, object]:
    """'key=value' (value parsed as JSON when it is JSON: true, 3, [..]) for -e."""
    key, sep, value = spec.partition("=")
    if not sep or not key.strip().isidentifier():
        raise UsageError(f"-e {spec!r}: expected NAME=VALUE, e.g. -e hemaedge_require_signature=true")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def default_report_dir() -> Path:
    return Path("runs") / f"fleet-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


def playbook_command(inventory, *, bundle=None, forks: int = 5, report_dir: Path, extra_vars: dict | None = None,
                     limit: str | None = None, vars_file: Path) -> list[str]:
    """The ansible-playbook command line; variables travel in a JSON file (no shell quoting)."""
    variables = dict(extra_vars or {})
    if bundle:
        variables["hemaedge_bundle"] = str(Path(bundle).resolve())
    variables["hemaedge_report_dir"] = str(Path(report_dir).resolve())
    vars_file.write_text(json.dumps(variables))
    cmd = [ansible_playbook(), "-i", str(Path(inventory).resolve()), str(ansible_dir() / PLAYBOOK),
           "--forks", str(int(forks)), "-e", f"@{vars_file}"]
    if limit:
        cmd += ["--limit", limit]
    return cmd


def run_fleet(inventory, *, bundle=None, forks: int = 5, report_dir=None, extra_vars: dict | None = None,
              limit: str | None = None) -> tuple[int, Path]:
    """Run the playbook (its output goes to the terminal); returns (ansible's exit code, report folder)."""
    inventory = Path(inventory)
    if not inventory.exists():
        raise UsageError(f"--inventory {inventory}: no such file")
    if bundle:
        load_bundle(bundle)  # a damaged bundle goes nowhere: checked here before any device is touched
    report_dir = Path(report_dir) if report_dir else default_report_dir()
    if (report_dir / "report.json").exists():
        raise UsageError(f"{report_dir} already holds a fleet report; choose another --report-dir")
    env = dict(os.environ, ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_NOCOLOR="1")
    # one ssh round trip per task instead of three (the role needs no sudo, so no requiretty issue)
    env.setdefault("ANSIBLE_PIPELINING", "true")
    with tempfile.TemporaryDirectory(prefix="hemaedge-fleet-") as tmp:
        cmd = playbook_command(inventory, bundle=bundle, forks=forks, report_dir=report_dir, extra_vars=extra_vars,
                               limit=limit, vars_file=Path(tmp) / "vars.json")
        proc = subprocess.run(cmd, env=env)
    return proc.returncode, report_dir


def read_report(report_dir) -> dict | None:
    path = Path(report_dir) / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None
