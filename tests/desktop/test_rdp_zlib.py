"""A real xrdp desktop asked for in Zlib, and in ZRLE as the console's noVNC asks: the
browser's copy of the screen built from the Zlib or ZRLE rectangles (decoded here,
each one zlib stream as RFB has it; ZRLE's tiles by the video export's decoder, which
reads Xvnc's ZRLE) equals the one a Raw session gets of the same desktop, and the
session's recording is many times smaller than the same scenario's recording in Raw,
in ZRLE smaller again than in Zlib."""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path

import httpx

from broker.desktop.rdpbridge import NATIVE_FORMAT
from broker.desktop.rfb import EXT_DESKTOP_SIZE, RAW, ZLIB, ZRLE, ServerInit
from broker.desktop.video import Decoder
from tests.desktop.conftest import Desk, Xrdp, pinned_desk
from tests.desktop.helpers import console_sign_in, ws_path
from tests.desktop.rfbscreen import Screen, is_green
from tests.desktop.wsclient import ws_open
from tests.support import poll
from tests.support.served import served

SIZE = (800, 600)
SMALLER = 20  # the Zlib recording is at least this many times smaller than Raw's
ZRLE_SMALLER = 5  # the ZRLE recording is at least this many times smaller than Zlib's


class ZlibScreen(Screen):
    """The browser's copy from Raw, Zlib and ZRLE rectangles (each one stream)."""

    def __init__(self, w: int, h: int) -> None:
        super().__init__(w, h)
        self.z = zlib.decompressobj()
        self.zrle = Decoder(ServerInit(w, h, NATIVE_FORMAT, ""))
        self.zlib_rects = 0
        self.zrle_rects = 0

    def _zrle(self, data: bytes, x: int, y: int, w: int, h: int) -> bytes:
        """A ZRLE rectangle's pixels as Raw (B, G, R, X)."""
        d = self.zrle
        d._zrle(d.zrle.decompress(data), x, y, w, h)
        rgb = b"".join(
            d.screen.pixels[((y + j) * d.screen.width + x) * 3 :][: w * 3] for j in range(h)
        )
        out = bytearray(w * h * 4)
        out[0::4], out[1::4], out[2::4] = rgb[2::3], rgb[1::3], rgb[0::3]
        return bytes(out)

    def apply(self, msg: bytes) -> None:
        if msg[0] != 0:
            return
        (n,) = struct.unpack(">H", msg[2:4])
        at, raw = 4, [msg[:4]]
        for _ in range(n):
            x, y, w, h, enc = struct.unpack(">HHHHi", msg[at : at + 12])
            at += 12
            if enc == ZLIB:
                (length,) = struct.unpack(">I", msg[at : at + 4])
                pixels = self.z.decompress(msg[at + 4 : at + 4 + length])
                assert len(pixels) == w * h * 4, (len(pixels), w, h)
                raw.append(struct.pack(">HHHHi", x, y, w, h, RAW) + pixels)
                at += 4 + length
                self.zlib_rects += 1
            elif enc == ZRLE:
                (length,) = struct.unpack(">I", msg[at : at + 4])
                pixels = self._zrle(msg[at + 4 : at + 4 + length], x, y, w, h)
                raw.append(struct.pack(">HHHHi", x, y, w, h, RAW) + pixels)
                at += 4 + length
                self.zrle_rects += 1
            elif enc == EXT_DESKTOP_SIZE:
                end = at + 4 + 16 * msg[at]
                raw.append(msg[at - 12 : end])
                at = end
            else:
                assert enc == RAW, enc
                raw.append(msg[at - 12 : at + w * h * 4])
                at += w * h * 4
        assert at == len(msg)
        super().apply(b"".join(raw))


async def _session(d: Desk, url: str, http: httpx.AsyncClient, encoding: int) -> tuple[bytes, int]:
    """The fixed scenario in ``encoding``: the whole screen, updates until the xterm's
    green shows, the whole screen again; the screen's pixels and the recording's size."""
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    assert ws.status == 101
    init = await ws.rfb_handshake()
    w, h = struct.unpack(">HH", init[:4])
    assert (w, h) == SIZE
    screen = ZlibScreen(w, h)
    await ws.send(struct.pack(">BxHi", 2, 1, encoding))
    await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
    [live] = d.registry.list()
    async with asyncio.timeout(30):
        while not is_green(screen.rgb(20, 20)):
            op, msg = await ws.frame()
            assert op == 0x2, (op, msg[:80])
            screen.apply(msg)
            await ws.send(struct.pack(">BBHHHH", 3, 1, 0, 0, w, h))
        # then the whole screen asked for: the copy the browser ends with
        await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        whole = struct.pack(">HHHH", 0, 0, w, h)
        while True:
            op, msg = await ws.frame()
            screen.apply(msg)
            if msg[0] == 0 and whole in msg[4:16]:
                break
    assert (screen.zlib_rects > 0) == (encoding == ZLIB)
    assert (screen.zrle_rects > 0) == (encoding == ZRLE)
    ws.close()
    await poll(lambda: not d.registry.list(), 10, "the session gone")
    data = d.store.read(f"{live.session_id}.rfb")
    return bytes(screen.px), len(data)


async def test_zlib_and_zrle_show_the_screen_raw_does_and_record_it_many_times_smaller(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    async with pinned_desk(tmp_path, xrdp, rdp_size=SIZE) as d:
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            raw_px, raw_size = await _session(d, url, http, RAW)
            zlib_px, zlib_size = await _session(d, url, http, ZLIB)
            zrle_px, zrle_size = await _session(d, url, http, ZRLE)
    for px in (zlib_px, zrle_px):
        different = sum(a != b for a, b in zip(raw_px, px, strict=True))
        assert different < len(raw_px) // 100, different  # the xterm's cursor may blink
    assert zlib_size * SMALLER < raw_size, (zlib_size, raw_size)
    assert zrle_size * ZRLE_SMALLER < zlib_size, (zrle_size, zlib_size)
