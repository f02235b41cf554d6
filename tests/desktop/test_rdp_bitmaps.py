"""Every bitmap xrdp sends reaches the screen the broker's RDP client keeps: a window
whose width is not a multiple of 4 (xrdp pads such bitmaps to a multiple of 4) moves
on the instrument's X display, and afterwards the screen decoded from RDP is, pixel
for pixel (within 16-bit colour), the screen the X server itself gives a VNC client,
with no bitmap dropped on the way."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
from pathlib import Path

import httpx

from broker.desktop import rdpclient
from broker.desktop.rfb import Screen as Framing
from broker.desktop.rfb import ServerFramer, Stream, client_handshake
from tests.desktop.conftest import VNC_PASSWORD, Xrdp, pinned_desk
from tests.desktop.helpers import console_sign_in, ws_path
from tests.desktop.rfbscreen import Screen
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import poll
from tests.support.served import served

W, H = 800, 600
WIN = (333, 77)  # neither a multiple of 4
HOME = (141, 233)  # where the window comes to rest
TOLERANCE = 8  # xrdp sends 16-bit colour here: 5 bits of red and blue, 6 of green

# A Tk window of WIN, one-pixel vertical stripes of seven colours and a lighter lower
# half, moved 5 px right and 3 px down every 40 ms for MOVE_S seconds, then put at HOME;
# "moved" is written to the file given once it is there.
WINDOW = """
import sys, tkinter
w, h, hx, hy, move_s, done = 333, 77, *map(int, sys.argv[1:4]), sys.argv[4]
colours = ["#ff0000", "#00ff00", "#0000ff", "#ffff00", "#ff00ff", "#00ffff", "#000000"]
light = ["#800000", "#008000", "#000080", "#808000", "#800080", "#008080", "#ffffff"]
root = tkinter.Tk()
root.overrideredirect(True)
root.geometry(f"{w}x{h}+20+20")
c = tkinter.Canvas(root, width=w, height=h, highlightthickness=0, bd=0)
c.place(x=0, y=0)
for i in range(w):
    c.create_line(i, 0, i, h // 2, fill=colours[i % 7])
    c.create_line(i, h // 2, i, h, fill=light[(i * 3) % 7])
steps = int(move_s * 1000 / 40)
def move(n):
    if n < steps:
        root.geometry(f"+{20 + (5 * n) % 400}+{20 + (3 * n) % 450}")
        root.after(40, move, n + 1)
    else:
        root.geometry(f"+{hx}+{hy}")
        root.update_idletasks()
        root.after(300, lambda: open(done, "w").write("moved"))
root.after(500, move, 0)
root.mainloop()
"""


class _Seen:
    """The screen as the RDP updates paint it (RGBA)."""

    def __init__(self) -> None:
        self.px = bytearray(W * H * 4)
        self.rects = 0

    def paint(self, r: rdpclient.Rect) -> None:
        self.rects += 1
        for j in range(r.height):
            o = ((r.y + j) * W + r.x) * 4
            self.px[o : o + r.width * 4] = r.pixels[j * r.width * 4 : (j + 1) * r.width * 4]

    def rgb(self, x: int, y: int) -> tuple[int, int, int]:
        o = (y * W + x) * 4
        return self.px[o], self.px[o + 1], self.px[o + 2]


async def _x_screen(port: int) -> Screen:
    """The whole screen as Xvnc gives it to a VNC client of its own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        init = await client_handshake(Stream(reader.read), writer.write, VNC_PASSWORD, "xvnc")
        writer.write(struct.pack(">BxHi", 2, 1, 0))  # Raw
        writer.write(struct.pack(">BBHHHH", 3, 0, 0, 0, init.width, init.height))
        screen = Screen(init.width, init.height)
        stream = Stream(reader.read)
        framer = ServerFramer(Framing.of(init))
        async with asyncio.timeout(20):
            while (m := await framer.next(stream)).kind != 0:
                pass
        screen.apply(m.data)
        return screen
    finally:
        writer.close()


def _differences(seen: _Seen, x_screen: Screen, box: tuple[int, int, int, int]) -> int:
    return len(_differing(seen, x_screen, box))


def _differing(
    seen: _Seen, x_screen: Screen, box: tuple[int, int, int, int]
) -> list[tuple[int, int, tuple[int, int, int], tuple[int, int, int]]]:
    """The pixels of ``box`` that differ: where, as RDP painted it, as X has it."""
    x0, y0, x1, y1 = box
    return [
        (x, y, seen.rgb(x, y), x_screen.rgb(x, y))
        for y in range(y0, y1)
        for x in range(x0, x1)
        if not _close(seen.rgb(x, y), x_screen.rgb(x, y))
    ]


def _close(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """The same colour, within what xrdp's 16-bit colour keeps (5-6-5 bits)."""
    return all(abs(p - q) <= TOLERANCE for p, q in zip(a, b, strict=True))


async def test_a_moving_window_of_odd_width_reaches_the_rdp_screen_pixel_for_pixel(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    async def accept(_der: bytes) -> None:
        return None

    reader, writer = await asyncio.open_connection("127.0.0.1", xrdp.port)
    session = await rdpclient.connect(
        reader,
        writer,
        username="service",
        password=VNC_PASSWORD,
        width=W,
        height=H,
        check_certificate=accept,
    )
    seen = _Seen()

    async def take() -> None:
        while (rect := await session.next()) is not None:
            seen.paint(rect)

    taking = asyncio.ensure_future(take())
    done = tmp_path / "moved"
    window = subprocess.Popen(
        [sys.executable, "-c", WINDOW, str(HOME[0]), str(HOME[1]), "4", str(done)],
        env={"DISPLAY": xrdp.xvnc.display, "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
    )
    try:
        await poll(lambda: seen.rects > 0, 20, "the first RDP bitmaps")
        await poll(lambda: done.exists() or window.poll() is not None, 30, "the window moved")
        assert window.poll() is None, window.stderr.read() if window.stderr else b""
        x_screen = await _x_screen(xrdp.xvnc.port)
        hx, hy = HOME
        # the window is where it came to rest, its stripes as Tk drew them
        assert x_screen.rgb(hx, hy) == (255, 0, 0) and x_screen.rgb(hx + 1, hy) == (0, 255, 0)
        box = (hx - 8, hy - 8, hx + WIN[0] + 8, hy + WIN[1] + 8)

        with contextlib.suppress(AssertionError):
            await poll(lambda: _differences(seen, x_screen, box) == 0, 10, "the window")
        wrong = _differing(seen, x_screen, box)
        assert not wrong, (len(wrong), wrong[:5], session.bitmaps_dropped)
        # and the whole screen, where the window passed too
        assert _differences(seen, x_screen, (0, 0, W, H)) == 0
        assert session.bitmaps_dropped == 0
    finally:
        window.kill()
        window.wait()
        await session.close()
        taking.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await taking


async def test_three_rdp_desktops_under_a_moving_window_all_get_updates_and_a_fourth_opens(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    """Three RDP desktops through one broker while a window moves on the instrument:
    each keeps getting updates, and the console still answers a fourth desktop's
    WebSocket upgrade (the decoding does not hold the broker's event loop)."""
    done = tmp_path / "moved"
    async with pinned_desk(tmp_path, xrdp, rdp_size=(W, H)) as d:
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            token = await console_sign_in(http, d, "alice")

            async def opened() -> WsClient:
                ws = await ws_open(
                    url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url
                )
                assert ws.status == 101
                await ws.rfb_handshake()
                await ws.send(struct.pack(">BxHi", 2, 1, 0))  # Raw
                return ws

            clients = [await opened() for _ in range(3)]
            window = subprocess.Popen(
                [sys.executable, "-c", WINDOW, str(HOME[0]), str(HOME[1]), "20", str(done)],
                env={"DISPLAY": xrdp.xvnc.display, "PATH": "/usr/bin:/bin"},
                stderr=subprocess.DEVNULL,
            )
            counts = [0, 0, 0]

            async def noVNC(i: int, ws: WsClient) -> None:
                while True:
                    await ws.send(struct.pack(">BBHHHH", 3, 1, 0, 0, W, H))
                    while True:
                        op, msg = await ws.frame()
                        if op == 0x2 and msg[:1] == b"\0":
                            counts[i] += 1
                            break

            loops = [asyncio.ensure_future(noVNC(i, c)) for i, c in enumerate(clients)]
            try:
                await poll(lambda: done.exists() or min(counts) > 30, 30, "the first updates")
                before = list(counts)
                async with asyncio.timeout(10):  # generous: bench/ has the timing figures
                    fourth = await ws_open(
                        url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url
                    )
                assert fourth.status == 101
                fourth.close()
                await poll(
                    lambda: all(c > b + 5 for c, b in zip(counts, before, strict=True)),
                    20,
                    "more updates on every desktop",
                )
                assert all(not t.done() for t in loops), [t for t in loops if t.done()]
            finally:
                for t in loops:
                    t.cancel()
                window.kill()
                window.wait()
                for c in clients:
                    c.close()
