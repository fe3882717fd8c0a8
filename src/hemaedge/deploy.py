"""Push a bundle to devices over the system's OpenSSH and install it there.

For each host: stream the bundle (manifest + listed files only) as a tar archive into a fresh
remote temporary folder (`ssh ... tar -x`), run `hemaedge edge install` there (which verifies
it and switches atomically), delete the temporary folder, then read the installed files back
with `sha256sum` and compare them with the local checksums. Optionally build a TensorRT
engine on a Jetson (`hemaedge edge install --build-engine`).

ssh always runs with BatchMode=yes: keys, agents and ~/.ssh/config work as the user already
has them, and nothing here ever asks for, stores or passes a password. Hosts run in parallel;
one failing host never stops the others.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hemaedge.edge.bundle import MANIFEST_NAME, _safe_relpath, load_bundle, sha256_file
from hemaedge.edge.cli_support import UserError

_TARGET = re.compile(r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                     r"(?:\[(?P<host6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.][A-Za-z0-9_.-]*))"
                     r"(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True)
class Target:
    host: str
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")


def parse_target(spec: str) -> Target:
    """'host', 'user@host', 'user@host:port' or 'user@[::1]:port' (a Host alias from ~/.ssh/config works too)."""
    m = _TARGET.match(spec.strip())
    if not m:
        raise UserError(f"--to {spec!r}: expected user@host[:port] (letters, digits, '.', '-', '_'; "
                        "IPv6 in brackets)")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--to {spec!r}: port {port} is out of range 1..65535")
    return Target(host=m["host6"] or m["host"], user=m["user"], port=port)


def parse_ssh_option(opt: str) -> str:
    """'Key=Value' for ssh -o; BatchMode cannot be turned off (hemaedge never prompts)."""
    key, sep, value = opt.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()) or not value.strip():
        raise UserError(f"--ssh-option {opt!r}: expected Key=Value, e.g. StrictHostKeyChecking=accept-new")
    if key.strip().lower() == "batchmode":
        raise UserError("--ssh-option BatchMode cannot be changed: hemaedge never asks for passwords")
    return f"{key.strip()}={value.strip()}"


def remote_path(path: str) -> str:
    """One path for the remote shell, quoted, keeping a leading '~/' expandable."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (shlex.quote(path[1:]) if len(path) > 1 else "")
    return shlex.quote(path)


def remote_words(command: str) -> str:
    """A command line (e.g. 'python3 -m hemaedge.cli') for the remote shell, each word quoted."""
    return " ".join(remote_path(word) for word in shlex.split(command))


@dataclass
class DeployOptions:
    remote_hemaedge: str = "hemaedge"
    remote_store: str | None = None
    identity: str | None = None
    ssh_options: tuple = ()
    ssh_config: str | None = None
    connect_timeout: int = 10
    step_timeout: float = 900.0
    keep: int = 3
    accept_change: bool = False
    build_engine: bool = False
    engine_precision: str = "fp16"


@dataclass
class HostResult:
    target: str
    ok: bool = False
    version: str | None = None
    previous: str | None = None
    seconds: float = 0.0
    step: str = ""  # where it failed: connect+upload, install, checksum, ...
    message: str = ""
    checksum_ok: bool | None = None
    changes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class HostFailure(Exception):
    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


def ssh_command(target: Target, opts: DeployOptions, remote: str) -> list[str]:
    # ssh keeps the FIRST value it sees for an option: BatchMode first (never prompt), then the
    # user's -o options, then our defaults, so a user's ConnectTimeout wins over ours.
    cmd = ["ssh", "-o", "BatchMode=yes"]
    if opts.ssh_config:
        cmd += ["-F", opts.ssh_config]
    if opts.identity:
        cmd += ["-i", opts.identity, "-o", "IdentitiesOnly=yes"]
    for opt in opts.ssh_options:
        cmd += ["-o", opt]
    cmd += ["-o", f"ConnectTimeout={opts.connect_timeout}"]
    if target.port:
        cmd += ["-p", str(target.port)]
    return cmd + ["--", target.destination, remote]


def bundle_digests(bundle_dir) -> dict:
    """name -> sha256 for manifest.json and every file it lists (what the device must end up with)."""
    bundle = load_bundle(bundle_dir)
    digests = {name: info["sha256"] for name, info in bundle.manifest["files"].items()}
    digests[MANIFEST_NAME] = sha256_file(Path(bundle_dir) / MANIFEST_NAME)
    return digests


def pack_bundle(bundle_dir, out_file) -> None:
    """A tar of manifest.json + the listed files only, under 'bundle/' (nothing else travels)."""
    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)
    with tarfile.open(out_file, "w") as tar:
        tar.add(bundle_dir / MANIFEST_NAME, arcname=f"bundle/{MANIFEST_NAME}", recursive=False)
        for name in bundle.manifest["files"]:
            tar.add(bundle_dir / _safe_relpath(name), arcname=f"bundle/{name}", recursive=False)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _run(target, opts, remote, step, stdin=None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(ssh_command(target, opts, remote), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=opts.step_timeout)
    except subprocess.TimeoutExpired:
        raise HostFailure(step, f"no answer within {opts.step_timeout:.0f} s") from None
    except FileNotFoundError:
        raise HostFailure(step, "the `ssh` command is not installed on this machine (install OpenSSH client)") from None
    if proc.returncode == 255:  # ssh's own failure: unreachable, refused, key not accepted
        msg = _last_line(proc.stderr) or "connection failed (exit 255)"
        raise HostFailure(step, msg if msg.startswith("ssh:") else "ssh: " + msg)
    return proc


def install_command(opts: DeployOptions, remote_dir: str) -> str:
    args = [remote_words(opts.remote_hemaedge), "edge", "install", f'"{remote_dir}"/bundle', "--json",
            "--keep", str(int(opts.keep))]
    if opts.remote_store:
        args += ["--store", remote_path(opts.remote_store)]
    if opts.accept_change:
        args.append("--accept-change")
    if opts.build_engine:
        args += ["--build-engine", "--engine-precision", shlex.quote(opts.engine_precision)]
    return " ".join(args)


def deploy_host(target: Target, tar_path: Path, digests: dict, opts: DeployOptions) -> HostResult:
    """Upload, install and check one host; never raises (the failure is in the result)."""
    result = HostResult(str(target))
    start = time.monotonic()
    try:
        _deploy_steps(target, tar_path, digests, opts, result)
        result.ok = True
    except HostFailure as exc:
        result.step, result.message = exc.step, str(exc)
    result.seconds = round(time.monotonic() - start, 2)
    return result


def _deploy_steps(target, tar_path, digests, opts, result) -> None:
    # 1. a private temporary folder on the device, filled from the tar stream
    upload = ('set -e; d=$(mktemp -d "${TMPDIR:-/tmp}/hemaedge-deploy.XXXXXX"); '
              'if ! tar -xf - -C "$d"; then rm -rf "$d"; exit 3; fi; echo "$d"')
    with open(tar_path, "rb") as fh:
        proc = _run(target, opts, upload, "connect+upload", stdin=fh)
    remote_dir = _last_line(proc.stdout)
    if proc.returncode != 0 or not remote_dir.startswith("/"):
        raise HostFailure("connect+upload", f"could not unpack the bundle on the device: "
                                            f"{_last_line(proc.stderr) or 'exit ' + str(proc.returncode)}")
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", remote_dir):
        raise HostFailure("connect+upload", f"unexpected remote temporary folder {remote_dir!r}")

    # 2. install (verify + copy + atomic switch); the temporary folder goes either way
    remote = f'{install_command(opts, remote_dir)}; rc=$?; rm -rf "{remote_dir}"; exit $rc'
    proc = _run(target, opts, remote, "install")
    payload = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                payload = json.loads(line)
            except json.JSONDecodeError:
                pass
            break
    if proc.returncode != 0 or not payload or not payload.get("ok"):
        if proc.returncode == 127:
            raise HostFailure("install", f"`{opts.remote_hemaedge}` not found on the device: install "
                                         "hemaedge[edge] there or pass --remote-hemaedge /path/to/hemaedge")
        if payload and payload.get("error") == "contract-change":
            result.changes = list(payload.get("changes", []))
            raise HostFailure("install", "refused: class list/input contract differ from the active model ("
                              + "; ".join(result.changes) + "); nothing changed. Use --accept-change if intended")
        err = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
        raise HostFailure("install", (err[-1] if err else _last_line(proc.stderr)) or f"exit {proc.returncode}")
    result.version, result.previous = payload.get("version"), payload.get("previous")
    result.changes = list(payload.get("changes", []))
    installed_path = payload.get("path", "")
    if not re.fullmatch(r"/[A-Za-z0-9_./+-]+", installed_path or ""):
        raise HostFailure("checksum", f"unexpected installed path {installed_path!r}")

    # 3. read the installed files back with an independent tool and compare
    if opts.build_engine and payload.get("onnx_version"):
        # the engine was built on the device; what we sent is the ONNX version next to it
        installed_path = str(Path(installed_path).with_name(payload["onnx_version"]))
    expected = digests
    names = " ".join(shlex.quote(n) for n in expected)
    proc = _run(target, opts, f"cd {shlex.quote(installed_path)} && sha256sum -- {names}", "checksum")
    if proc.returncode != 0:
        raise HostFailure("checksum", f"could not read back the installed files: {_last_line(proc.stderr)}")
    remote = {}
    for line in proc.stdout.splitlines():
        digest, _, name = line.partition("  ")
        remote[name.lstrip("*")] = digest
    bad = [n for n, d in expected.items() if remote.get(n) != d]
    result.checksum_ok = not bad
    if bad:
        raise HostFailure("checksum", f"installed files differ from the local bundle: {', '.join(bad)}; "
                                      f"run `hemaedge edge rollback` on {target}")


def deploy(bundle_dir, targets: list[Target], opts: DeployOptions, jobs: int = 4,
           progress=None) -> list[HostResult]:
    """Deploy to every target (in parallel, `jobs` at a time); results in the order given."""
    digests = bundle_digests(bundle_dir)  # verifies the local bundle first: a bad one goes nowhere
    results: dict[int, HostResult] = {}
    with tempfile.TemporaryDirectory(prefix="hemaedge-deploy-") as tmp:
        tar_path = Path(tmp) / "bundle.tar"
        pack_bundle(bundle_dir, tar_path)
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(targets)))) as pool:
            futures = {pool.submit(deploy_host, t, tar_path, digests, opts): i for i, t in enumerate(targets)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                if progress:
                    progress(results[futures[fut]])
    return [results[i] for i in range(len(targets))]
