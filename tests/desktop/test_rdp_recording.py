"""An RDP desktop's recording as the bridge writes it (Zlib rectangles, one stream)
decoded by the video export, and a recording whose rectangle inflates past its size
refused."""

from __future__ import annotations

import json
import random
import struct
import zlib

import pytest

from broker.desktop.rdpbridge import NATIVE_FORMAT, RdpScreen, RfbEncoder, _Format
from broker.desktop.rdpclient import Rect
from broker.desktop.recording import _HEAD, MAGIC
from broker.desktop.rfb import C_PIXEL_FORMAT, S_UPDATE, ZLIB, ServerInit
from broker.desktop.video import ExportError, frames

# noVNC's pixel format: 32 bits, depth 24, little-endian, true colour, R G B at 0 8 16
NOVNC_FORMAT = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 0, 8, 16)


def _recording(records: list[tuple[int, bytes, bytes]]) -> bytes:
    head = MAGIC + json.dumps({"version": 1}).encode() + b"\n"
    return head + b"".join(_HEAD.pack(ms, k, len(d)) + d for ms, k, d in records)


def _rgb(screen: RdpScreen) -> bytes:
    px = screen.pixels
    out = bytearray(len(px) // 4 * 3)
    for i in range(3):
        out[i::3] = px[i::4]
    return bytes(out)


def _texty(rng: random.Random, w: int, h: int) -> bytes:
    """RGBA of a window-like area: a background, a few colours, runs of 'glyphs'."""
    bg, ink = bytes((240, 240, 235, 255)), bytes((20, 30, 40, 255))
    return b"".join(ink if rng.random() < 0.15 else bg for _ in range(w * h))


@pytest.mark.parametrize("browser_format", [None, NOVNC_FORMAT])
def test_zlib_updates_across_keyframes_decode_to_the_screen(browser_format: bytes | None) -> None:
    rng = random.Random(7)
    screen = RdpScreen(96, 64)
    enc = RfbEncoder()
    enc.zlib = True
    records: list[tuple[int, bytes, bytes]] = []
    init = ServerInit(96, 64, NATIVE_FORMAT, "an-pc-1")
    records.append((0, b"S", init.encode()))
    if browser_format is not None:
        message = bytes((C_PIXEL_FORMAT, 0, 0, 0)) + browser_format
        enc.format = _Format.of(message)
        records.append((1, b"F", message))
    raw = 0
    for step in range(40):
        w, h = rng.randint(1, 40), rng.randint(1, 30)
        x, y = rng.randint(0, 96 - w), rng.randint(0, 64 - h)
        screen.paint(Rect(x, y, w, h, _texty(rng, w, h)))
        keyframe = step % 10 == 0
        boxes = screen.take(keyframe)
        message = enc.update(screen, boxes)
        assert struct.unpack(">BxH", message[:4]) == (S_UPDATE, len(boxes))
        assert struct.unpack(">i", message[12:16])[0] == ZLIB
        raw += 4 + sum(12 + b.w * b.h * 4 for b in boxes)
        records.append((10 + step * 50, b"S", message))
    _w, _h, _count, gen = frames(_recording(records))
    *_, last = gen
    assert last == _rgb(screen)
    assert sum(len(d) for _ms, k, d in records if k == b"S") * 3 < raw


def test_a_zlib_rectangle_that_inflates_past_its_size_is_refused() -> None:
    init = ServerInit(8, 8, NATIVE_FORMAT, "an-pc-1")
    z = zlib.compressobj(9)
    bomb = z.compress(bytes(64 << 20)) + z.flush(zlib.Z_SYNC_FLUSH)
    update = struct.pack(">BxHHHHHiI", S_UPDATE, 1, 0, 0, 2, 2, ZLIB, len(bomb)) + bomb
    data = _recording([(0, b"S", init.encode()), (100, b"S", update)])
    with pytest.raises(ExportError, match="more than its size"):
        frames(data)
    z = zlib.compressobj(1)
    short = z.compress(bytes(8)) + z.flush(zlib.Z_SYNC_FLUSH)
    update = struct.pack(">BxHHHHHiI", S_UPDATE, 1, 0, 0, 2, 2, ZLIB, len(short)) + short
    with pytest.raises(ExportError, match="fewer pixels"):
        frames(_recording([(0, b"S", init.encode()), (100, b"S", update)]))
