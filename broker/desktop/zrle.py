"""ZRLE rectangles (RFC 6143, 7.7.6) of the RDP bridge's copy of the screen.

A rectangle is cut in tiles of 64 x 64 pixels, left to right, top to bottom; each
tile is one of

- *solid* (subencoding 1): one compact pixel;
- *packed palette* (2-16 colours): the palette, then each row's palette indices
  packed 1, 2 or 4 bits a pixel, most significant bits first, each row padded to a
  whole byte;
- *raw* (0): every compact pixel, for a tile of more than 16 colours.

A compact pixel (CPIXEL) is the browser's 32-bit pixel without its unused byte, so
ZRLE is sent only to a browser whose pixel format has depth 24 or less and red,
green and blue in the three least significant bytes (noVNC's format, and the
bridge's own); :func:`compact_order` tells.  The caller deflates the tiles with
the connection's one ZRLE zlib stream.

For a screen of windows and text ZRLE is several times smaller than Zlib's
deflated 32-bit pixels (docs/benchmarks.md), and the recording, which is the
stream the browser got, is smaller by as much.  The tiles are read with Pillow
(colour counts, channel look-ups and bit packing in C); the exact palette index of
each pixel comes from a channel whose values tell the tile's colours apart, or,
when none does, from a look-up of each pixel.
"""

from __future__ import annotations

from typing import cast

from PIL import Image

TILE = 64
MAX_PALETTE = 16
RAW_TILE, SOLID_TILE = 0, 1
_HEX = bytes.maketrans(bytes(range(16)), b"0123456789abcdef")
_BASE4 = bytes.maketrans(bytes(range(4)), b"0123")
_ONE_BIT = bytes.maketrans(b"\x00\x01", b"\x00\xff")


def compact_order(
    positions: tuple[int, int, int], big_endian: bool, depth: int
) -> tuple[int, int, int] | None:
    """For a 32-bit pixel with red, green and blue at byte ``positions`` (0-3, in
    the order sent), the channel (0 red, 1 green, 2 blue) of each of the three
    compact-pixel bytes, in the order sent; None when the compact pixel is not three
    bytes of it (RFC 6143: depth 24 or less, colours in the least significant three
    bytes)."""
    low = (1, 2, 3) if big_endian else (0, 1, 2)
    if depth > 24 or set(positions) != set(low):
        return None
    channel_at = {pos: ch for ch, pos in enumerate(positions)}
    a, b, c = (channel_at[p] for p in low)
    return a, b, c


def encode(img: Image.Image, order: tuple[int, int, int]) -> bytes:
    """The ZRLE data (before deflating) of ``img``, an RGB image of the rectangle;
    ``order``: :func:`compact_order`."""
    width, height = img.size
    parts: list[bytes] = []
    for ty in range(0, height, TILE):
        for tx in range(0, width, TILE):
            box = (tx, ty, min(tx + TILE, width), min(ty + TILE, height))
            parts.append(_tile(img.crop(box), order))
    return b"".join(parts)


def _compact(rgb: bytes, order: tuple[int, int, int]) -> bytes:
    """RGB24 pixels as compact pixels in ``order``."""
    if order == (0, 1, 2):
        return rgb
    out = bytearray(len(rgb))
    for i, ch in enumerate(order):
        out[i::3] = rgb[ch::3]
    return bytes(out)


def _tile(tile: Image.Image, order: tuple[int, int, int]) -> bytes:
    w, h = tile.size
    counted = tile.getcolors(MAX_PALETTE)
    if counted is None:  # more than 16 colours
        return bytes([RAW_TILE]) + _compact(tile.tobytes(), order)
    colours = [cast(tuple[int, int, int], c) for _n, c in counted]  # an RGB image's
    n = len(colours)
    palette = _compact(b"".join(bytes(c) for c in colours), order)
    if n == 1:
        return bytes([SOLID_TILE]) + palette
    index = _indices(tile, colours)
    if n == 2:
        packed = Image.frombytes("L", (w, h), index.translate(_ONE_BIT))
        bits = packed.convert("1", dither=Image.Dither.NONE).tobytes()
    elif n <= 4:
        bits = _pack(index, w, h, 4, _BASE4)
    else:
        bits = _pack(index, w, h, 2, _HEX)
    return bytes([n]) + palette + bits


def _indices(tile: Image.Image, colours: list[tuple[int, int, int]]) -> bytes:
    """Each pixel's index in ``colours`` (which hold every colour of ``tile``)."""
    for ch in range(3):
        values = [c[ch] for c in colours]
        if len(set(values)) == len(values):  # this channel alone tells them apart
            lut = bytearray(256)
            for i, v in enumerate(values):
                lut[v] = i
            return tile.getchannel(ch).tobytes().translate(lut)
    rgb = tile.tobytes()
    at = {bytes(c): i for i, c in enumerate(colours)}
    return bytes(at[rgb[i : i + 3]] for i in range(0, len(rgb), 3))


def _pack(index: bytes, w: int, h: int, per_byte: int, digits: bytes) -> bytes:
    """Indices packed ``per_byte`` to a byte (2 or 4), rows padded to a byte: each
    index becomes a digit of base 4 (2 bits) or 16 (4 bits) and the digits are read
    as one number."""
    row = -(-w // per_byte) * per_byte
    pad = b"0" * (row - w)
    text = index.translate(digits)
    if pad:
        text = pad.join(text[j * w : (j + 1) * w] for j in range(h)) + pad
    if per_byte == 2:
        return bytes.fromhex(text.decode())
    return int(text, 4).to_bytes(len(text) // 4, "big")
