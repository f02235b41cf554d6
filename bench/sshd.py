"""Real OpenSSH pieces for the benchmarks: keys, ``sshd`` servers, client argv.

Every ``sshd`` here is ``/usr/sbin/sshd`` with its own config file, its own
host key and its own ``authorized_keys``, listening on a loopback port.  The
cipher is fixed to one AEAD cipher on both ends so every path is compared
with the same cryptography.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from labsim.net import free_port as free_port

CIPHER = "aes128-gcm@openssh.com"
# Classical key exchange everywhere: asyncssh has no post-quantum hybrid without
# liboqs, and OpenSSH's default sntrup761 would add ~50 ms to OpenSSH only.
KEX = "curve25519-sha256,curve25519-sha256@libssh.org"
SSHD = "/usr/sbin/sshd"


class BenchError(RuntimeError):
    """A benchmark could not be set up or did not complete."""


def wait_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until something accepts on 127.0.0.1:port (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process {proc.args!r} exited with {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public_line: str


def keygen(path: Path, comment: str = "bench") -> KeyPair:
    """An ed25519 key pair made by ``ssh-keygen`` (no passphrase)."""
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            timeout=30,
        )
    return KeyPair(path, path.with_name(path.name + ".pub").read_text().strip())


@dataclass
class Sshd:
    """One running ``sshd`` on 127.0.0.1:port."""

    name: str
    port: int
    host_key: KeyPair
    proc: subprocess.Popen[bytes]
    log: Path

    def known_hosts_line(self, port: int | None = None) -> str:
        algo, blob = self.host_key.public_line.split()[:2]
        return f"[127.0.0.1]:{port or self.port} {algo} {blob}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_sshd(
    workdir: Path, name: str, authorized: Sequence[str], *, forwarding: bool = False
) -> Sshd:
    """Start ``sshd -D`` with key-only auth for root on a free loopback port."""
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    host_key = keygen(d / "host_ed25519", f"{name}-host")
    auth = d / "authorized_keys"
    auth.write_text("".join(line + "\n" for line in authorized))
    auth.chmod(0o600)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress 127.0.0.1:{port}",
                f"HostKey {host_key.private}",
                f"AuthorizedKeysFile {auth}",
                "PidFile none",
                "UsePAM no",
                "UseDNS no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                f"Ciphers {CIPHER}",
                f"KexAlgorithms {KEX}",
                "Compression no",
                f"AllowTcpForwarding {'yes' if forwarding else 'no'}",
                "GatewayPorts no",
                "X11Forwarding no",
                "PermitTTY yes",
                "PrintMotd no",
                "PrintLastLog no",
                "MaxStartups 200:30:400",
                "MaxSessions 50",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    log = d / "sshd.log"
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log.open("ab")
    )
    wait_port(port, proc=proc)
    return Sshd(name, port, host_key, proc, log)


def client_config(workdir: Path, identity: Path, known_hosts: Sequence[str]) -> Path:
    """An ``ssh -F`` config pinning the host keys and the cipher for every hop."""
    kh = workdir / "known_hosts"
    kh.write_text("".join(line + "\n" for line in known_hosts))
    cfg = workdir / "ssh_config"
    cfg.write_text(
        "\n".join(
            [
                "Host *",
                "  User root",
                f"  IdentityFile {identity}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {kh}",
                "  GlobalKnownHostsFile /dev/null",
                "  StrictHostKeyChecking yes",
                "  CheckHostIP no",
                "  UpdateHostKeys no",
                f"  Ciphers {CIPHER}",
                f"  KexAlgorithms {KEX}",
                "  Compression no",
                "  BatchMode yes",
                "  ControlMaster no",
                "  ControlPath none",
                "  EscapeChar none",
                "  LogLevel ERROR",
                "  ConnectTimeout 15",
                "  ServerAliveInterval 15",
                "",
            ]
        )
    )
    return cfg


@contextlib.contextmanager
def running(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Terminate every process in ``procs`` (appended to while inside) on exit."""
    try:
        yield
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def have_openssh() -> str | None:
    """None when ``sshd`` and ``ssh`` are usable here, else the reason they are not."""
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (Debian package openssh-server)"
    if shutil.which("ssh") is None:
        return "ssh is not installed (Debian package openssh-client)"
    if os.geteuid() != 0:
        return "the OpenSSH bastion and instrument sshd need root (sshd privilege separation)"
    return None
