"""hoshu's data path: ``ssh`` -> front door (key + TOTP) -> tunnel -> gateway -> instrument.

Measured against the same instrument ``sshd`` and byte source as the OpenSSH
chain, with the same ``ssh`` client, cipher and probes.  The broker
(:mod:`bench.hoshu_broker`) and the gateway (:mod:`bench.hoshu_gateway`) run
as separate processes, as they do in production.  Each login is a different
engineer (a TOTP code is accepted once); the harness computes the code and
hands it to ``ssh`` through ``SSH_ASKPASS`` (keyboard-interactive).

Modes: ``tunnel`` (the product: front door + tunnel + gateway, the required
figures) when the tunnel endpoint and the gateway agent are in the build;
otherwise ``direct`` (front door straight to the instrument), whose figures go
to ``*_frontdoor_only`` keys while the required ones stay null with a note.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

from bench.openssh_chain import OpenSSHLab
from bench.report import Results
from bench.sizes import Sizes
from bench.sshd import BenchError, client_config, free_port, wait_port

KEYS = [
    "throughput_forward_MBps",
    "throughput_recorded_MBps",
    "session_open_s",
    "session_open_p95_s",
    "echo_p50_ms",
    "echo_p99_ms",
]
TUNNEL_PARTS = ("broker.tunnel.endpoint", "gateway.agent")
INSTRUMENT = "bench-analyzer"
ROOT = Path(__file__).resolve().parent.parent
ASKPASS = "#!/bin/sh\nprintf '%s\\n' \"$HOSHU_BENCH_CODE\"\n"


def missing_parts(names: tuple[str, ...] = TUNNEL_PARTS) -> list[str]:
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            out.append(name)
    return out


@dataclass
class Engineer:
    username: str
    key: Path
    secret: str


def _write_key(path: Path) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    path.chmod(0o600)
    return str(key.export_public_key().decode().strip())


class HoshuLab:
    """A running broker (and gateway) in front of the OpenSSH lab's instrument."""

    def __init__(self, lab: OpenSSHLab, work: Path, engineers: int, mode: str) -> None:
        self.lab, self.work, self.mode = lab, work, mode
        work.mkdir(parents=True, exist_ok=True)
        from broker.access import totp

        self.engineers: list[Engineer] = []
        rows = []
        for i in range(engineers):
            e = Engineer(f"eng{i:03d}", work / f"eng{i:03d}_ed25519", totp.new_secret())
            rows.append(
                {"username": e.username, "public_line": _write_key(e.key), "secret": e.secret}
            )
            self.engineers.append(e)
        self._next = 0
        gw_key = work / "gateway_key"
        tunnel_key = work / "tunnel_host_key"
        fd_key = work / "frontdoor_host_key"
        self.gateway_public = _write_key(gw_key)
        self.tunnel_public = _write_key(tunnel_key)
        _write_key(fd_key)
        host_fp = asyncssh.import_public_key(lab.instrument.host_key.public_line).get_fingerprint(
            "sha256"
        )
        self.cfg: dict[str, Any] = {
            "workdir": str(work / "broker"),
            "mode": mode,
            "frontdoor_host_key": str(fd_key),
            "tunnel_host_key": str(tunnel_key),
            "engineers": rows,
            "gateway": {
                "gateway_id": "gw-bench",
                "hospital_id": "h-bench",
                "name": "bench-hospital-gw",
                "public_line": self.gateway_public,
                "key": str(gw_key),
                "tunnel_public_line": self.tunnel_public,
                "workdir": str(work / "gateway"),
            },
            "instrument": {
                "name": INSTRUMENT,
                "host": "127.0.0.1",
                "ssh_port": lab.instrument.port,
                "ports": [lab.instrument.port, lab.source_port],
                "username": "root",
                "credential": lab.credential.read_text(),
                "host_key_fingerprint": host_fp,
            },
        }
        (work / "bench.json").write_text(json.dumps(self.cfg))
        (work / "bench.json").chmod(0o600)
        self.askpass = work / "askpass"
        self.askpass.write_text(ASKPASS)
        self.askpass.chmod(0o700)
        self.procs: list[subprocess.Popen[str]] = []
        self.port = 0
        self.config = work / "ssh_config"

    def _spawn(self, module: str, *extra: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-m", module, str(self.work / "bench.json"), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(self.work / f"{module}.log").open("a"),
            text=True,
            cwd=str(ROOT),
            bufsize=1,
        )
        self.procs.append(p)
        return p

    @staticmethod
    def _answer(p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        assert p.stdout is not None
        import select

        ready, _, _ = select.select([p.stdout], [], [], timeout)
        line = p.stdout.readline() if ready else ""
        if not line:
            raise BenchError(f"a benchmark process gave no answer (exit {p.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def start(self, profile: Path | None = None) -> None:
        broker = self._spawn(
            "bench.hoshu_broker", *(["--profile", str(profile)] if profile else [])
        )
        info = self._answer(broker, 60)
        self.port = int(info["frontdoor_port"])
        algo, blob = info["host_key_line"].split()[:2]
        client_config(self.work, self.engineers[0].key, [f"[127.0.0.1]:{self.port} {algo} {blob}"])
        text = self.config.read_text().replace("  BatchMode yes\n", "  BatchMode no\n")
        self.config.write_text(
            text + "  NumberOfPasswordPrompts 1\n"
            "  PreferredAuthentications publickey,keyboard-interactive\n"
        )
        if self.mode == "tunnel":
            self.cfg["gateway"]["tunnel_port"] = info["tunnel_port"]
            (self.work / "bench.json").write_text(json.dumps(self.cfg))
            self._spawn("bench.hoshu_gateway")
            assert broker.stdin is not None
            broker.stdin.write("gateway\n")
            broker.stdin.flush()
            if self._answer(broker, 70).get("gateway") is not True:
                raise BenchError("the gateway did not connect its tunnel within 60 s")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    assert p.stdin is not None
                    p.stdin.write("quit\n")
                    p.stdin.flush()
                except OSError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait(timeout=10)

    def engineer(self) -> Engineer:
        if self._next >= len(self.engineers):
            raise BenchError("the benchmark ran out of engineers (one login each)")
        e = self.engineers[self._next]
        self._next += 1
        return e

    def login(self, *args: str, tty: bool = False) -> tuple[list[str], dict[str, str]]:
        """argv and environment for one engineer's login (fresh TOTP code)."""
        from broker.access import totp

        e = self.engineer()
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env.update(
            SSH_ASKPASS=str(self.askpass),
            SSH_ASKPASS_REQUIRE="force",
            DISPLAY=":0",
            HOSHU_BENCH_CODE=totp.code_at(e.secret, datetime.now(UTC)),
        )
        argv = [
            "ssh",
            "-F",
            str(self.config),
            "-i",
            str(e.key),
            *(["-tt"] if tty else []),
            "-p",
            str(self.port),
            f"{e.username}+{INSTRUMENT}@127.0.0.1",
            *args,
        ]
        return argv, env

    @contextlib.contextmanager
    def forward(self) -> Iterator[int]:
        port = free_port()
        argv, env = self.login(
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            f"127.0.0.1:{port}:localhost:{self.lab.source_port}",
        )
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
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


def engineers_needed(sizes: Sizes) -> int:
    return sizes.session_opens + 2 * sizes.throughput_runs + 6


def suffix_for(mode: str) -> str:
    """Keys of the front-door-only mode carry a suffix; the product's figures none."""
    return "_frontdoor_only" if mode == "direct" or missing_parts() else ""


def start(
    res: Results,
    sizes: Sizes,
    lab: OpenSSHLab,
    work: Path,
    *,
    mode: str = "auto",
    profile: Path | None = None,
) -> HoshuLab:
    """Start hoshu in front of ``lab``'s instrument (tunnel mode when it is built)."""
    if missing_parts(("broker.frontdoor.door",)):
        raise BenchError("hoshu's SSH front door is not in this build yet")
    absent = missing_parts() if mode != "direct" else ["(direct mode chosen)"]
    mode = "direct" if absent else "tunnel"
    res.info.setdefault("hoshu", {})["mode"] = mode
    if mode == "direct":
        res.missing(
            KEYS,
            f"the tunnel and gateway are not used ({', '.join(absent)}); the "
            "front door alone was measured (the *_frontdoor_only keys)",
        )
    hl = HoshuLab(lab, work / mode, engineers_needed(sizes), mode)
    try:
        hl.start(profile)
    except BaseException:
        hl.stop()
        raise
    return hl


def check_recordings(res: Results, hl: HoshuLab, sizes: Sizes, suffix: str) -> None:
    """Every byte of the recorded sessions must be in their recordings."""
    n = sizes.throughput_bytes
    recordings = sorted((hl.work / "broker" / "recordings").rglob("*"))
    sizes_ = [p.stat().st_size for p in recordings if p.is_file()]
    res.info.setdefault("hoshu", {})[f"recordings{suffix or '_tunnel'}"] = {
        "files": len(sizes_),
        "largest_bytes": max(sizes_, default=0),
    }
    if max(sizes_, default=0) < n:
        res.notes.append(
            f"hoshu{suffix}: the largest recording holds {max(sizes_, default=0)}"
            f" bytes, less than the {n} bytes sent: check the recorder"
        )
