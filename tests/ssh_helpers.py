"""Real OpenSSH servers on 127.0.0.1 for the deploy tests (and the fleet benchmark).

Debian's openssh-server (/usr/sbin/sshd) runs as the current user on an unprivileged port with
a temporary host key and a temporary authorized key; the "device" is this machine.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")  # Ansible copies files over sftp, as to a real device


def why_no_sshd() -> str | None:
    """None when real sshd instances can be started here, else the reason to skip."""
    if not SSHD.exists():
        return "needs Debian's openssh-server (/usr/sbin/sshd): apt-get install openssh-server"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "needs the OpenSSH client (ssh, ssh-keygen)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_keys(d: Path) -> None:
    """host_key, client_key (authorized) and stranger_key (not authorized) in folder `d`."""
    for key in ("host_key", "client_key", "stranger_key"):
        if not (d / key).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")


class SshdUnavailable(RuntimeError):
    pass


@contextmanager
def sshd_server(d: Path, keys: Path | None = None):
    """Start one sshd with its config/pid/log in `d` (keys from `keys`, default `d`); yields
    {"dir": keys folder, "port", "user", "known_hosts"}; stops it on exit."""
    d.mkdir(parents=True, exist_ok=True)
    keys = keys or d
    if not (keys / "authorized_keys").exists():
        make_keys(keys)
    port = free_port()
    user = getpass.getuser()
    (d / "sshd_config").write_text(f"""
Port {port}
ListenAddress 127.0.0.1
HostKey {keys / 'host_key'}
AuthorizedKeysFile {keys / 'authorized_keys'}
PidFile {d / 'sshd.pid'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowUsers {user}
LogLevel ERROR
MaxStartups 30:30:60
""" + (f"Subsystem sftp {SFTP_SERVER}\n" if SFTP_SERVER.exists() else ""))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation directory
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SshdUnavailable(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SshdUnavailable("sshd did not open its port within 20 s")
        host_pub = (keys / "host_key.pub").read_text().split()
        with open(keys / "known_hosts", "a") as fh:
            fh.write(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        yield {"dir": keys, "port": port, "user": user, "known_hosts": keys / "known_hosts"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
