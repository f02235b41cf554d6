"""An RDP desktop served to the browser as RFB.

The broker is the RDP client (:mod:`broker.desktop.rdpclient`) and, towards the
browser's noVNC, an RFB server: the ServerInit carries the RDP desktop's size, each
RDP bitmap update is painted into the broker's copy of the screen and re-sent as RFB
rectangles (ZRLE or Zlib when the browser asks for it, else Raw;
:mod:`broker.desktop.zrle`) when the browser has asked for an update; key events
(noVNC keysyms) become RDP scancodes of the instrument's US or Japanese (JIS) PC
keyboard (:mod:`broker.desktop.keyboards`), characters no key gives (text from an
input method) RDP Unicode keyboard events; pointer events become RDP mouse
events.  Because the browser side is RFB, a
desktop recording of an RDP session is the same ``<session>.rfb`` a VNC session
writes: playback, following live and the video export read it as they are.

**Clipboard.** Only when the hospital allows the clipboard is the RDP clipboard
channel joined (:mod:`broker.desktop.rdpclip`).  The browser's ClientCutText, once
the desktop gate has allowed, logged and recorded it, becomes the broker's clipboard
on the instrument (text, ``CF_UNICODETEXT``); text copied on the instrument comes
back as ServerCutText, which the gate allows, logs and records before the browser
gets it.  A browser that asks for RFB's Extended Clipboard (noVNC does; kept only
when the hospital allows the clipboard) gets and sends the text as UTF-8
(:class:`_ExtClipboard`, :mod:`broker.desktop.extclip`); to any other, classic RFB
clipboard text is ISO 8859-1 (noVNC sends a character outside it as ``?``), and the
bridge sends the instrument's text the same way.  Text the browser copied is offered
again to the RDP session a resize opens.

**Resize.** A browser that offers the ExtendedDesktopSize pseudo-encoding (noVNC
does) is told the desktop's size in an ExtendedDesktopSize rectangle, which lets it
ask for another with SetDesktopSize when its window changes.  RDP fixes the
desktop's size when the connection is made (the display-control channel is
dynamic, and no dynamic channel is joined), so the bridge opens a second RDP
session at the asked size (``reopen``: through the gateway, TLS, pinned
certificate, the stored login confirmed, as the first), swaps it in, closes the
old one, and answers with an ExtendedDesktopSize rectangle of the new size (status
0) and the whole screen; a size it cannot open is answered with the old size and
an error status, and the session goes on as it was.  Sizes are clamped to
:data:`MIN_SIDE`-:data:`~broker.desktop.rdpclient.MAX_SIDE`, the width rounded down
to a multiple of 4.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from PIL import Image

from broker.desktop import extclip, zrle
from broker.desktop.extclip import PROVIDE
from broker.desktop.keyboards import LAYOUTS, Keyboard, Layout, key_for
from broker.desktop.rdpclient import MAX_SIDE, RdpSession, Rect
from broker.desktop.rdpclip import ClipRefused
from broker.desktop.recording import KEYFRAME_EVERY_S
from broker.desktop.rfb import (
    C_CUT,
    C_ENCODINGS,
    C_KEY,
    C_PIXEL_FORMAT,
    C_POINTER,
    C_SET_DESKTOP_SIZE,
    C_UPDATE_REQUEST,
    EXT_CLIPBOARD,
    EXT_DESKTOP_SIZE,
    RAW,
    S_CUT,
    S_UPDATE,
    ZLIB,
    ZRLE,
    ClientFramer,
    DesktopError,
    Message,
    ProtocolError,
    Screen,
    ServerInit,
    Stream,
)

log = logging.getLogger(__name__)
# 32 bits a pixel, depth 24, little-endian, true colour, 255 a channel, R<<16 G<<8 B
NATIVE_FORMAT = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
MAX_RECTS = 64  # more changed rectangles than this are sent as their bounding box
MIN_SIDE = 200  # the smallest desktop side asked of an RDP server (MS-RDPBCGR's minimum)
# ExtendedDesktopSize: reason (x) and status (y) of the rectangle
EDS_SERVER, EDS_THIS_CLIENT = 0, 1
EDS_OK, EDS_PROHIBITED, EDS_NO_RESOURCES, EDS_INVALID = 0, 1, 2, 3
SCREEN_ID = 0


@dataclass
class _Format:
    """Where red, green and blue go in the browser's 4-byte pixels."""

    red: int = 2
    green: int = 1
    blue: int = 0
    big: bool = False
    depth: int = 24

    @classmethod
    def of(cls, message: bytes) -> _Format:
        bpp, depth, big, true = message[4], message[5], message[6], message[7]
        rmax, gmax, bmax = struct.unpack(">HHH", message[8:14])
        rs, gs, bs = message[14], message[15], message[16]
        if bpp != 32 or not true or (rmax, gmax, bmax) != (255, 255, 255):
            raise ProtocolError("the browser asked for a pixel format hoshu does not send")
        if any(s % 8 for s in (rs, gs, bs)) or len({rs, gs, bs}) != 3:
            raise ProtocolError("the browser asked for a pixel format hoshu does not send")

        def at(shift: int) -> int:
            return 3 - shift // 8 if big else shift // 8

        return cls(at(rs), at(gs), at(bs), bool(big), depth)

    @property
    def compact(self) -> tuple[int, int, int] | None:
        """ZRLE's compact pixel in this format (None: ZRLE is not sent in it)."""
        return zrle.compact_order((self.red, self.green, self.blue), self.big, self.depth)

    def pack(self, rgba: bytes) -> bytes:
        out = bytearray(len(rgba))
        out[self.red :: 4] = rgba[0::4]
        out[self.green :: 4] = rgba[1::4]
        out[self.blue :: 4] = rgba[2::4]
        return bytes(out)


@dataclass
class _Box:
    x: int
    y: int
    w: int
    h: int


def _bounds(boxes: list[_Box]) -> _Box:
    x0 = min(b.x for b in boxes)
    y0 = min(b.y for b in boxes)
    x1 = max(b.x + b.w for b in boxes)
    y1 = max(b.y + b.h for b in boxes)
    return _Box(x0, y0, x1 - x0, y1 - y0)


@dataclass
class RdpScreen:
    """The broker's copy of the RDP screen (RGBA) and what changed since it was sent."""

    width: int
    height: int
    pixels: bytearray = field(init=False)
    dirty: list[_Box] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pixels = bytearray(self.width * self.height * 4)

    def paint(self, r: Rect) -> None:
        row = r.width * 4
        for j in range(r.height):
            at = ((r.y + j) * self.width + r.x) * 4
            self.pixels[at : at + row] = r.pixels[j * row : (j + 1) * row]
        self.dirty.append(_Box(r.x, r.y, r.width, r.height))
        if len(self.dirty) > MAX_RECTS:  # a browser that asks for nothing holds one box
            self.dirty = [_bounds(self.dirty)]

    def clip(self, x: int, y: int, w: int, h: int) -> _Box | None:
        """The part of a requested area that is on the screen (None: none of it)."""
        x2, y2 = min(x + w, self.width), min(y + h, self.height)
        if x >= x2 or y >= y2:
            return None
        return _Box(x, y, x2 - x, y2 - y)

    def take(self, whole: bool) -> list[_Box]:
        boxes, self.dirty = self.dirty, []
        if whole:
            return [_Box(0, 0, self.width, self.height)]
        return boxes

    def image(self, b: _Box) -> Image.Image:
        """The box as an RGB image."""
        size = (self.width, self.height)
        whole = Image.frombuffer("RGBA", size, self.pixels, "raw", "RGBA", 0, 1)
        return whole.crop((b.x, b.y, b.x + b.w, b.y + b.h)).convert("RGB")

    def cut(self, b: _Box) -> bytes:
        row = self.width * 4
        return b"".join(
            bytes(self.pixels[(b.y + j) * row + b.x * 4 : (b.y + j) * row + (b.x + b.w) * 4])
            for j in range(b.h)
        )


class RfbEncoder:
    """RFB framebuffer updates of :class:`RdpScreen` boxes: ZRLE when the browser
    asks for it and its pixel format has ZRLE's compact pixel (noVNC's does), else
    Zlib when it asks for that, else Raw.  Each of ZRLE and Zlib is one zlib stream
    for the connection, as RFB has it."""

    def __init__(self) -> None:
        self.format = _Format()
        self.zlib = False
        self.zrle = False
        self._z = zlib.compressobj(1)
        self._zr = zlib.compressobj(1)

    def update(self, screen: RdpScreen, boxes: list[_Box]) -> bytes:
        parts = [struct.pack(">BxH", S_UPDATE, len(boxes))]
        order = self.format.compact if self.zrle else None
        for b in boxes:
            if order is not None:
                tiles = zrle.encode(screen.image(b), order)
                data = self._zr.compress(tiles) + self._zr.flush(zlib.Z_SYNC_FLUSH)
                parts.append(struct.pack(">HHHHiI", b.x, b.y, b.w, b.h, ZRLE, len(data)))
                parts.append(data)
                continue
            pixels = self.format.pack(screen.cut(b))
            if self.zlib:
                data = self._z.compress(pixels) + self._z.flush(zlib.Z_SYNC_FLUSH)
                parts.append(struct.pack(">HHHHiI", b.x, b.y, b.w, b.h, ZLIB, len(data)))
                parts.append(data)
            else:
                parts.append(struct.pack(">HHHHi", b.x, b.y, b.w, b.h, RAW))
                parts.append(pixels)
        return b"".join(parts)


def server_init(session: RdpSession, name: str) -> ServerInit:
    return ServerInit(session.width, session.height, NATIVE_FORMAT, name)


def desktop_size(width: int, height: int, reason: int, status: int) -> bytes:
    """A FramebufferUpdate holding one ExtendedDesktopSize rectangle (one screen)."""
    return struct.pack(
        ">BxHHHHHiBxxxIHHHHI",
        S_UPDATE,
        1,
        reason,
        status,
        width,
        height,
        EXT_DESKTOP_SIZE,
        1,
        SCREEN_ID,
        0,
        0,
        width,
        height,
        0,
    )


def rdp_size(width: int, height: int) -> tuple[int, int]:
    """The RDP desktop size asked for a browser's SetDesktopSize of ``width`` x ``height``."""
    w = max(MIN_SIDE, min(width, MAX_SIDE))
    h = max(MIN_SIDE, min(height, MAX_SIDE))
    return w - w % 4, h


def server_cut(text: str) -> Message:
    """ServerCutText of the instrument's clipboard ``text``: ISO 8859-1, as RFB (and
    noVNC) has it, a character outside it sent as ``?`` (as noVNC does the other way)."""
    data = text.encode("latin-1", "replace")
    return Message(S_CUT, struct.pack(">BxxxI", S_CUT, len(data)) + data, cut=data)


Send = Callable[[bytes], Awaitable[None]]
Reopen = Callable[[int, int], Awaitable[RdpSession]]


class _ExtClipboard:
    """The bridge's side of RFB's Extended Clipboard towards a browser that asked for
    it (only when the hospital allows the clipboard): UTF-8 text both ways.

    The bridge announces text (caps: caps, request, peek, notify, provide; no
    unsolicited text taken).  The instrument's text goes at once as a provide if
    the browser's caps take unsolicited text that large (by default 20 MiB, as the
    specification has it), else it is announced (notify) and provided when the
    browser asks; ``on_server`` allows, logs and records each provide first.  The
    browser's notify of text is answered with a request; its provide is the
    browser's copy (the desktop gate allowed it already)."""

    DEFAULT_SIZE = 20 * 1024 * 1024  # a client that sent no caps takes this much text

    def __init__(self, allowed: bool, send: Send, on_server: Callable[[Message], bool]) -> None:
        self.allowed = allowed
        self.browser = False  # the browser asked for Extended Clipboard
        self._send = send
        self._on_server = on_server
        self._actions = extclip.REQUEST | extclip.NOTIFY | extclip.PROVIDE
        self._size = self.DEFAULT_SIZE
        self._text: str | None = None  # the instrument's last text

    async def announce(self) -> None:
        self.browser = True
        caps = extclip.Clip(extclip.CAPS, True, extclip.ACTIONS, 0)
        await self._send(extclip.message(S_CUT, caps))

    async def copied(self, text: str) -> None:
        """The instrument's clipboard now holds ``text``."""
        self._text = text
        size = len(text.encode("utf-8")) + text.count("\n") + 1
        if self._actions & extclip.PROVIDE and size <= self._size:
            await self._provide()
        elif self._actions & extclip.NOTIFY:
            await self._send(extclip.message(S_CUT, extclip.Clip(extclip.NOTIFY, True)))

    async def answer(self, clip: extclip.Clip) -> None:
        """A browser's caps, request, peek or notify."""
        if clip.action == extclip.CAPS:
            self._actions, self._size = clip.actions, clip.text_size if clip.text else 0
        elif clip.action == extclip.REQUEST and clip.text and self._text is not None:
            await self._provide()
        elif clip.action == extclip.PEEK and self._actions & extclip.NOTIFY:
            notify = extclip.Clip(extclip.NOTIFY, self._text is not None)
            await self._send(extclip.message(S_CUT, notify))
        elif clip.action == extclip.NOTIFY and clip.text and self._actions & extclip.PROVIDE:
            await self._send(extclip.message(S_CUT, extclip.Clip(extclip.REQUEST, True)))

    async def _provide(self) -> None:
        assert self._text is not None
        clip = extclip.provide(self._text)
        m = Message(S_CUT, extclip.message(S_CUT, clip), cut=clip.utf8, clip=clip)
        if self._on_server(m):
            await self._send(m.data)


class RdpBridge:
    """Both directions of one RDP desktop served as RFB.

    ``send`` records and delivers one server message (the caller records it before
    the browser gets it); ``on_client`` sees each browser message before it is
    handled (recording of input and pixel formats, clipboard policy: False drops
    it).  The instrument's clipboard text (the clipboard channel, joined only when
    the hospital allows it) goes to ``on_server`` as ServerCutText and is sent to
    the browser only if it answers True; its refused clipboard PDUs go to
    ``on_refused``."""

    def __init__(
        self,
        session: RdpSession,
        send: Send,
        on_client: Callable[[Message], bool],
        *,
        keyframe_every_s: float = KEYFRAME_EVERY_S,
        reopen: Reopen | None = None,
        on_server: Callable[[Message], bool] = lambda _m: False,
        on_refused: Callable[[ClipRefused], None] = lambda _r: None,
        keyboard: Layout = LAYOUTS["en-US"],
        clipboard: bool = False,
        send_clip: Send | None = None,
    ) -> None:
        self.rdp = session
        self.clip = _ExtClipboard(clipboard, send_clip or send, on_server)
        self.layout = keyboard
        self.keys = Keyboard(keyboard)
        self.on_server = on_server
        self.on_refused = on_refused
        self.copied: str | None = None  # the browser's last allowed clipboard text
        self.reopen = reopen
        self.told_size = False  # the browser was told the size (ExtendedDesktopSize)
        self._sending = asyncio.Lock()  # one update at a time, of one screen
        self._settled = asyncio.Event()  # no resize under way
        self._settled.set()
        self.send = send
        self.on_client = on_client
        self.screen = RdpScreen(session.width, session.height)
        self.encoder = RfbEncoder()
        self.wanted = asyncio.Event()  # the browser asked for an update
        self.whole = True  # the next update is the whole screen
        self.asked: list[_Box] = []  # areas the browser asked for whole (non-incremental)
        self.changed = asyncio.Event()
        self.keyframe_every_s = keyframe_every_s
        self._buttons = 0
        self._pos = (0, 0)

    async def up(self) -> str:
        """RDP bitmaps into the screen copy, until the instrument ends the session
        (a session replaced by a resize ends without ending the bridge)."""
        while True:
            rdp = self.rdp
            rect = await rdp.next()
            if rect is None:  # the old session may end before the new one is in
                await self._settled.wait()
            if rdp is not self.rdp:
                continue  # resized meanwhile: the old session's last bitmaps are dropped
            if rect is None:
                return "instrument_closed"
            self.screen.paint(rect)
            self.changed.set()

    async def out(self) -> None:
        """RFB updates to the browser, each when it has asked for one."""
        while True:
            await self.wanted.wait()
            if not self.whole and not self.asked:
                await self.changed.wait()
            async with self._sending:
                self.changed.clear()
                self.wanted.clear()
                boxes = self.screen.take(self.whole)
                if not self.whole:
                    boxes += self.asked
                self.asked = []
                self.whole = False
                if boxes:
                    await self.send(self.encoder.update(self.screen, boxes))
                else:
                    self.wanted.set()

    async def keyframes(self) -> None:
        """The whole screen now and then: the recording holds keyframes."""
        while True:
            await asyncio.sleep(self.keyframe_every_s)
            self.whole = True
            self.changed.set()

    async def down(self, s: Stream) -> str:
        """Browser messages: update requests, keys, pointer, formats."""
        framer = ClientFramer(
            Screen(self.screen.width, self.screen.height, 4), clipboard=self.clip.allowed
        )
        while True:
            try:
                m = await framer.next(s)
            except EOFError:
                return "browser_closed"
            if not self.on_client(m):
                continue
            if m.kind == C_PIXEL_FORMAT:
                self.encoder.format = _Format.of(m.data)
                self.whole = True
            elif m.kind == C_ENCODINGS:
                self.encoder.zlib = ZLIB in framer.encodings
                self.encoder.zrle = ZRLE in framer.encodings
                if EXT_CLIPBOARD in framer.encodings:
                    async with self._sending:
                        await self.clip.announce()
                if EXT_DESKTOP_SIZE in framer.encodings and self.reopen and not self.told_size:
                    self.told_size = True
                    async with self._sending:
                        w, h = self.screen.width, self.screen.height
                        await self.send(desktop_size(w, h, EDS_SERVER, EDS_OK))
            elif m.kind == C_SET_DESKTOP_SIZE:
                w, h = struct.unpack(">HH", m.data[2:6])
                await self.resize(w, h)
                framer.screen.width, framer.screen.height = self.screen.width, self.screen.height
            elif m.kind == C_UPDATE_REQUEST:
                if m.data[1] == 0:  # that area whole, not the screen: no full frame per ask
                    box = self.screen.clip(*struct.unpack(">HHHH", m.data[2:10]))
                    if box == _Box(0, 0, self.screen.width, self.screen.height):
                        self.whole = True
                    elif box is not None and len(self.asked) < MAX_RECTS:
                        self.asked.append(box)
                    elif box is not None:
                        self.asked = [_bounds([*self.asked, box])]
                    self.changed.set()
                self.wanted.set()
            elif m.kind == C_KEY:
                await self._key(m.data[1] == 1, struct.unpack(">I", m.data[4:8])[0])
            elif m.kind == C_POINTER:
                mask = m.data[1]
                x, y = struct.unpack(">HH", m.data[2:6])
                await self._pointer(mask, x, y)
            elif m.kind == C_CUT and m.cut is not None:  # allowed: on_client said so
                self.copied = m.cut.decode("latin-1")
                await self.rdp.offer_clipboard(self.copied)
            elif m.kind == C_CUT and m.clip is not None:
                if m.clip.action == PROVIDE and m.clip.data is not None:  # allowed
                    self.copied = m.clip.data
                    await self.rdp.offer_clipboard(self.copied)
                else:
                    async with self._sending:
                        await self.clip.answer(m.clip)

    async def clipboard(self) -> str:
        """The instrument's clipboard to the browser, until the instrument ends the
        session (a session replaced by a resize ends without ending the bridge)."""
        while True:
            rdp = self.rdp
            event = await rdp.next_clipboard()
            if event is None:
                await self._settled.wait()
            if rdp is not self.rdp:
                continue
            if event is None:
                return "instrument_closed"
            if isinstance(event, ClipRefused):
                self.on_refused(event)
                continue
            if self.clip.browser:
                async with self._sending:
                    await self.clip.copied(event.text)
                continue
            m = server_cut(event.text)
            if self.on_server(m):
                async with self._sending:
                    await self.send(m.data)

    async def resize(self, width: int, height: int) -> None:
        """Follow the browser's SetDesktopSize: a new RDP session at that size, swapped
        in; the browser is answered with an ExtendedDesktopSize rectangle."""
        w, h = rdp_size(width, height)
        old = self.rdp
        if (w, h) == (old.width, old.height) or self.reopen is None:
            status = EDS_OK if self.reopen else EDS_PROHIBITED
            async with self._sending:
                await self.send(desktop_size(old.width, old.height, EDS_THIS_CLIENT, status))
            return
        self._settled.clear()
        try:
            try:
                new = await self.reopen(w, h)
            except (DesktopError, TimeoutError, OSError) as exc:
                log.info("the desktop could not be resized to %dx%d: %s", w, h, exc)
                async with self._sending:
                    await self.send(
                        desktop_size(old.width, old.height, EDS_THIS_CLIENT, EDS_NO_RESOURCES)
                    )
                return
            try:
                async with self._sending:
                    self.rdp = new  # the session and its screen change together
                    self.screen = RdpScreen(new.width, new.height)
                    self.keys = Keyboard(self.layout)  # no key is down in the new one
                    self.whole = True
                    await self.send(desktop_size(new.width, new.height, EDS_THIS_CLIENT, EDS_OK))
            except BaseException:
                if self.rdp is not new:
                    await new.close()
                raise
            if self.copied is not None:  # the text copied already is not lost
                await new.offer_clipboard(self.copied)
            self.changed.set()
            await old.close()  # its end is not the session's: up() reads the new one
        finally:
            self._settled.set()

    async def _key(self, down: bool, keysym: int) -> None:
        events = self.keys.events(keysym, down)
        if not events:
            log.info("keysym %#x has no key on the instrument", keysym)
        for event in events:
            if len(event) == 2:
                await self.rdp.send_unicode(event[0], event[1])
            else:
                await self.rdp.send_scancode(event[0], event[2], event[1])

    async def _pointer(self, mask: int, x: int, y: int) -> None:
        if (x, y) != self._pos:
            self._pos = (x, y)
            await self.rdp.send_pointer(0, x, y, False)
        for bit, button in ((0, 1), (1, 3), (2, 2)):
            was, now = self._buttons >> bit & 1, mask >> bit & 1
            if was != now:
                await self.rdp.send_pointer(button, x, y, bool(now))
        for bit, wheel in ((3, 4), (4, 5)):
            if mask >> bit & 1 and not self._buttons >> bit & 1:
                await self.rdp.send_pointer(wheel, x, y, True)
        self._buttons = mask


__all__ = [
    "NATIVE_FORMAT",
    "RdpBridge",
    "RdpScreen",
    "desktop_size",
    "key_for",
    "rdp_size",
    "server_cut",
    "server_init",
]
