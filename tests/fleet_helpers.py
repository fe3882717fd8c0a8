"""Loopback "devices" for the Ansible fleet tests and the fleet benchmark.

A device is a folder (its hemaedge home and model store) behind its own sshd on 127.0.0.1.
hemaedge is installed on it by the role itself, from a wheel built once, with pip offline: the
packages the edge extra needs are already there (a folder of links to this test environment's
site-packages, minus hemaedge, pip and the training stack), on the device's PYTHONPATH.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "src" / "hemaedge" / "models" / "default"
# what a device does not get: the project itself (the role installs it), pip's own tooling
# (each venv has its own), and what the edge extra must never need
_NOT_ON_DEVICE = re.compile(r"^(hemaedge|__editable__|_?_?pip|setuptools|pkg_resources|_distutils_hack|wheel|"
                            r"distutils-precedence|ansible|tensorflow|tf_keras|keras|torch|sklearn|scikit_learn|"
                            r"efficientnet|tf2onnx|skl2onnx|jax|pytest|_pytest).*", re.IGNORECASE)
SOURCES = ("pyproject.toml", "README.md", "src", "edge", "train", "export", "benchmarks", "deploy")


def build_wheel(out: Path) -> Path:
    """A hemaedge wheel built from a copy of the source tree (the worktree stays clean)."""
    src = out / "src-copy"
    src.mkdir(parents=True)
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "results"))
        else:
            shutil.copy(p, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out / "dist"), str(src)], check=True, capture_output=True, text=True)
    shutil.rmtree(src)
    return next((out / "dist").glob("hemaedge-*.whl"))


def device_site_packages(out: Path) -> Path:
    """Links to the packages a device already has (numpy, OpenCV, LiteRT, ONNX Runtime, ...)."""
    site = Path(sysconfig.get_paths()["purelib"])
    out.mkdir(parents=True)
    for item in site.iterdir():
        if not _NOT_ON_DEVICE.match(item.name) and not item.name.endswith(".pth"):
            (out / item.name).symlink_to(item)
    return out


def onnx_bundle_like_default(where: Path, name: str = "tiny-onnx") -> Path:
    """A real (tiny) ONNX model with the default bundle's classes and input contract."""
    import numpy as np

    from edge_helpers import make_onnx
    from hemaedge.edge.bundle import load_bundle, write_bundle

    default = load_bundle(DEFAULT_BUNDLE)
    n = len(default.classes)
    rng = np.random.default_rng(0)
    weights = (rng.normal(0, 0.01, (3, n)).astype(np.float32), np.zeros(n, np.float32))
    where.mkdir(parents=True, exist_ok=True)
    model = make_onnx(where / f"{name}.onnx", size=default.contract.size, weights=weights)
    return write_bundle(where / name, {"model.onnx": model}, model_file="model.onnx", backend="onnx",
                        model_format="onnx", classes=list(default.classes), contract=default.contract,
                        output={"kind": "probabilities", "dtype": "float32"}, name=name)


def write_inventory(path: Path, servers: list[dict], devices: list[Path], *, wheel: Path, site: Path,
                    host_vars: dict | None = None) -> Path:
    """A YAML (JSON is YAML) inventory: group `microscopes`, one host per server/device folder."""
    keys = servers[0]["dir"]
    hosts = {}
    for i, (srv, dev) in enumerate(zip(servers, devices), start=1):
        host = {"ansible_host": "127.0.0.1", "ansible_port": srv["port"], "ansible_user": srv["user"],
                "hemaedge_home": str(dev / "home"), "hemaedge_store": str(dev / "store"),
                "hemaedge_environment": {"PYTHONPATH": str(site)}}
        host.update((host_vars or {}).get(f"scope-{i}", {}))
        hosts[f"scope-{i}"] = host
    inventory = {"all": {"children": {"microscopes": {"hosts": hosts, "vars": {
        "ansible_ssh_private_key_file": str(keys / "client_key"),
        "ansible_ssh_common_args": f"-F /dev/null -o UserKnownHostsFile={keys / 'known_hosts'} -o IdentitiesOnly=yes",
        "ansible_python_interpreter": sys.executable,
        "hemaedge_python": getattr(sys, "_base_executable", sys.executable),
        "hemaedge_wheel": str(wheel),
        "hemaedge_pip_extra_args": "--no-index",
    }}}}}
    path.write_text(json.dumps(inventory, indent=2))
    return path


_RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                    r"\s+failed=(?P<failed>\d+)")


def recap(output: str) -> dict:
    """ansible-playbook's PLAY RECAP as {host: {ok, changed, unreachable, failed}}."""
    rows = {}
    for line in output.splitlines():
        m = _RECAP.match(line.strip())
        if m:
            rows[m["host"]] = {k: int(v) for k, v in m.groupdict().items() if k != "host"}
    return rows
