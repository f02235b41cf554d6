"""Desktop sessions over the console's WebSocket, through the hospital gateway, to a real
Xvnc: who may open one, and how each one ends (raw WebSocket client, no browser).

Proved here: an engineer with a grant for the VNC port gets the instrument's screen
(ServerInit from Xvnc, the password injected by the broker, the browser offered no
authentication); an approver's terminate and a revoked grant end the session within
about a second, ``session.ended`` holding the SHA-256 and size of the stored recording;
and the forgotten paths are refused with ``session.refused`` and nothing opened: no
grant, a grant for another port, an approver's own attempt, a foreign ``Origin``, a
missing CSRF token, and a second try after the revocation.  A wrong stored password is
refused with a message saying so; the clipboard is dropped (``file.refused`` with size
and SHA-256) and key events are recorded when the hospital's policy records input.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct

import httpx

from broker.console.web import csrf_for
from broker.desktop.recording import read_records
from broker.desktop.video import FPS
from tests.desktop.conftest import GREEN, INSTRUMENT, Desk
from tests.desktop.helpers import console_sign_in, probe_export, ws_path
from tests.desktop.wsclient import ws_open
from tests.support import poll
from tests.support.served import served


async def test_engineer_gets_the_screen_and_an_approver_ends_it_recorded(desk: Desk) -> None:
    d = desk
    d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await console_sign_in(http, d, "alice")
        ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
        assert ws.status == 101
        init = await ws.rfb_handshake()
        w, h = struct.unpack(">HH", init[:4])
        assert (w, h) == (800, 600)
        [live] = d.registry.list()
        assert (live.kind, live.username, live.instrument) == ("desktop", "alice", INSTRUMENT)
        # the browser asks for the screen: Xvnc answers with rectangles (recorded)
        await ws.send(struct.pack(">BxH2i", 2, 2, 0, 1))  # SetEncodings: Raw, CopyRect
        await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        op, first = await ws.frame()
        assert op == 0x2 and first[0] == 0  # a FramebufferUpdate
        started = d.events.of_type("session.started")[0]
        assert started.details == {"kind": "desktop", "recording": f"{live.session_id}.rfb"}
        # the approver ends it
        appr = httpx.AsyncClient(base_url=url, timeout=10)
        await console_sign_in(appr, d, "appr")
        page = await appr.get("/console/sessions")
        # listed as a desktop, its watch link opening the live desktop
        assert "Desktop (VNC or RDP)" in page.text or "デスクトップ（VNC・RDP）" in page.text
        assert f'href="/console/desktop-live/{live.session_id}"' in page.text
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        r = await appr.post(f"/console/sessions/{live.session_id}/terminate", data={"csrf": csrf})
        assert r.status_code == 303
        code, reason, _ = await ws.until_close(timeout_s=1.5)
        assert code == 4000 and "approver" in reason
        await appr.aclose()
        await poll(lambda: bool(d.events.of_type("session.ended")), 5, "session.ended")
        [ended] = d.events.of_type("session.ended")
        data = d.store.read(f"{live.session_id}.rfb")
        assert ended.get("RecordingSize") == len(data) > 1000
        assert ended.get("RecordingSHA256") == hashlib.sha256(data).hexdigest()
        assert ended.get("EventResultDetails") == "approver"
        assert d.events.of_type("session.terminated")[0].details["by"] == "appr"
        # the password never reached the browser, nor the recording
        assert b"vnc-s3cret" not in data
        ws.close()
        # the approver exports it as a video of the recorded length
        appr = httpx.AsyncClient(base_url=url, timeout=60)
        await console_sign_in(appr, d, "appr")
        r = await appr.get(f"/console/desktop-recordings/{live.session_id}/video")
        await appr.aclose()
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4", r.text[-900:]
    end_ms = max(ms for ms, _k, _d in read_records(data)[1])
    frames, duration, last = await asyncio.to_thread(probe_export, r.content, d)
    assert frames == max(1, math.ceil(end_ms / 1000 * FPS))
    assert abs(duration - frames / FPS) < 0.05
    assert all(abs(a - b) < 24 for a, b in zip(last, GREEN, strict=True)), last
    assert [e.get("Operation") for e in d.events.of_type("recording.viewed")] == ["export"]


async def test_revocation_ends_a_desktop_within_a_second_and_it_does_not_reopen(
    desk: Desk,
) -> None:
    d = desk
    grant = d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await console_sign_in(http, d, "alice")
        cookie = f"hoshu_session={token}"
        ws = await ws_open(url, ws_path(d.port, token), cookie=cookie, origin=url)
        await ws.rfb_handshake()
        d.policy.revoke(grant)
        code, reason, _ = await ws.until_close(timeout_s=1.5)
        assert code == 4000 and "revoked" in reason
        ws.close()
        again = await ws_open(url, ws_path(d.port, token), cookie=cookie, origin=url)
        code, reason, _ = await again.until_close()
        assert code == 4403 and "no active grant" in reason
        again.close()
        refused = d.events.of_type("session.refused")
        assert [e.get("EventResultDetails") for e in refused] == ["no_grant"]
        assert not d.registry.list()


async def test_forgotten_paths_are_refused_and_nothing_opens(desk: Desk) -> None:
    d = desk
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await console_sign_in(http, d, "alice")
        cookie = f"hoshu_session={token}"
        # no grant at all
        ws = await ws_open(url, ws_path(d.port, token), cookie=cookie, origin=url)
        assert (await ws.until_close())[0] == 4403
        ws.close()
        # a grant for the instrument's other port only
        d.grant(d.other_port)
        ws = await ws_open(url, ws_path(d.port, token), cookie=cookie, origin=url)
        assert (await ws.until_close())[0] == 4403
        ws.close()
        d.grant()
        # a foreign Origin, no Origin, no or a wrong CSRF token: the handshake is refused
        for path, origin in (
            (ws_path(d.port, token), "http://evil.example"),
            (ws_path(d.port, token), None),
            (ws_path(d.port, None), url),
            (ws_path(d.port, "another-session"), url),
        ):
            ws = await ws_open(url, path, cookie=cookie, origin=origin)
            assert ws.status == 403, (path, origin)
            ws.close()
        # no cookie
        ws = await ws_open(url, ws_path(d.port, token), origin=url)
        assert ws.status == 403
        ws.close()
        # an approver of the instrument's hospital may watch, not open a desktop
        appr = httpx.AsyncClient(base_url=url, timeout=10)
        atoken = await console_sign_in(appr, d, "appr")
        ws = await ws_open(
            url, ws_path(d.port, atoken), cookie=f"hoshu_session={atoken}", origin=url
        )
        assert ws.status == 403
        ws.close()
        await appr.aclose()
    reasons = [
        (e.get("ActorUsername"), e.get("EventResultDetails"))
        for e in d.events.of_type("session.refused")
    ]
    assert reasons == [
        ("alice", "no_grant"),
        ("alice", "no_grant"),
        ("alice", "csrf_failed"),
        ("alice", "csrf_failed"),
        ("alice", "csrf_failed"),
        ("alice", "csrf_failed"),
        (None, "signed_out"),
        ("appr", "forbidden"),
    ], reasons
    assert not d.registry.list() and not list(d.store.list())
    assert d.events.of_type("session.started") == []


async def test_a_wrong_stored_password_is_refused_with_a_clear_message(desk: Desk) -> None:
    d = desk
    d.grant()
    d.s.estate.set_credential(d.actor("hadmin"), INSTRUMENT, "password", "not-the-one")
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await console_sign_in(http, d, "alice")
        ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
        code, reason, data = await ws.until_close()
        ws.close()
    assert code == 4403 and "stored VNC password" in reason and data == b""
    [refused] = d.events.of_type("session.refused")
    assert refused.get("EventResultDetails") == "wrong_credential"
    assert "not-the-one" not in refused.to_json()
    assert not list(d.store.list()) and not d.registry.list()


async def test_clipboard_is_dropped_and_logged_and_input_recorded_by_policy(desk: Desk) -> None:
    d = desk
    d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"record_input": True})
    d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await console_sign_in(http, d, "alice")
        ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
        await ws.rfb_handshake()
        [live] = d.registry.list()
        await ws.send(struct.pack(">BxxxI", 6, 9) + b"secret-42")  # ClientCutText
        await ws.send(struct.pack(">BBxxI", 4, 1, 0x61))  # key 'a' down
        await ws.send(struct.pack(">BBxxI", 4, 0, 0x61))
        await poll(lambda: bool(d.events.of_type("file.refused")), 5, "the clipboard refusal")
        ws.close()
        await poll(lambda: bool(d.events.of_type("session.ended")), 5, "session.ended")
    [cut] = d.events.of_type("file.refused")
    assert cut.get("EventResultDetails") == "clipboard_off"
    assert cut.get("TargetFileSize") == 9
    assert cut.get("TargetFileSHA256") == hashlib.sha256(b"secret-42").hexdigest()
    header, records = read_records(d.store.read(f"{live.session_id}.rfb"))
    kinds = [(kind, data[:1]) for _ms, kind, data in records]
    assert header["input"] is True
    assert kinds.count((b"C", b"\x04")) == 2  # both key events, recorded
    assert all(
        b"secret-42" not in data
        for _ms, _k, data in read_records(d.store.read(f"{live.session_id}.rfb"))[1]
    )


async def test_only_the_sessions_hospital_follows_a_desktop(desk: Desk) -> None:
    d = desk
    d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await console_sign_in(http, d, "alice")
        ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
        await ws.rfb_handshake()
        [live] = d.registry.list()
        follow = f"/console/desktop-live/{live.session_id}/ws"
        d.events.clear()
        for name in ("tsuki-appr", "alice"):  # another hospital's approver; the engineer
            other = httpx.AsyncClient(base_url=url, timeout=10)
            t = await console_sign_in(other, d, name)
            w = await ws_open(
                url, f"{follow}?csrf={csrf_for(t)}", cookie=f"hoshu_session={t}", origin=url
            )
            assert w.status == 403, name
            w.close()
            await other.aclose()
        # the hospital's approver, but from another site
        appr = httpx.AsyncClient(base_url=url, timeout=10)
        t = await console_sign_in(appr, d, "appr")
        w = await ws_open(
            url,
            f"{follow}?csrf={csrf_for(t)}",
            cookie=f"hoshu_session={t}",
            origin="http://evil.example",
        )
        assert w.status == 403
        w.close()
        # and as it should be: the screen as the engineer has it
        w = await ws_open(
            url, f"{follow}?csrf={csrf_for(t)}", cookie=f"hoshu_session={t}", origin=url
        )
        assert w.status == 101
        assert struct.unpack(">HH", (await w.rfb_handshake())[:4]) == (800, 600)
        w.close()
        await appr.aclose()
        ws.close()
    refused = [
        (e.get("ActorUsername"), e.get("EventResultDetails"))
        for e in d.events.of_type("recording.refused")
    ]
    assert refused == [("tsuki-appr", "forbidden"), ("alice", "forbidden"), ("appr", "csrf_failed")]
    assert [e.get("ActorUsername") for e in d.events.of_type("recording.viewed")] == ["appr"]


async def test_a_browser_that_stops_reading_ends_the_session(desk: Desk) -> None:
    d = desk
    d.gate.send_timeout_s = 1.0
    d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await console_sign_in(http, d, "alice")
        ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
        init = await ws.rfb_handshake()
        w, h = struct.unpack(">HH", init[:4])
        await ws.send(struct.pack(">BxHi", 2, 1, 0))  # Raw only: 1.9 MB a full screen
        for _ in range(60):  # asks for far more than the socket buffers hold, reads none
            await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        await poll(lambda: bool(d.events.of_type("session.ended")), 20, "session.ended")
        ws.close()
    [ended] = d.events.of_type("session.ended")
    assert ended.get("EventResultDetails") == "browser_stalled"
    assert not d.registry.list()


async def test_the_grant_end_is_announced_then_ends_the_desktop(desk: Desk) -> None:
    d = desk
    d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await console_sign_in(http, d, "alice")
        ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
        await ws.rfb_handshake()
        d.clock.advance(3600 - 30 - 240)  # four minutes left
        op, text = await asyncio.wait_for(ws.frame(), 5)
        assert op == 0x1 and b"ends in 4 minutes" in text  # a notice the page shows
        d.clock.advance(240)
        code, reason, _ = await ws.until_close(timeout_s=1.5)
        ws.close()
    assert code == 4000 and "grant expired" in reason
    [ended] = d.events.of_type("session.ended")
    assert ended.get("EventResultDetails") == "grant_expired"
    assert len(d.events.of_type("session.warning")) == 1


async def test_an_approver_following_a_desktop_cannot_type_or_click_on_it(desk: Desk) -> None:
    """The follow socket is read-only on the broker, not only in the page: keys and
    pointer clicks an approver sends on it reach neither the instrument nor the
    recording, while the engineer's keys do."""
    d = desk
    d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"record_input": True})
    d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await console_sign_in(http, d, "alice")
        ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
        await ws.rfb_handshake()
        [live] = d.registry.list()
        appr = httpx.AsyncClient(base_url=url, timeout=10)
        t = await console_sign_in(appr, d, "appr")
        follow = f"/console/desktop-live/{live.session_id}/ws?csrf={csrf_for(t)}"
        w = await ws_open(url, follow, cookie=f"hoshu_session={t}", origin=url)
        assert w.status == 101
        await w.rfb_handshake()
        for sym in b"rm -rf /\r":  # the approver's keys, then a click
            await w.send(struct.pack(">BBxxI", 4, 1, sym if sym != 13 else 0xFF0D))
            await w.send(struct.pack(">BBxxI", 4, 0, sym if sym != 13 else 0xFF0D))
        await w.send(struct.pack(">BBHH", 5, 1, 30, 30) + struct.pack(">BBHH", 5, 0, 30, 30))
        for sym in (*b"ok", 0xFF0D):  # then the engineer's
            await ws.send(struct.pack(">BBxxI", 4, 1, sym))
            await ws.send(struct.pack(">BBxxI", 4, 0, sym))
        typed = d.xvnc.typed
        await poll(lambda: typed.exists() and b"\n" in typed.read_bytes(), 10, "the typed line")
        assert typed.read_bytes() == b"ok\n"
        w.close()
        ws.close()
        await appr.aclose()
        await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
    header, records = read_records(d.store.read(f"{live.session_id}.rfb"))
    assert header["input"] is True
    keys = [data[7] for _ms, kind, data in records if kind == b"C" and data[:1] == b"\x04"]
    assert keys == [ord("o"), ord("o"), ord("k"), ord("k"), 0x0D, 0x0D]  # the engineer's only
    clicks = [data for _ms, kind, data in records if kind == b"C" and data[:1] == b"\x05"]
    assert clicks == []  # nor the approver's click
