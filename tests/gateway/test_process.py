"""The gateway as a real process: no listening port, the CLI, the local audit copy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.gateway.harness import GATEWAY_ID, lab
from tests.support import poll
from wire import Originator, encode_originator


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def tcp_sockets() -> list[tuple[str, str, str]]:
    """(local address, state, inode) of every TCP socket on the machine."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                rows.append((cols[1], cols[3], cols[9]))
    return rows


async def test_the_gateway_process_listens_on_no_tcp_port_and_obeys_its_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with lab(tmp_path) as L:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "--config",
            str(L.config_path),
            "run",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            conn = await L.listener.registry.wait_for(GATEWAY_ID, 15)
            mine = socket_inodes(proc.pid)
            tcp = [row for row in tcp_sockets() if row[2] in mine]
            assert tcp, "the gateway should hold its outbound tunnel socket"
            assert all(state != "0A" for _, state, _ in tcp), "a gateway socket is LISTENING"
            sock_path = L.config.control_socket
            assert stat.S_ISSOCK(sock_path.stat().st_mode)
            assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600

            r, w = await conn.open_connection(
                "cobas-c503-1",
                L.echo.port,
                orig_host=encode_originator(Originator("s-9", "suzuki")),
            )
            w.write(b"abc")
            assert await asyncio.wait_for(r.readexactly(3), 5) == b"abc"
            capsys.readouterr()
            args = ["--config", str(L.config_path)]
            assert await asyncio.to_thread(main, [*args, "status", "--json"]) == 0
            status = json.loads(capsys.readouterr().out)
            assert status["state"] == "connected"
            assert status["channels"][0]["engineer"] == "suzuki"

            assert await asyncio.to_thread(main, [*args, "pause", "--by", "it-desk"]) == 0
            assert await asyncio.wait_for(r.read(10), 1.0) == b""
            await L.listener.registry.wait_gone(GATEWAY_ID, 2)
            assert await asyncio.to_thread(main, [*args, "status"]) == 0
            out = capsys.readouterr().out
            assert "PAUSED" in out and "it-desk" in out

            assert await asyncio.to_thread(main, [*args, "resume"]) == 0
            await L.listener.registry.wait_for(GATEWAY_ID, 10)
            await poll(lambda: bool(L.emitter.of_type("gateway.resumed")), what="resumed")
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 10)
        assert rc == 0
        assert not L.config.control_socket.exists()

        log = L.config.audit_path
        capsys.readouterr()
        assert main(["--config", str(L.config_path), "verify-audit"]) == 0
        assert "OK" in capsys.readouterr().out
        lines = log.read_bytes().splitlines(keepends=True)
        assert len(lines) >= 4
        lines[1] = lines[1].replace(b'"it-desk"', b'"nobody!"').replace(b'"suzuki"', b'"nobody"')
        assert lines[1] != log.read_bytes().splitlines(keepends=True)[1]
        log.write_bytes(b"".join(lines))
        assert main(["--config", str(L.config_path), "verify-audit"]) == 1
        assert "TAMPERED at line 2" in capsys.readouterr().err
        # and a gateway never appends to a tampered copy: it refuses to start
        assert await asyncio.to_thread(main, ["--config", str(L.config_path), "run"]) == 1
        assert "fails verification" in capsys.readouterr().err
