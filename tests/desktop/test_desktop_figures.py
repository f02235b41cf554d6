"""Figures for docs/architecture.md "Desktop sessions": a full 800x600 screen (Raw, 32 bpp,
1.9 MB a frame; and ZRLE, as noVNC asks for it) asked for and received 30 times,
directly from Xvnc and through hoshu
(console WebSocket → broker → gateway tunnel → Xvnc): the time per frame, this one
process's CPU per frame (broker, gateway and client share it), and the recording's bytes
per frame.  The test holds the relay to a bound a user would notice (under 1 s a
full frame, on a busy two-core machine) and prints the figures."""

from __future__ import annotations

import asyncio
import struct
import time

import httpx
import pytest

from broker.console.web import csrf_for
from broker.desktop.rfb import Screen, ServerFramer, Stream, client_handshake
from tests.console.test_live import served
from tests.control.conftest import PASSWORD
from tests.desktop.conftest import INSTRUMENT, VNC_PASSWORD, Desk
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import poll

FRAMES = 30
NAMES = {0: "Raw", 16: "ZRLE"}


def _request(w: int, h: int) -> bytes:
    return struct.pack(">BBHHHH", 3, 0, 0, 0, w, h)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", [0, 16])
async def test_full_frames_direct_and_through_hoshu(desk: Desk, encoding: int) -> None:
    d = desk
    only = struct.pack(">BxHi", 2, 1, encoding)
    # directly: the broker's own RFB client code on a plain socket to Xvnc
    reader, writer = await asyncio.open_connection("127.0.0.1", d.xvnc.port)
    init = await client_handshake(Stream(reader.read), writer.write, VNC_PASSWORD, "xvnc")
    framer = ServerFramer(Screen.of(init))
    stream = Stream(reader.read)
    writer.write(only)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(FRAMES):
        writer.write(_request(init.width, init.height))
        m = await framer.next(stream)
        assert m.kind == 0
    direct = ((time.perf_counter() - t0) / FRAMES, (time.process_time() - cpu0) / FRAMES)
    writer.close()

    d.grant()
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.post(
            "/console/login",
            data={"username": "alice", "password": PASSWORD, "totp": d.code("alice")},
        )
        assert r.status_code == 303
        token = http.cookies["hoshu_session"]
        path = f"/console/desktop/{INSTRUMENT}/ws?port={d.port}&csrf={csrf_for(token)}"
        ws = await ws_open(url, path, cookie=f"hoshu_session={token}", origin=url)
        head = await ws.rfb_handshake()
        w, h = struct.unpack(">HH", head[:4])
        await ws.send(only)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(FRAMES):
            await ws.send(_request(w, h))
            op, data = await ws.frame()
            assert op == 0x2 and data[0] == 0
        through = ((time.perf_counter() - t0) / FRAMES, (time.process_time() - cpu0) / FRAMES)
        [live] = d.registry.list()
        ws.close()
        await asyncio.sleep(0)
    await poll(lambda: bool(d.events.of_type("session.ended")), 5, "session.ended")
    size = d.events.of_type("session.ended")[0].get("RecordingSize")
    print(
        f"\nfull frame {w}x{h} {NAMES[encoding]}: direct {direct[0] * 1000:.1f} ms,"
        f" cpu {direct[1] * 1000:.1f} ms; through hoshu {through[0] * 1000:.1f} ms,"
        f" cpu {through[1] * 1000:.1f} ms; recording {size / FRAMES / 1e3:.1f} kB per frame"
        f" ({live.session_id})"
    )
    assert through[0] < 1.0


@pytest.mark.slow
async def test_concurrent_desktops_on_one_broker(desk: Desk) -> None:
    """8 desktop sessions at once in one broker process, each asking for 10 whole screens
    (Raw: the heaviest case): all are served, and the figures are printed."""
    d = desk
    d.grant()
    sessions, frames = 8, 10
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.post(
            "/console/login",
            data={"username": "alice", "password": PASSWORD, "totp": d.code("alice")},
        )
        assert r.status_code == 303
        token = http.cookies["hoshu_session"]
        path = f"/console/desktop/{INSTRUMENT}/ws?port={d.port}&csrf={csrf_for(token)}"
        clients = [
            await ws_open(url, path, cookie=f"hoshu_session={token}", origin=url)
            for _ in range(sessions)
        ]
        sizes = [struct.unpack(">HH", (await c.rfb_handshake())[:4]) for c in clients]
        assert len(d.registry.list()) == sessions

        async def run(c: WsClient, w: int, h: int) -> int:
            await c.send(struct.pack(">BxHi", 2, 1, 0))
            got = 0
            for _ in range(frames):
                await c.send(_request(w, h))
                op, data = await c.frame()
                assert op == 0x2 and data[0] == 0, (op, data[:120])
                got += len(data)
            return got

        cpu0, t0 = time.process_time(), time.perf_counter()
        got = await asyncio.gather(*(run(c, *s) for c, s in zip(clients, sizes, strict=True)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        for c in clients:
            c.close()
        await poll(lambda: not d.registry.list(), 10, "the sessions to end")
    total = sessions * frames
    print(
        f"\n{sessions} desktops at once, {total} whole Raw screens ({sum(got) / 1e6:.0f} MB):"
        f" {wall:.1f} s, {total / wall:.1f} screens/s, cpu {cpu * 1000 / total:.1f} ms a screen"
    )
    assert len(d.events.of_type("session.ended")) == sessions
