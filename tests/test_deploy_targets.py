"""`hemaedge deploy` building blocks that need no server: targets, ssh options, what travels."""
from __future__ import annotations

import tarfile

import pytest

from hemaedge.deploy import (DeployOptions, Target, install_command, pack_bundle, parse_ssh_option,
                             parse_target, remote_words, ssh_command)
from hemaedge.edge.cli_support import UserError
from store_helpers import make_bundle


@pytest.mark.parametrize("spec, expected", [
    ("pi@scope-pi.local", Target("scope-pi.local", "pi", None)),
    ("nvidia@10.0.0.7:2222", Target("10.0.0.7", "nvidia", 2222)),
    ("jetson-lab", Target("jetson-lab", None, None)),
    ("root@[::1]:22", Target("::1", "root", 22)),
])
def test_parse_target(spec, expected):
    assert parse_target(spec) == expected
    assert str(parse_target(spec)) == spec


@pytest.mark.parametrize("spec", ["-oProxyCommand=x", "pi@host:99999", "pi@ho st", "", "pi@host;rm -rf ~", "@host"])
def test_parse_target_rejects(spec):
    with pytest.raises(UserError):
        parse_target(spec)


def test_ssh_command_never_prompts_and_user_options_win():
    opts = DeployOptions(identity="/k", ssh_options=(parse_ssh_option("ConnectTimeout=3"),))
    cmd = ssh_command(Target("h", "u", 2222), opts, "echo hi")
    assert cmd[:3] == ["ssh", "-o", "BatchMode=yes"]
    # ssh keeps the first value given: the user's ConnectTimeout comes before our default
    assert cmd.index("ConnectTimeout=3") < cmd.index("ConnectTimeout=10")
    assert cmd[-3:] == ["--", "u@h", "echo hi"] and ["-p", "2222"] == cmd[cmd.index("-p"):cmd.index("-p") + 2]
    with pytest.raises(UserError, match="BatchMode"):
        parse_ssh_option("batchmode=no")
    with pytest.raises(UserError, match="Key=Value"):
        parse_ssh_option("StrictHostKeyChecking")


def test_remote_command_quoting():
    assert remote_words("~/venv/bin/hemaedge") == '"$HOME"/venv/bin/hemaedge'
    assert remote_words("python3 -m hemaedge.cli") == "python3 -m hemaedge.cli"
    # shell metacharacters stay literal: ';' is part of an argument, never a command separator
    assert remote_words("'/opt/my dir/hemaedge;' x") == "'/opt/my dir/hemaedge;' x"
    cmd = install_command(DeployOptions(remote_store="/data/models x", accept_change=True, keep=5), "/tmp/d")
    assert "--store '/data/models x'" in cmd and "--accept-change" in cmd and "--keep 5" in cmd


def test_only_listed_files_travel(tmp_path):
    b = make_bundle(tmp_path, "bm")
    (b / "notes.txt").write_text("not in the manifest")
    pack_bundle(b, tmp_path / "b.tar")
    with tarfile.open(tmp_path / "b.tar") as tar:
        names = sorted(tar.getnames())
    assert names == ["bundle/extra/labels.txt", "bundle/manifest.json", "bundle/model.onnx"]


def test_damaged_local_bundle_goes_nowhere(tmp_path):
    from store_helpers import run_cli

    b = make_bundle(tmp_path, "bm")
    (b / "model.onnx").write_bytes(b"damaged")
    # the host does not exist: a damaged bundle must be refused before any connection is tried
    r = run_cli("deploy", b, "--to", "pi@no-such-host.invalid")
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and "no-such-host" not in r.stdout


def test_store_and_deploy_import_no_training_stack():
    import subprocess
    import sys

    code = ("import sys, hemaedge.edge.store, hemaedge.edge.store_cli, hemaedge.edge.engine_build, "
            "hemaedge.deploy, hemaedge.deploy_cli; "
            "bad = [m for m in ('tensorflow', 'keras', 'sklearn', 'hemaedge.train', 'hemaedge.export') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
