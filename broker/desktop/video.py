"""A desktop recording as a standard video (MP4, H.264, through Debian's ffmpeg).

The recording is decoded here, in Python, with the encodings hoshu lets a session
use (:data:`broker.desktop.rfb.FRAMED`): Raw, CopyRect, Zlib and ZRLE rectangles,
screen resizes; the cursor is not drawn.  The pixel format is the one the browser
asked for (``F`` records), else the server's.  The screen is sampled :data:`FPS`
times a second of recorded time (each frame shows it at the end of its interval),
so a video of a recording ``d`` ms long has ``ceil(d / 1000 * FPS)`` frames (at
least one), all of the largest screen size the session had (smaller screens are
drawn at the top left on black).  A Zlib or ZRLE rectangle is inflated to at most
the size its pixels can take (a recording is untrusted input: more raises).  ffmpeg
runs with a time limit; a recording hoshu cannot decode raises :class:`ExportError`.
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from broker.desktop.recording import read_records
from broker.desktop.rfb import (
    COPYRECT,
    CURSOR,
    DESKTOP_SIZE,
    EXT_DESKTOP_SIZE,
    LAST_RECT,
    RAW,
    S_BELL,
    S_COLOURS,
    S_CUT,
    S_UPDATE,
    ZLIB,
    ZRLE,
    ServerInit,
)

FPS = 5
FFMPEG_TIMEOUT_S = 600


class ExportError(Exception):
    """The recording cannot be made into a video (malformed, or ffmpeg failed)."""


class PixelFormat:
    def __init__(self, fmt: bytes) -> None:
        bpp, _depth, big, _true, rmax, gmax, bmax, rs, gs, bs = struct.unpack(
            ">BBBBHHHBBB", fmt[:13]
        )
        self.bpp: int = int(bpp) // 8
        self.big = bool(big)
        self.max = (rmax or 1, gmax or 1, bmax or 1)
        self.shift = (rs, gs, bs)
        # ZRLE's compact pixel: 3 bytes when the colours fit in 24 bits of a 32-bit pixel
        fits = all((m << s) < (1 << 24) for m, s in zip(self.max, self.shift, strict=True))
        self.cbytes = 3 if self.bpp == 4 and fits else self.bpp
        # byte offsets of red, green and blue in a little-endian 32-bit pixel (fast path)
        plain = self.bpp == 4 and not self.big and self.max == (255, 255, 255)
        self.offsets = (
            tuple(sh // 8 for sh in self.shift)
            if plain and all(sh % 8 == 0 and sh < 24 for sh in self.shift)
            else None
        )

    def rgb(self, raw: bytes) -> bytes:
        """``raw`` pixels (``bpp`` bytes each) as RGB24."""
        if self.offsets is not None:
            return _pick(raw, 4, self.offsets)
        n = self.bpp
        out = bytearray(len(raw) // n * 3)
        order: Literal["big", "little"] = "big" if self.big else "little"
        (rm, gm, bm), (rs, gs, bs) = self.max, self.shift
        j = 0
        for i in range(0, len(raw) - n + 1, n):
            v = int.from_bytes(raw[i : i + n], order)
            out[j] = ((v >> rs) & rm) * 255 // rm
            out[j + 1] = ((v >> gs) & gm) * 255 // gm
            out[j + 2] = ((v >> bs) & bm) * 255 // bm
            j += 3
        return bytes(out)

    def crgb(self, raw: bytes) -> bytes:
        """ZRLE compact pixels as RGB24."""
        if self.cbytes == self.bpp:
            return self.rgb(raw)
        if self.offsets is not None:
            return _pick(raw, 3, self.offsets)
        pad = b"\0"
        n = 3
        whole = b"".join(
            (raw[i : i + n] + pad) if not self.big else (pad + raw[i : i + n])
            for i in range(0, len(raw), n)
        )
        return self.rgb(whole)


def _pick(raw: bytes, step: int, offsets: tuple[int, ...]) -> bytes:
    """Red, green and blue bytes at ``offsets`` of each ``step``-byte pixel, as RGB24."""
    n = len(raw) // step
    out = bytearray(n * 3)
    for i, off in enumerate(offsets):
        out[i::3] = raw[off : n * step : step]
    return bytes(out)


class Screen:
    """The framebuffer as RGB24 rows."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(width * height * 3)

    def resize(self, width: int, height: int) -> None:
        """A new size; what was on screen stays where it fits (as in noVNC)."""
        self.pixels = bytearray(self.frame(width, height))
        self.width, self.height = width, height

    def put(self, x: int, y: int, w: int, h: int, rgb: bytes) -> None:
        if x + w > self.width or y + h > self.height or len(rgb) < w * h * 3:
            raise ExportError("a rectangle lies outside the screen")
        for row in range(h):
            start = ((y + row) * self.width + x) * 3
            self.pixels[start : start + w * 3] = rgb[row * w * 3 : (row + 1) * w * 3]

    def copy(self, sx: int, sy: int, x: int, y: int, w: int, h: int) -> None:
        rows = []
        for row in range(h):
            start = ((sy + row) * self.width + sx) * 3
            rows.append(bytes(self.pixels[start : start + w * 3]))
        self.put(x, y, w, h, b"".join(rows))

    def frame(self, width: int, height: int) -> bytes:
        """The screen drawn at the top left of a ``width`` x ``height`` black frame."""
        if (width, height) == (self.width, self.height):
            return bytes(self.pixels)
        out = bytearray(width * height * 3)
        w, h = min(width, self.width), min(height, self.height)
        for row in range(h):
            src = row * self.width * 3
            dst = row * width * 3
            out[dst : dst + w * 3] = self.pixels[src : src + w * 3]
        return bytes(out)


class Decoder:
    """Applies a recording's server messages to a :class:`Screen`."""

    def __init__(self, init: ServerInit) -> None:
        self.screen = Screen(init.width, init.height)
        self.fmt = PixelFormat(init.pixel_format)
        self.zrle = zlib.decompressobj()
        self.zlib = zlib.decompressobj()
        self.sizes: set[tuple[int, int]] = {(init.width, init.height)}

    def pixel_format(self, message: bytes) -> None:
        self.fmt = PixelFormat(message[4:20])

    def apply(self, m: bytes) -> None:
        t = m[0]
        if t in (S_BELL, S_CUT, S_COLOURS):
            return
        if t != S_UPDATE:
            raise ExportError(f"message type {t} in the recording")
        (count,) = struct.unpack(">H", m[2:4])
        pos = 4
        for _ in range(count):
            x, y, w, h, enc = (int(v) for v in struct.unpack(">HHHHi", m[pos : pos + 12]))
            pos += 12
            pos = self._rect(m, pos, x, y, w, h, enc)
            if enc == LAST_RECT:
                break

    def _rect(self, m: bytes, pos: int, x: int, y: int, w: int, h: int, enc: int) -> int:
        fmt = self.fmt
        if enc == RAW:
            size = w * h * fmt.bpp
            self.screen.put(x, y, w, h, fmt.rgb(m[pos : pos + size]))
            return pos + size
        if enc == COPYRECT:
            sx, sy = struct.unpack(">HH", m[pos : pos + 4])
            self.screen.copy(sx, sy, x, y, w, h)
            return pos + 4
        if enc in (ZLIB, ZRLE):
            length: int = struct.unpack(">I", m[pos : pos + 4])[0]
            data = m[pos + 4 : pos + 4 + length]
            if enc == ZLIB:
                size = w * h * fmt.bpp
                pixels = _inflate(self.zlib, data, size)
                if len(pixels) != size:
                    raise ExportError("a Zlib rectangle holds fewer pixels than its size")
                self.screen.put(x, y, w, h, fmt.rgb(pixels))
            else:
                tiles = ((w + 63) // 64) * ((h + 63) // 64)
                bound = w * h * (fmt.cbytes + 2) + tiles * (1 + 128 * fmt.cbytes)
                self._zrle(_inflate(self.zrle, data, bound), x, y, w, h)
            return pos + 4 + length
        if enc in (DESKTOP_SIZE, EXT_DESKTOP_SIZE):
            self.screen.resize(w, h)
            self.sizes.add((w, h))
            return pos if enc == DESKTOP_SIZE else pos + 4 + 16 * m[pos]
        if enc == CURSOR:
            return pos + w * h * fmt.bpp + (w + 7) // 8 * h
        if enc == LAST_RECT:
            return pos
        raise ExportError(f"encoding {enc} in the recording")

    def _zrle(self, data: bytes, x0: int, y0: int, w0: int, h0: int) -> None:
        fmt = self.fmt
        cb = fmt.cbytes
        pos = 0
        for ty in range(y0, y0 + h0, 64):
            th = min(64, y0 + h0 - ty)
            for tx in range(x0, x0 + w0, 64):
                tw = min(64, x0 + w0 - tx)
                sub = data[pos]
                pos += 1
                if sub == 0:
                    n = tw * th * cb
                    rgb = fmt.crgb(data[pos : pos + n])
                    pos += n
                elif sub == 1:
                    rgb = fmt.crgb(data[pos : pos + cb]) * (tw * th)
                    pos += cb
                elif 2 <= sub <= 16:
                    palette: list[bytes]
                    palette, pos = self._palette(data, pos, sub)
                    bits = 1 if sub == 2 else 2 if sub <= 4 else 4
                    per_row = (tw * bits + 7) // 8
                    out = []
                    for row in range(th):
                        line = data[pos + row * per_row : pos + (row + 1) * per_row]
                        for i in range(tw):
                            bit = i * bits
                            idx = (line[bit // 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1)
                            out.append(palette[idx])
                    pos += per_row * th
                    rgb = b"".join(out)
                elif sub == 128 or sub >= 130:
                    palette = []
                    if sub >= 130:
                        palette, pos = self._palette(data, pos, sub - 128)
                    out = []
                    left = tw * th
                    while left > 0:
                        if sub == 128:
                            px = fmt.crgb(data[pos : pos + cb])
                            pos += cb
                            run = True
                        else:
                            idx = data[pos]
                            pos += 1
                            px = palette[idx & 0x7F]
                            run = bool(idx & 0x80)
                        length = 1
                        if run:
                            while data[pos] == 255:
                                length += 255
                                pos += 1
                            length += data[pos]
                            pos += 1
                        length = min(length, left)
                        out.append(px * length)
                        left -= length
                    rgb = b"".join(out)
                else:
                    raise ExportError(f"ZRLE subencoding {sub}")
                self.screen.put(tx, ty, tw, th, rgb)

    def _palette(self, data: bytes, pos: int, n: int) -> tuple[list[bytes], int]:
        cb = self.fmt.cbytes
        colours = [self.fmt.crgb(data[pos + i * cb : pos + (i + 1) * cb]) for i in range(n)]
        return colours, pos + n * cb


def _inflate(z: Any, data: bytes, bound: int) -> bytes:
    """What ``data`` inflates to in the stream ``z``, at most ``bound`` bytes (a
    rectangle's most): more raises ExportError (a recording is untrusted input)."""
    out: bytes = z.decompress(data, bound)
    tail: bytes = z.unconsumed_tail
    while tail:  # only what yields no pixels (the flush's empty block) may be left
        if z.decompress(tail, 1) or len(z.unconsumed_tail) >= len(tail):
            raise ExportError("a rectangle inflates to more than its size")
        tail = z.unconsumed_tail
    return out


def _decoded(data: bytes) -> tuple[list[tuple[int, bytes, bytes]], ServerInit]:
    _header, records = read_records(data)
    recs = list(records)
    first = next((d for _ms, kind, d in recs if kind == b"S"), None)
    if first is None:
        raise ExportError("the recording holds no screen")
    return recs, ServerInit.decode(first)


def frames(data: bytes) -> tuple[int, int, int, Iterator[bytes]]:
    """``(width, height, count, frames)`` of a recording, RGB24 at :data:`FPS`."""
    try:
        recs, init = _decoded(data)
        sizing = Decoder(init)
        for _ms, kind, d in recs[1:]:
            if kind == b"F":
                sizing.pixel_format(d)
            elif kind == b"S":
                sizing.apply(d)
    except (ValueError, IndexError, struct.error, zlib.error) as exc:
        raise ExportError(f"the recording cannot be decoded ({exc})") from exc
    width = max(w for w, _h in sizing.sizes)
    height = max(h for _w, h in sizing.sizes)
    width, height = width + width % 2, height + height % 2  # H.264 wants even sides
    end = max((ms for ms, _k, _d in recs), default=0)
    count = max(1, math.ceil(end / 1000 * FPS))

    def gen() -> Iterator[bytes]:
        dec = Decoder(init)
        i = 1
        for n in range(count):
            t = (n + 1) * 1000 / FPS  # the screen at the end of the frame's time
            while i < len(recs) and recs[i][0] <= t:
                _ms, kind, d = recs[i]
                if kind == b"F":
                    dec.pixel_format(d)
                elif kind == b"S":
                    dec.apply(d)
                i += 1
            yield dec.screen.frame(width, height)

    return width, height, count, gen()


def export_mp4(data: bytes, out: Path) -> int:
    """Write ``out`` (MP4, H.264) from a desktop recording; the number of frames."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ExportError("ffmpeg is not installed (Debian's ffmpeg; ./run installs it)")
    width, height, count, gen = frames(data)
    proc = subprocess.Popen(
        [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            str(FPS),
            "-i",
            "-",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    try:
        for frame in gen:
            proc.stdin.write(frame)
        _out, err = proc.communicate(timeout=FFMPEG_TIMEOUT_S)  # closes its input
    except (ExportError, ValueError, IndexError, struct.error, zlib.error) as exc:
        proc.kill()
        proc.wait()
        raise ExportError(f"the recording cannot be decoded ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.wait()
        raise ExportError("ffmpeg took too long") from exc
    if proc.returncode != 0:
        raise ExportError(f"ffmpeg failed: {err.decode(errors='replace')[:200]}")
    return count
