"""The RDP bridge's ZRLE rectangles read back exactly by the video export's ZRLE
decoder (the one that reads Xvnc's recordings): every tile kind (solid, packed
palettes of 2, 3-4 and 5-16 colours, raw), tiles cut at the rectangle's edge (rows
padded to a byte), colours that no single channel tells apart, and each pixel format
with ZRLE's compact pixel; a format without one gets Zlib."""

from __future__ import annotations

import random
import struct

import pytest

from broker.desktop.rdpbridge import NATIVE_FORMAT, RdpScreen, RfbEncoder, _Box, _Format
from broker.desktop.rdpclient import Rect
from broker.desktop.rfb import ZLIB, ZRLE, ServerInit
from broker.desktop.video import Decoder

W, H = 150, 131  # edge tiles 22 x 3 pixels wide and high


def _format(bpp: int, depth: int, big: int, shifts: tuple[int, int, int]) -> bytes:
    return struct.pack(">BBBBHHHBBBxxx", bpp, depth, big, 1, 255, 255, 255, *shifts)


def _screen(colours: list[tuple[int, int, int]], seed: int) -> RdpScreen:
    """A W x H screen whose pixels are drawn at random from ``colours``."""
    rng = random.Random(seed)
    screen = RdpScreen(W, H)
    px = b"".join(bytes((*rng.choice(colours), 255)) for _ in range(W * H))
    screen.paint(Rect(0, 0, W, H, px))
    screen.take(False)
    return screen


def _decoded(fmt: bytes, update: bytes) -> bytes:
    """The RGB24 screen the video export's decoder draws from ``update``."""
    d = Decoder(ServerInit(W, H, NATIVE_FORMAT, ""))
    d.pixel_format(b"\0\0\0\0" + fmt)
    d.apply(update)
    return bytes(d.screen.pixels)


def _rgb(screen: RdpScreen) -> bytes:
    px = screen.pixels
    out = bytearray(W * H * 3)
    out[0::3], out[1::3], out[2::3] = px[0::4], px[1::4], px[2::4]
    return bytes(out)


def _encoder(fmt: bytes) -> RfbEncoder:
    enc = RfbEncoder()
    enc.format = _Format.of(b"\0\0\0\0" + fmt)
    enc.zlib = enc.zrle = True
    return enc


def _palette(n: int, seed: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    colours: set[tuple[int, int, int]] = set()
    while len(colours) < n:
        colours.add((rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return sorted(colours)


FORMATS = {
    "noVNC (B G R X)": _format(32, 24, 0, (16, 8, 0)),
    "R G B X": _format(32, 24, 0, (0, 8, 16)),
    "big-endian X R G B": _format(32, 24, 1, (16, 8, 0)),
}
# no single channel tells these apart: each pixel's index is looked up
AMBIGUOUS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 16, 17, 200])
def test_every_tile_kind_reads_back_exactly(fmt: bytes, n: int) -> None:
    screen = _screen(_palette(n, n), seed=n)
    update = _encoder(fmt).update(screen, [_Box(0, 0, W, H)])
    assert struct.unpack(">i", update[12:16])[0] == ZRLE
    assert _decoded(fmt, update) == _rgb(screen)


def test_colours_no_channel_tells_apart_read_back_exactly() -> None:
    screen = _screen(AMBIGUOUS, seed=4)
    update = _encoder(FORMATS["noVNC (B G R X)"]).update(screen, [_Box(0, 0, W, H)])
    assert _decoded(FORMATS["noVNC (B G R X)"], update) == _rgb(screen)


def test_rectangles_of_one_stream_read_back_after_each_other() -> None:
    """Several updates of parts of the screen: one zlib stream, each rectangle where
    it belongs (tiles counted from its own top left)."""
    fmt = FORMATS["noVNC (B G R X)"]
    enc = _encoder(fmt)
    screen = _screen(_palette(3, 1), seed=1)
    d = Decoder(ServerInit(W, H, NATIVE_FORMAT, ""))
    d.apply(enc.update(screen, [_Box(0, 0, W, H)]))
    rng = random.Random(9)
    for i in range(6):
        x, y = rng.randrange(W - 1), rng.randrange(H - 1)
        w, h = rng.randint(1, W - x), rng.randint(1, H - y)
        px = b"".join(bytes((*rng.choice(_palette(i + 2, i)), 255)) for _ in range(w * h))
        screen.paint(Rect(x, y, w, h, px))
        d.apply(enc.update(screen, screen.take(False)))
        assert bytes(d.screen.pixels) == _rgb(screen)


@pytest.mark.parametrize(
    "fmt",
    [_format(32, 32, 0, (16, 8, 0)), _format(32, 24, 0, (24, 16, 8))],
    ids=["depth 32", "colours in the high bytes"],
)
def test_a_format_without_the_compact_pixel_gets_zlib(fmt: bytes) -> None:
    screen = _screen(_palette(3, 3), seed=3)
    update = _encoder(fmt).update(screen, [_Box(0, 0, W, H)])
    assert struct.unpack(">i", update[12:16])[0] == ZLIB
    assert _decoded(fmt, update) == _rgb(screen)


def test_a_screen_of_text_is_smaller_in_zrle_than_in_zlib() -> None:
    """Two colours in runs, as text on a window: ZRLE's packed palette beats deflating
    32-bit pixels."""
    rng = random.Random(5)
    screen = RdpScreen(W, H)
    rows = []
    for _ in range(H):
        row = bytearray()
        while len(row) < W * 4:
            row += bytes((16, 48, 16, 255) if rng.random() < 0.8 else (128, 255, 128, 255)) * (
                rng.randint(1, 6)
            )
        rows.append(bytes(row[: W * 4]))
    screen.paint(Rect(0, 0, W, H, b"".join(rows)))
    box = [_Box(0, 0, W, H)]
    zrle_update = _encoder(NATIVE_FORMAT).update(screen, box)
    zlib_enc = _encoder(NATIVE_FORMAT)
    zlib_enc.zrle = False
    zlib_update = zlib_enc.update(screen, box)
    assert len(zrle_update) * 2 < len(zlib_update), (len(zrle_update), len(zlib_update))
    assert _decoded(NATIVE_FORMAT, zrle_update) == _rgb(screen)
