"""RDP desktops with Network Level Authentication: the instrument is FreeRDP's shadow
server (``freerdp-shadow-cli /sec:nla``, Debian's freerdp2-shadow-x11) sharing an Xvnc
display, with the hospital's stored user and password in its NTLM SAM file (made by
``winpr-hash``); it takes no login but NLA (CredSSP), as a Windows analyzer PC that
requires NLA does.  The broker is its RDP client, through the hospital gateway, and
serves the browser RFB (raw WebSocket client here, as noVNC would speak).

Proved here: the stored password passes NLA and the engineer gets the instrument's
screen (the xterm's green) and types into it, without ever sending a password; the
server's certificate is pinned on first sight.  A wrong stored password is refused by
the server's NLA (its log says so) and the engineer is told the stored login was
refused (``session.refused`` ``wrong_credential``), no session, no recording.  A
server whose certificate is not the pinned one is refused before the CredSSP exchange
starts: the server never sees an NTLM message.  The password is in no audit event, no
recording and no line of the broker's log (DEBUG included), nor are the NTLM keys
that seal it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from broker.desktop.pins import CertificatePins
from broker.desktop.rdpclient import LOGIN_REFUSED
from tests.desktop.conftest import Desk, Xvnc, open_desk
from tests.desktop.helpers import console_sign_in, refused_open, ws_path
from tests.desktop.rfbscreen import Screen, is_green, screen_until
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import free_port, listening, poll, poll_sync
from tests.support.served import served

USER = "service"
PASSWORD = "nla-s3cret-0ne"
SIZE = (800, 600)  # the Xvnc's: a shadow server shares its display as it is


@dataclass
class Shadow:
    port: int
    cert: Path
    log: Path


@pytest.fixture
def shadow(tmp_path: Path, xvnc: Xvnc) -> Iterator[Shadow]:
    """FreeRDP's shadow server on a loopback port, NLA only, sharing the Xvnc; the
    hospital's user and password in its SAM file."""
    for program, package in (
        ("freerdp-shadow-cli", "freerdp2-shadow-x11"),
        ("winpr-hash", "winpr-utils"),
    ):
        assert shutil.which(program), f"install {package} (./run does)"
    sam = tmp_path / "nla.sam"
    sam.write_bytes(
        subprocess.run(
            ["winpr-hash", "-u", USER, "-p", PASSWORD, "-f", "sam"],
            capture_output=True,
            check=True,
        ).stdout
    )
    sam.chmod(0o600)
    port = free_port()
    config = tmp_path / "freerdp-config"  # its own certificate and key, made at start
    log = tmp_path / "shadow.log"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(config),
        "DISPLAY": xvnc.display,
    }
    with open(log, "wb") as err:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [
                "freerdp-shadow-cli",
                f"/port:{port}",
                "/bind-address:127.0.0.1",
                "/sec:nla",
                f"/sam-file:{sam}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        poll_sync(lambda: listening(port) or proc.poll() is not None, 15, "the shadow server")
        assert proc.poll() is None, log.read_text()
        cert = config / "freerdp" / "shadow" / "shadow.crt"
        assert cert.exists(), sorted(str(p) for p in config.rglob("*"))
        yield Shadow(port, cert, log)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()


@contextlib.asynccontextmanager
async def nla_desk(
    tmp_path: Path, xvnc: Xvnc, shadow: Shadow, *, password: str = PASSWORD
) -> AsyncIterator[Desk]:
    """The desk with the shadow server as the instrument, RDP as the stored user, the
    certificate checked by the store's own pins, as the broker checks it."""
    pins: list[CertificatePins] = []
    async with open_desk(
        tmp_path,
        xvnc,
        protocol="rdp",
        port=shadow.port,
        username=USER,
        password=password,
        rdp_size=SIZE,
        rdp_logon_timeout_s=4,
        pin_certificate=lambda i, fp: pins[0](i, fp),
    ) as d:
        pins.append(CertificatePins(d.s))
        yield d


async def _open(d: Desk, url: str, http: httpx.AsyncClient) -> tuple[WsClient, Screen]:
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    assert ws.status == 101
    init = await ws.rfb_handshake()
    w, h = struct.unpack(">HH", init[:4])
    assert (w, h) == SIZE
    await ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw
    await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
    return ws, Screen(w, h)


def _secret_forms() -> tuple[bytes, ...]:
    return (PASSWORD.encode(), PASSWORD.encode("utf-16-le"), PASSWORD.encode().hex().encode())


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


@pytest.fixture
def auth_log() -> Iterator[_Kept]:
    """What asyauth (CredSSP, NTLM) logs, with its log set to DEBUG as an operator
    chasing a fault might (it logs to its own handler, not through the root)."""
    kept = _Kept()
    loggers = [logging.getLogger(n) for n in ("asyauth", "asyauth.ntlm", "asyauth.credssp")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.addHandler(kept)
    try:
        yield kept
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(kept)
            lg.setLevel(level)


def _assert_no_password(d: Desk, caplog: pytest.LogCaptureFixture, auth: _Kept) -> None:
    for event in d.events.events:
        assert PASSWORD not in event.to_json(), event.type
    text = caplog.text + "\n".join(auth.lines)
    assert PASSWORD not in text
    assert PASSWORD.encode().hex() not in text
    # nor the NTLM keys that would open the CredSSP message holding it
    assert not [line for line in auth.lines if line.startswith("DEBUG")], auth.lines[:3]
    assert "sealkey" not in text and "SessionKey" not in text
    for rec in d.store.list():
        data = d.store.read(rec.name)
        assert not any(form in data for form in _secret_forms()), rec.name


async def test_the_stored_password_passes_nla_and_the_engineer_gets_the_screen(
    tmp_path: Path,
    xvnc: Xvnc,
    shadow: Shadow,
    caplog: pytest.LogCaptureFixture,
    auth_log: _Kept,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with nla_desk(tmp_path, xvnc, shadow) as d:
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws, screen = await _open(d, url, http)
            [live] = d.registry.list()
            assert (live.kind, live.port) == ("desktop", shadow.port)
            # the xterm's green reaches the browser as RFB rectangles
            await screen_until(ws, screen, lambda: is_green(screen.rgb(20, 20)), 20)
            # keys typed in the browser reach the program on the instrument
            for ch in "nla 1\n":
                sym = 0xFF0D if ch == "\n" else ord(ch)
                await ws.send(struct.pack(">BBxxI", 4, 1, sym))
                await ws.send(struct.pack(">BBxxI", 4, 0, sym))
            await poll(
                lambda: xvnc.typed.exists() and xvnc.typed.read_text() == "nla 1\n",
                10,
                "the typed line on the instrument",
            )
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
        [started] = d.events.of_type("session.started")
        assert started.get("NetworkApplicationProtocol") == "rdp"
        # the certificate seen (before any password went out) was pinned
        [pinned] = d.events.of_type("instrument.key_pinned")
        assert pinned.details["fingerprint"] == _fingerprint(shadow.cert)
        assert not d.events.of_type("session.refused")
        assert list(d.store.list())  # the session was recorded
        _assert_no_password(d, caplog, auth_log)
    # the server authenticated the user by NLA: no failure in its log
    text = shadow.log.read_text()
    assert "SEC_E_LOGON_DENIED" not in text and "client authentication failure" not in text


async def test_a_wrong_stored_password_is_refused_by_nla_and_nothing_opens(
    tmp_path: Path,
    xvnc: Xvnc,
    shadow: Shadow,
    caplog: pytest.LogCaptureFixture,
    auth_log: _Kept,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-nla-one"
    async with nla_desk(tmp_path, xvnc, shadow, password=wrong) as d:
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            code, reason, data = await refused_open(d, url, http)
        assert code == 4403, (code, reason)
        assert reason == LOGIN_REFUSED
        assert data == b"" and not d.registry.list()  # not one pixel of the screen
        [refused] = d.events.of_type("session.refused")
        assert refused.get("EventResultDetails") == "wrong_credential"
        assert refused.get("NetworkApplicationProtocol") == "rdp"
        assert wrong not in refused.to_json()
        assert not d.events.of_type("session.started")
        assert not list(d.store.list())
        assert wrong not in caplog.text and wrong not in "\n".join(auth_log.lines)
    # it was the server's NLA that turned the password down
    assert "SEC_E_LOGON_DENIED" in shadow.log.read_text()


async def test_a_server_that_is_not_the_pinned_one_sees_no_ntlm_message(
    tmp_path: Path,
    xvnc: Xvnc,
    shadow: Shadow,
    caplog: pytest.LogCaptureFixture,
    auth_log: _Kept,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with nla_desk(tmp_path, xvnc, shadow) as d:
        old = "SHA256:" + "00" * 32  # the certificate pinned before the server's changed
        d.pin(old)
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            code, reason, data = await refused_open(d, url, http)
        assert code == 4403 and "certificate changed" in reason, (code, reason)
        assert data == b"" and not d.registry.list()
        [refused] = d.events.of_type("session.refused")
        assert refused.get("EventResultDetails") == "certificate_changed"
        [changed] = d.events.of_type("instrument.key_changed")
        assert changed.details["new_fingerprint"] == _fingerprint(shadow.cert)
        assert not d.events.of_type("session.started")
        _assert_no_password(d, caplog, auth_log)
    # the connection ended after TLS, while the server waited for CredSSP's first
    # message: its NTLM never got one (it logs every AcceptSecurityContext)
    text = shadow.log.read_text()
    assert "[nla_recv] error" in text and "AcceptSecurityContext" not in text, text


def _fingerprint(cert: Path) -> str:
    der = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    return "SHA256:" + hashlib.sha256(der).hexdigest()
