"""The asyncssh LAS controller: logins, console commands, echo, resize and input limits."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from labsim import AnalyzerServer, AnalyzerSettings, BackgroundLoop

TIMEOUT_S = 10.0


def _client(server: AnalyzerServer, **auth: Any) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.get_host_keys().add(
        f"[127.0.0.1]:{server.port}",
        "ssh-ed25519",
        paramiko.Ed25519Key(data=_key_blob(server.host_key.public_line)),
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1",
        server.port,
        username=auth.pop("username", server.settings.username),
        look_for_keys=False,
        allow_agent=False,
        timeout=TIMEOUT_S,
        auth_timeout=TIMEOUT_S,
        **auth,
    )
    return client


def _key_blob(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def _read_until(chan: paramiko.Channel, marker: bytes, limit: int = 1 << 20) -> bytes:
    """Read from `chan` until `marker` appears (deadline TIMEOUT_S)."""
    end = time.monotonic() + TIMEOUT_S
    buf = b""
    chan.settimeout(0.2)
    while marker not in buf:
        if time.monotonic() > end or len(buf) > limit:
            raise AssertionError(f"{marker!r} not seen; got {buf[-300:]!r}")
        try:
            data = chan.recv(65536)
        except TimeoutError:
            continue
        if not data:
            raise AssertionError(f"channel closed before {marker!r}; got {buf[-300:]!r}")
        buf += data
    return buf


@pytest.fixture
def client(analyzer_instrument: AnalyzerServer) -> Iterator[paramiko.SSHClient]:
    c = _client(analyzer_instrument, password=analyzer_instrument.password)
    yield c
    c.close()


def test_password_login_runs_show_qc(client: paramiko.SSHClient) -> None:
    """paramiko logs in with the instrument password and `show qc` prints the QC table."""
    _, out, _ = client.exec_command("show qc", timeout=TIMEOUT_S)
    text = out.read().decode()
    assert out.channel.recv_exit_status() == 0
    assert text.splitlines()[0] == "date,assay,level,lot,value,unit,target,sd,z,westgard"
    assert ",HbA1c,2," in text


def test_key_login_with_the_injected_key(analyzer_instrument: AnalyzerServer) -> None:
    """The instrument's client key logs in as the service user without a password."""
    c = _client(analyzer_instrument, key_filename=str(analyzer_instrument.client_key.private_path))
    try:
        _, out, _ = c.exec_command("status", timeout=TIMEOUT_S)
        assert "state      : READY" in out.read().decode()
    finally:
        c.close()


@pytest.mark.parametrize(
    "auth",
    [{"password": "wrong-password"}, {"username": "root", "password": "<instrument>"}],
    ids=["wrong-password", "wrong-user"],
)
def test_wrong_credentials_are_refused(
    analyzer_instrument: AnalyzerServer, auth: dict[str, str]
) -> None:
    """A wrong password, or the right password for another user, does not log in."""
    if auth["password"] == "<instrument>":
        auth = {**auth, "password": analyzer_instrument.password}
    with pytest.raises(paramiko.AuthenticationException):
        _client(analyzer_instrument, **auth)


def test_unknown_command_fails_with_status_127(client: paramiko.SSHClient) -> None:
    _, out, _ = client.exec_command("format c:", timeout=TIMEOUT_S)
    assert "unknown command: format" in out.read().decode()
    assert out.channel.recv_exit_status() == 127


def test_calibration_is_written_to_the_analyzer_log(client: paramiko.SSHClient) -> None:
    """`calibrate GLU` reports success and `show log 1` then shows the calibration entry."""
    _, out, _ = client.exec_command("calibrate glu", timeout=TIMEOUT_S)
    assert "calibrating GLU ... done" in out.read().decode()
    _, out, _ = client.exec_command("show log 1", timeout=TIMEOUT_S)
    assert "[CALIB] GLU calibration accepted" in out.read().decode()


def test_interactive_console_echoes_keys_and_tracks_resize(client: paramiko.SSHClient) -> None:
    """With a pty each typed key is echoed; after a resize `status` shows the new size."""
    chan = client.invoke_shell(width=80, height=24)
    _read_until(chan, b"las-line-a> ")
    chan.send(b"s")
    assert _read_until(chan, b"s").endswith(b"s")
    chan.resize_pty(width=132, height=43)
    chan.send(b"tatus\r")
    out = _read_until(chan, b"\r\nlas-line-a> ")
    assert b"terminal   : 132x43" in out
    chan.send(b"exit\r")
    _read_until(chan, b"bye")
    assert chan.recv_exit_status() == 0


def test_overlong_input_line_closes_the_session(
    tmp_path: Path, labsim_loop: BackgroundLoop
) -> None:
    """Input beyond max_line without a newline ends the session (no unbounded buffering)."""
    server = AnalyzerServer(tmp_path, AnalyzerSettings(max_line=64))
    labsim_loop.run(server.start())
    try:
        c = _client(server, password=server.password)
        transport = c.get_transport()
        assert transport is not None
        chan = transport.open_session()
        chan.invoke_shell()  # no pty: raw input, no line editor
        _read_until(chan, b"las-line-a> ")
        chan.sendall(b"x" * 500)
        assert b"exceeds 64 characters" in _read_until(chan, b"characters")
        assert chan.recv_exit_status() == 0
        c.close()
    finally:
        labsim_loop.run(server.close())


def test_idle_session_is_closed(tmp_path: Path, labsim_loop: BackgroundLoop) -> None:
    """A console left idle past idle_timeout_s is closed by the instrument."""
    server = AnalyzerServer(tmp_path, AnalyzerSettings(idle_timeout_s=0.5))
    labsim_loop.run(server.start())
    try:
        c = _client(server, password=server.password)
        chan = c.invoke_shell()
        assert b"idle timeout" in _read_until(chan, b"session closed")
        assert chan.recv_exit_status() == 0
        c.close()
    finally:
        labsim_loop.run(server.close())


async def test_interrupt_drops_the_partly_typed_line(analyzer_instrument: AnalyzerServer) -> None:
    """An interrupt (^C as an SSH signal) discards the half-typed command, like a shell."""
    server = analyzer_instrument
    async with asyncssh.connect(
        "127.0.0.1",
        server.port,
        username="service",
        password=server.password,
        known_hosts=None,
        connect_timeout=TIMEOUT_S,
    ) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        await asyncio.wait_for(proc.stdout.readuntil("las-line-a> "), TIMEOUT_S)
        proc.stdin.write("calibrate GL")
        await asyncio.wait_for(proc.stdout.readuntil("calibrate GL"), TIMEOUT_S)
        proc.send_signal("INT")
        await asyncio.wait_for(proc.stdout.readuntil("^C\r\nlas-line-a> "), TIMEOUT_S)
        proc.stdin.write("show log 1\r")
        out = await asyncio.wait_for(proc.stdout.readuntil("\r\nlas-line-a> "), TIMEOUT_S)
        lines = out.split("\r\n")
        assert lines[0].endswith("show log 1")  # the echo shows only the new command
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", lines[1])  # one log line
