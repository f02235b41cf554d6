"""Whole screens through hoshu (console WebSocket → broker → gateway tunnel → Xvnc) are
the screens Xvnc shows, and one broker serves and records several desktops at once.

The figures (frames per second under a moving window, whole-screen times directly and
through hoshu, recording bytes per minute, broker CPU per session, sessions one broker
carries) are the desktop section of ``python -m bench`` (bench/desktop_bench.py), not
taken here."""

from __future__ import annotations

import asyncio
import struct

import httpx
import pytest

from broker.console.web import csrf_for
from broker.desktop.rfb import Screen as Framing
from broker.desktop.rfb import ServerFramer, Stream, client_handshake
from tests.console.test_live import served
from tests.control.conftest import PASSWORD
from tests.desktop.conftest import INSTRUMENT, VNC_PASSWORD, Desk
from tests.desktop.rfbscreen import Screen
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import poll

RAW, ZRLE = 0, 16


def _request(w: int, h: int) -> bytes:
    return struct.pack(">BBHHHH", 3, 0, 0, 0, w, h)


def _only(encoding: int) -> bytes:
    return struct.pack(">BxHi", 2, 1, encoding)


async def _console(d: Desk, http: httpx.AsyncClient, url: str) -> str:
    r = await http.post(
        "/console/login",
        data={"username": "alice", "password": PASSWORD, "totp": d.code("alice")},
    )
    assert r.status_code == 303
    token = http.cookies["hoshu_session"]
    return f"/console/desktop/{INSTRUMENT}/ws?port={d.port}&csrf={csrf_for(token)}"


async def _whole_update(ws: WsClient) -> bytes:
    """The next framebuffer update the WebSocket carries."""
    async with asyncio.timeout(20):
        while True:
            op, data = await ws.frame()
            assert op in (0x1, 0x2), (op, data[:120])
            if op == 0x2 and data[0] == 0:
                return data


def _rects(msg: bytes) -> list[tuple[int, int, int, int, int]]:
    """The rectangles' (x, y, w, h, encoding) of a ZRLE or Raw update."""
    (n,) = struct.unpack(">H", msg[2:4])
    at, out = 4, []
    for _ in range(n):
        x, y, w, h, enc = struct.unpack(">HHHHi", msg[at : at + 12])
        out.append((x, y, w, h, enc))
        at += 12
        if enc == ZRLE:
            (length,) = struct.unpack(">I", msg[at : at + 4])
            at += 4 + length
        elif enc == RAW:
            at += w * h * 4
        else:
            break
    return out


@pytest.mark.slow
async def test_a_whole_screen_through_hoshu_is_the_screen_xvnc_shows(desk: Desk) -> None:
    """Asked for the whole screen in Raw, the engineer's browser gets every pixel Xvnc
    gives a client on its own port (the green xterm, pixel for pixel); asked in ZRLE, as
    noVNC asks, the update's rectangles cover the whole screen."""
    d = desk
    reader, writer = await asyncio.open_connection("127.0.0.1", d.xvnc.port)
    init = await client_handshake(Stream(reader.read), writer.write, VNC_PASSWORD, "xvnc")
    writer.write(_only(RAW))
    direct = Screen(init.width, init.height)
    stream = Stream(reader.read)
    framer = ServerFramer(Framing.of(init))
    async with asyncio.timeout(20):
        while not direct.green(100, 100):  # the xterm is on the screen
            writer.write(_request(init.width, init.height))
            while (m := await framer.next(stream)).kind != 0:
                pass
            direct.apply(m.data)
    writer.close()

    d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        path = await _console(d, http, url)
        token = http.cookies["hoshu_session"]
        ws = await ws_open(url, path, cookie=f"hoshu_session={token}", origin=url)
        head = await ws.rfb_handshake()
        w, h = struct.unpack(">HH", head[:4])
        assert (w, h) == (init.width, init.height)
        await ws.send(_only(RAW))
        await ws.send(_request(w, h))
        through = Screen(w, h)
        async with asyncio.timeout(20):
            while True:  # the broker's own first keyframe may come before ours
                update = await _whole_update(ws)
                rects = _rects(update)
                through.apply(update)
                if sum(rw * rh for _, _, rw, rh, _ in rects) == w * h:
                    break
        assert through.px == direct.px
        assert through.green(100, 100)

        await ws.send(_only(ZRLE))
        await ws.send(_request(w, h))
        async with asyncio.timeout(20):
            while True:
                rects = _rects(await _whole_update(ws))
                if rects and all(enc == ZRLE for *_, enc in rects):
                    break
                await ws.send(_request(w, h))
        assert sum(rw * rh for _, _, rw, rh, _ in rects) == w * h
        ws.close()
    await poll(lambda: bool(d.events.of_type("session.ended")), 5, "session.ended")


@pytest.mark.slow
async def test_concurrent_desktops_on_one_broker_are_all_served_and_recorded(desk: Desk) -> None:
    """8 desktop sessions at once in one broker process, each asking for 10 whole screens
    in Raw (the heaviest case): every session gets every screen whole, and each one's
    recording holds at least those screens."""
    d = desk
    d.grant()
    sessions, frames = 8, 10
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        path = await _console(d, http, url)
        token = http.cookies["hoshu_session"]
        clients = [
            await ws_open(url, path, cookie=f"hoshu_session={token}", origin=url)
            for _ in range(sessions)
        ]
        sizes = [struct.unpack(">HH", (await c.rfb_handshake())[:4]) for c in clients]
        assert len(d.registry.list()) == sessions

        async def run(c: WsClient, w: int, h: int) -> int:
            await c.send(_only(RAW))
            got = 0
            for _ in range(frames):
                await c.send(_request(w, h))
                got += len(await _whole_update(c))
            return got

        got = await asyncio.gather(*(run(c, *s) for c, s in zip(clients, sizes, strict=True)))
        for c in clients:
            c.close()
        await poll(lambda: not d.registry.list(), 10, "the sessions to end")
    w, h = sizes[0]
    assert all(g >= frames * w * h * 4 for g in got), got
    await poll(
        lambda: len(d.events.of_type("session.ended")) == sessions, 10, "every session.ended"
    )
    recorded = [e.get("RecordingSize") or 0 for e in d.events.of_type("session.ended")]
    assert all(size >= frames * w * h * 4 for size in recorded), recorded
