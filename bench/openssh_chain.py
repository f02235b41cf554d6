"""The do-it-yourself OpenSSH chain hoshu is compared with, and direct OpenSSH.

What hospitals run today, rebuilt on loopback with real OpenSSH::

    engineer ssh ──ProxyJump──▶ bastion sshd ──127.0.0.1:RPORT──┐  (GatewayPorts no)
                                  ▲                              │
    hospital  ssh -N -R RPORT:instrument:22 (always-on, outbound)┘
                                  └──────────────▶ instrument sshd

The engineer authenticates with a key to the bastion and again to the
instrument (no MFA, no recording, no grant: that is the comparison).
"Direct" is the engineer's ``ssh`` straight to the instrument ``sshd``.
The same ``ssh -F`` config pins host keys and the cipher for every hop.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.sshd import BenchError, Sshd, client_config, free_port, keygen, start_sshd, wait_port


@dataclass
class OpenSSHLab:
    """The running chain: an instrument, a bastion, the reverse tunnel, a byte source."""

    workdir: Path
    payload: Path
    instrument: Sshd
    bastion: Sshd
    reverse_port: int
    source_port: int
    engineer_config: Path
    credential: Path  # a key the instrument accepts: the credential hoshu injects
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def direct(self, *args: str, tty: bool = False) -> list[str]:
        return [
            "ssh",
            "-F",
            str(self.engineer_config),
            *(["-tt"] if tty else []),
            "-p",
            str(self.instrument.port),
            "root@127.0.0.1",
            *args,
        ]

    def chain(self, *args: str, tty: bool = False) -> list[str]:
        return [
            "ssh",
            "-F",
            str(self.engineer_config),
            *(["-tt"] if tty else []),
            "-J",
            f"root@127.0.0.1:{self.bastion.port}",
            "-p",
            str(self.reverse_port),
            "root@127.0.0.1",
            *args,
        ]

    @contextlib.contextmanager
    def forward(self, via_chain: bool) -> Iterator[int]:
        """A running ``ssh -N -L`` to the byte source; yields the local port."""
        port = free_port()
        spec = [
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{port}:127.0.0.1:{self.source_port}",
        ]
        argv = self.chain(*spec) if via_chain else self.direct(*spec)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(port, proc=proc)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def start_source(payload: Path, procs: list[subprocess.Popen[bytes]]) -> int:
    """Start :mod:`bench.tcpsource` serving ``payload``; returns its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.tcpsource", str(payload)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        raise BenchError("the byte source did not start")
    port = int(line)
    wait_port(port, proc=proc)
    return port


@contextlib.contextmanager
def openssh_lab(workdir: Path, payload: Path) -> Iterator[OpenSSHLab]:
    """Start the instrument, bastion, byte source and hospital reverse tunnel."""
    workdir.mkdir(parents=True, exist_ok=True)
    engineer = keygen(workdir / "engineer_ed25519", "engineer")
    hospital = keygen(workdir / "hospital_ed25519", "hospital")
    credential = keygen(workdir / "credential_ed25519", "injected-credential")
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[Sshd] = []
    try:
        instrument = start_sshd(
            workdir, "instrument", [engineer.public_line, credential.public_line], forwarding=True
        )
        servers.append(instrument)
        bastion = start_sshd(
            workdir, "bastion", [engineer.public_line, hospital.public_line], forwarding=True
        )
        servers.append(bastion)
        source_port = start_source(payload, procs)
        reverse_port = free_port()
        known = [
            instrument.known_hosts_line(),
            instrument.known_hosts_line(reverse_port),
            bastion.known_hosts_line(),
        ]
        hdir = workdir / "hospital"
        hdir.mkdir(exist_ok=True)
        hcfg = client_config(hdir, hospital.private, known)
        tunnel = subprocess.Popen(
            [
                "ssh",
                "-F",
                str(hcfg),
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                f"127.0.0.1:{reverse_port}:127.0.0.1:{instrument.port}",
                "-p",
                str(bastion.port),
                "root@127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(hdir / "tunnel.log").open("ab"),
        )
        procs.append(tunnel)
        wait_port(reverse_port, proc=tunnel)
        edir = workdir / "engineer"
        edir.mkdir(exist_ok=True)
        ecfg = client_config(edir, engineer.private, known)
        yield OpenSSHLab(
            workdir,
            payload,
            instrument,
            bastion,
            reverse_port,
            source_port,
            ecfg,
            credential.private,
            procs,
        )
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        for s in reversed(servers):
            s.stop()
