"""RDP desktops in the console: the broker is the RDP client (aardwolf) of a real xrdp,
through the hospital gateway, and serves the browser RFB (raw WebSocket client here,
as noVNC would speak).

Proved here: an engineer with a grant for the RDP port gets the instrument's screen as
RFB (the RDP desktop's size in ServerInit, the xterm's green in the rectangles), the
keys typed reach the program on the instrument (the xterm's shell writes them to a
file), the stored password logs in without the engineer sending any, the TLS
certificate is pinned on first sight (``instrument.key_pinned``), the approver's
terminate ends the session, the recording holds no password and exports to an MP4 of
the recorded length (ffprobe).  A changed certificate is refused
(``session.refused`` ``certificate_changed``, ``instrument.key_changed``, nothing
open) until the hospital's approver accepts it, and then the session opens.  A
wrong stored password (xrdp then shows its own "Connection Log" window, and sends
no error) is refused with a message for the engineer (``wrong_credential``), no
password in the event, no recording, nothing open.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import subprocess
from pathlib import Path

import httpx

from broker.access.model import Instrument
from broker.desktop.recording import read_records
from broker.desktop.video import FPS
from tests.desktop.conftest import (
    INSTRUMENT,
    VNC_PASSWORD,
    Desk,
    Xrdp,
    _free_port,
    _listening,
    open_desk,
    pinned_desk,
    start_xrdp,
)
from tests.desktop.helpers import console_sign_in, probe_export, refused_open, ws_path
from tests.desktop.rfbscreen import Screen, is_green, screen_until
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import poll
from tests.support.served import served

SIZE = (800, 600)


async def _open(d: Desk, url: str, http: httpx.AsyncClient) -> tuple[WsClient, Screen]:
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    assert ws.status == 101
    init = await ws.rfb_handshake()
    w, h = struct.unpack(">HH", init[:4])
    assert (w, h) == SIZE
    assert init[4:8] == bytes((32, 24, 0, 1)), init[4:20]  # 32 bpp, depth 24, true colour
    await ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw
    await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
    return ws, Screen(w, h)


async def _type(ws: WsClient, text: str) -> None:
    for ch in text:
        sym = 0xFF0D if ch == "\n" else ord(ch)
        await ws.send(struct.pack(">BBxxI", 4, 1, sym))
        await ws.send(struct.pack(">BBxxI", 4, 0, sym))


async def test_rdp_desktop_shows_types_is_pinned_terminated_and_exported(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    async with pinned_desk(tmp_path, xrdp, rdp_size=SIZE) as d:
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws, screen = await _open(d, url, http)
            [live] = d.registry.list()
            assert (live.kind, live.port) == ("desktop", xrdp.port)
            # the xterm's green reaches the browser as RFB rectangles
            await screen_until(ws, screen, lambda: is_green(screen.rgb(20, 20)), 20)
            # keys typed in the browser reach the program on the instrument
            await _type(ws, "hoshu rdp 1\n")
            typed = xrdp.xvnc.typed
            await poll(
                lambda: typed.exists() and typed.read_text() == "hoshu rdp 1\n",
                10,
                "the typed line on the instrument",
            )
            # the certificate seen was pinned
            [pinned] = d.events.of_type("instrument.key_pinned")
            fp = pinned.details["fingerprint"]
            assert fp == _fingerprint(xrdp.cert)
            with d.s.ctx.uow() as tx:
                inst = tx.one(Instrument, name=INSTRUMENT)
                assert inst is not None and inst.host_key_fingerprint == fp
            # the approver ends it
            appr = httpx.AsyncClient(base_url=url, timeout=10)
            await console_sign_in(appr, d, "appr")
            page = await appr.get("/console/sessions")
            csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
            r = await appr.post(
                f"/console/sessions/{live.session_id}/terminate", data={"csrf": csrf}
            )
            assert r.status_code == 303
            code, reason, _ = await ws.until_close(timeout_s=3)
            assert code == 4000 and "approver" in reason
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 5, "session.ended")
            [ended] = d.events.of_type("session.ended")
            assert ended.get("EventResultDetails") == "approver"
            assert ended.get("NetworkApplicationProtocol") == "rdp"
            data = d.store.read(f"{live.session_id}.rfb")
            assert ended.get("RecordingSize") == len(data)
            assert ended.get("RecordingSHA256") == hashlib.sha256(data).hexdigest()
            assert VNC_PASSWORD.encode() not in data
            assert VNC_PASSWORD.encode("utf-16-le") not in data
            # the recording exports to a video of its length, the xterm's green in it
            r = await appr.get(f"/console/desktop-recordings/{live.session_id}/video", timeout=60)
            await appr.aclose()
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4", r.text[-500:]
        end_ms = max(ms for ms, _k, _d in read_records(data)[1])
        frames, duration, last = await asyncio.to_thread(probe_export, r.content, d)
        assert frames == max(1, math.ceil(end_ms / 1000 * FPS))
        assert abs(duration - frames / FPS) < 0.05
        assert is_green(last), last


async def test_a_changed_rdp_certificate_is_refused_until_the_approver_accepts_it(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    async with pinned_desk(tmp_path, xrdp, rdp_size=SIZE) as d:
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
            new = _fingerprint(xrdp.cert)
            assert changed.details["new_fingerprint"] == new
            assert changed.details["old_fingerprint"] == old
            assert not d.events.of_type("session.started")
            # the hospital's approver accepts the new certificate: the session opens
            d.s.estate.accept_host_key(d.actor("appr"), INSTRUMENT, new)
            ws2, screen = await _open(d, url, http)
            await screen_until(ws2, screen, lambda: is_green(screen.rgb(20, 20)), 20)
            ws2.close()
            await poll(lambda: not d.registry.list(), 10, "the session to end")


async def test_an_rdp_server_without_tls_is_refused_and_nothing_opens(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    port = _free_port()
    plain = start_xrdp(tmp_path, xrdp.xvnc, port, "rdp-b", security="rdp")
    try:
        await poll(lambda: _listening(port), 10, "the second xrdp to listen")
        async with open_desk(
            tmp_path,
            xrdp.xvnc,
            protocol="rdp",
            port=port,
            username="service",
            rdp_size=SIZE,
            pin_certificate=lambda _i, _fp: None,
        ) as d:
            d.grant()
            async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                code, reason, data = await refused_open(d, url, http)
            assert code == 4403 and "does not offer TLS" in reason, (code, reason)
            assert data == b"" and not d.registry.list()
            [refused] = d.events.of_type("session.refused")
            assert refused.get("EventResultDetails") == "tls_required"
            assert not d.events.of_type("session.started")
    finally:
        plain.terminate()
        plain.wait(5)


async def test_an_rdp_instrument_without_a_stored_user_is_refused_before_any_login(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    seen: list[str] = []
    async with open_desk(
        tmp_path,
        xrdp.xvnc,
        protocol="rdp",
        port=xrdp.port,
        rdp_size=SIZE,
        pin_certificate=lambda _i, fp: seen.append(fp),
    ) as d:  # a password stored, no user name
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            code, reason, data = await refused_open(d, url, http)
        assert code == 4403 and "no stored RDP user and password" in reason, (code, reason)
        assert data == b"" and not d.registry.list()
        [refused] = d.events.of_type("session.refused")
        assert refused.get("EventResultDetails") == "no_credential"
        assert seen == []  # not even TLS was opened


async def test_a_wrong_stored_rdp_password_is_refused_not_shown_as_xrdps_login_screen(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    wrong = "not-the-rdp-one"
    async with open_desk(
        tmp_path,
        xrdp.xvnc,
        protocol="rdp",
        port=xrdp.port,
        username="service",
        password=wrong,
        rdp_size=SIZE,
        rdp_logon_timeout_s=4,
        pin_certificate=lambda _i, _fp: None,
    ) as d:
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            code, reason, data = await refused_open(d, url, http)
        assert code == 4403, (code, reason)
        assert reason == "the instrument refused the stored login — ask the hospital to update it"
        assert data == b"" and not d.registry.list()  # not one pixel of xrdp's screen
        [refused] = d.events.of_type("session.refused")
        assert refused.get("EventResultDetails") == "wrong_credential"
        assert refused.get("NetworkApplicationProtocol") == "rdp"
        assert wrong not in refused.to_json()
        assert not d.events.of_type("session.started")
        assert not list(d.store.list())  # no recording of a login screen
    # it was xrdp's session that refused the password (its own log says so)
    assert "VNC password failed" in (tmp_path / f"xrdp-{xrdp.port}.log").read_text()


def _fingerprint(cert: Path) -> str:
    der = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    return "SHA256:" + hashlib.sha256(der).hexdigest()
