"""The browser's copy of a desktop, rebuilt from the RFB updates a test's WebSocket
receives: Raw rectangles in the native pixel format (32 bits, little-endian,
red << 16: bytes B, G, R, X) and ExtendedDesktopSize (a new size)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from broker.desktop.rfb import EXT_DESKTOP_SIZE
from tests.desktop.conftest import GREEN
from tests.desktop.wsclient import WsClient

RAW = 0


def is_green(rgb: tuple[int, ...]) -> bool:
    """The test desktop's green background (within the codec's rounding)."""
    return all(abs(a - b) < 24 for a, b in zip(rgb, GREEN, strict=True))


class Screen:
    """What a browser would know from the updates: the size, and the pixels."""

    def __init__(self, w: int, h: int) -> None:
        self.resize(w, h)
        self.sizes: list[tuple[int, int, int, int]] = []  # (reason, status, w, h)

    def resize(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.px = bytearray(w * h * 4)

    def apply(self, msg: bytes) -> None:
        if msg[0] != 0:
            return  # a bell, a colour map: nothing to see
        (n,) = struct.unpack(">H", msg[2:4])
        at = 4
        for _ in range(n):
            x, y, w, h, enc = struct.unpack(">HHHHi", msg[at : at + 12])
            at += 12
            if enc == EXT_DESKTOP_SIZE:
                self.sizes.append((x, y, w, h))
                if y == 0:
                    self.resize(w, h)
                at += 4 + 16 * msg[at]
                continue
            assert enc == RAW, enc
            assert x + w <= self.w and y + h <= self.h, (x, y, w, h, self.w, self.h)
            row = w * 4
            for j in range(h):
                o = ((y + j) * self.w + x) * 4
                self.px[o : o + row] = msg[at + j * row : at + (j + 1) * row]
            at += row * h
        assert at == len(msg)

    def rgb(self, x: int, y: int) -> tuple[int, int, int]:
        o = (y * self.w + x) * 4
        return self.px[o + 2], self.px[o + 1], self.px[o]

    def green(self, x: int, y: int) -> bool:
        return is_green(self.rgb(x, y))


async def screen_until(
    ws: WsClient, screen: Screen, cond: Callable[[], bool], timeout_s: float
) -> None:
    """Apply updates, asking for the next one each time, until ``cond()`` holds."""
    async with asyncio.timeout(timeout_s):
        while not cond():
            op, msg = await ws.frame()
            assert op == 0x2, (op, msg[:80])
            screen.apply(msg)
            await ws.send(struct.pack(">BBHHHH", 3, 1, 0, 0, screen.w, screen.h))
