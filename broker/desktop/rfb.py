"""RFB (VNC) as the broker speaks it: client towards the instrument, server towards
the browser, and the framing of every message relayed in between.

The broker is the only VNC client the instrument sees.  It answers the
instrument's security handshake itself (:func:`client_handshake`: VNC
authentication with the hospital's stored password, or security type None when
the hospital stored none), then offers the browser a server that asks for no
authentication (:func:`serve_handshake`): the password never leaves the broker.

Everything after the handshake is relayed one whole message at a time, so the
broker knows what each one is (:class:`ClientFramer`, :class:`ServerFramer`):

- the browser may ask only for encodings hoshu can frame (:data:`FRAMED`: Raw,
  CopyRect, Zlib, ZRLE and the size, cursor and last-rectangle
  pseudo-encodings); others are struck from its ``SetEncodings``, so the server
  never sends them and the recording is playable by any RFB client;
- a message type or encoding hoshu does not know, a rectangle outside the
  screen, a rectangle or message larger than :data:`MAX_MESSAGE` bytes, or a
  message that stops half-way for :data:`READ_TIMEOUT_S` raises
  :class:`ProtocolError`: the session ends (nothing half-relayed);
- clipboard messages are returned to the caller, which drops or logs them
  (hospital policy).  The browser keeps the Extended Clipboard pseudo-encoding
  (:data:`EXT_CLIPBOARD`, UTF-8 text: :mod:`broker.desktop.extclip`) only when
  the framer is told the clipboard is allowed; an extended clipboard message is
  read whole (at most :data:`MAX_MESSAGE` bytes, like every message) and parsed:
  one that does not parse or inflates past :data:`MAX_MESSAGE` comes back with
  ``refused`` set, for the caller to refuse, and the stream goes on.

Error tree (all :class:`~broker.access.errors.SessionError`, shown to the engineer)::

    DesktopError              a desktop session is refused or ends
    ├── NotVnc                the port does not speak RFB 3.8 (or 3.7)
    ├── UnsupportedSecurity   the server offers no security type hoshu supports
    ├── WrongCredential       the server refused the stored password
    └── ProtocolError         a malformed, unknown or oversized message
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from broker.access.errors import SessionError
from broker.desktop.extclip import Clip, ClipboardRefused, parse

VERSION = b"RFB 003.008\n"
SEC_NONE, SEC_VNC = 1, 2
READ_TIMEOUT_S = 30.0  # a message that stops half-way for this long ends the session
HANDSHAKE_TIMEOUT_S = 10.0
MAX_MESSAGE = 64 * 1024 * 1024  # one framebuffer update or clipboard text, at most
MAX_SIDE = 8192  # pixels of a screen side
MAX_NAME = 4096

RAW, COPYRECT, ZLIB, ZRLE = 0, 1, 6, 16
DESKTOP_SIZE, LAST_RECT, CURSOR, EXT_DESKTOP_SIZE = -223, -224, -239, -308
EXT_CLIPBOARD = -1063131698  # 0xC0A1E5CE: clipboard text as UTF-8 (broker.desktop.extclip)
# pseudo-encodings that carry no data in any message: JPEG quality, compression level
_LEVELS = frozenset(range(-32, -22)) | frozenset(range(-256, -246))
FRAMED: frozenset[int] = (
    frozenset({RAW, COPYRECT, ZLIB, ZRLE, DESKTOP_SIZE, LAST_RECT, CURSOR, EXT_DESKTOP_SIZE})
    | _LEVELS
)

# message types
C_PIXEL_FORMAT, C_ENCODINGS, C_UPDATE_REQUEST, C_KEY, C_POINTER, C_CUT = 0, 2, 3, 4, 5, 6
C_SET_DESKTOP_SIZE = 251
S_UPDATE, S_COLOURS, S_BELL, S_CUT = 0, 1, 2, 3


class DesktopError(SessionError):
    """A desktop session is refused or ends; ``str(exc)`` is shown to the engineer."""

    reason = "desktop_error"


class NotVnc(DesktopError):
    reason = "not_vnc"


class UnsupportedSecurity(DesktopError):
    reason = "unsupported_security"


class WrongCredential(DesktopError):
    reason = "wrong_credential"


class ProtocolError(DesktopError):
    reason = "protocol_error"


Read = Callable[[int], Awaitable[bytes]]


class Stream:
    """Exact reads over a byte source that returns what it has (a socket, a WebSocket)."""

    def __init__(self, read: Read, *, timeout_s: float = READ_TIMEOUT_S) -> None:
        self._read = read
        self._buf = bytearray()
        self._timeout = timeout_s

    async def _fill(self, n: int, timeout_s: float | None) -> None:
        while len(self._buf) < n:
            try:
                chunk = await asyncio.wait_for(self._read(1 << 16), timeout_s)
            except TimeoutError as exc:
                raise ProtocolError("the other side stopped in the middle of a message") from exc
            if not chunk:
                raise EOFError
            self._buf += chunk

    async def first(self) -> int:
        """The next message's type byte; waits as long as it takes (an idle desktop)."""
        await self._fill(1, None)
        t = self._buf[0]
        del self._buf[:1]
        return t

    async def exactly(self, n: int) -> bytes:
        """``n`` bytes of a message already begun (each wait at most the read timeout)."""
        if n > MAX_MESSAGE:
            raise ProtocolError(f"a message of {n} bytes is larger than hoshu relays")
        await self._fill(n, self._timeout)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


@dataclass(frozen=True, slots=True)
class ServerInit:
    width: int
    height: int
    pixel_format: bytes  # 16 bytes
    name: str

    def encode(self) -> bytes:
        name = self.name.encode("utf-8")
        return (
            struct.pack(">HH", self.width, self.height)
            + self.pixel_format
            + struct.pack(">I", len(name))
            + name
        )

    @classmethod
    def decode(cls, data: bytes) -> ServerInit:
        """A ServerInit as :meth:`encode` wrote it (from a recording)."""
        w, h = struct.unpack(">HH", data[:4])
        (n,) = struct.unpack(">I", data[20:24])
        return cls(w, h, data[4:20], data[24 : 24 + n].decode("utf-8", "replace"))

    @property
    def bytes_per_pixel(self) -> int:
        return self.pixel_format[0] // 8


def vnc_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication's answer: the challenge DES-encrypted with the password
    (first 8 bytes, each byte's bits reversed, as every VNC server expects)."""
    key = password.encode("latin-1", "replace")[:8].ljust(8, b"\0")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in key)
    # three equal keys: single DES, as VNC authentication defines it
    enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305  (the RFB protocol's)
    return enc.update(challenge) + enc.finalize()


async def _reason(stream: Stream) -> str:
    (n,) = struct.unpack(">I", await stream.exactly(4))
    return (await stream.exactly(min(n, 1024))).decode("utf-8", "replace")


async def client_handshake(
    stream: Stream, write: Callable[[bytes], None], password: str, name: str
) -> ServerInit:
    """Log in to the instrument's VNC server as its client; its ServerInit.

    With a stored ``password`` only VNC authentication is used; without one only
    security type None (the hospital stored no password: it allows none).
    """
    try:
        ver = await stream.exactly(12)
        if not ver.startswith(b"RFB 003.") or ver[8:11] not in (b"008", b"007", b"889"):
            raise NotVnc(f"{name} does not answer as a VNC server (RFB 3.7 or 3.8)")
        write(VERSION)
        (count,) = await stream.exactly(1)
        if count == 0:
            raise UnsupportedSecurity(f"{name} refused the connection: {await _reason(stream)}")
        offered = set(await stream.exactly(count))
        wanted = SEC_VNC if password else SEC_NONE
        if wanted not in offered:
            kinds = ", ".join(str(t) for t in sorted(offered))
            how = "VNC authentication" if password else "no authentication"
            raise UnsupportedSecurity(
                f"{name} offers security types {kinds}; hoshu needs {how} (type {wanted})"
            )
        write(bytes((wanted,)))
        if wanted == SEC_VNC:
            write(vnc_response(password, await stream.exactly(16)))
        (result,) = struct.unpack(">I", await stream.exactly(4))
        if result != 0:
            why = await _reason(stream)
            raise WrongCredential(
                f"{name} refused the broker's stored VNC password ({why}); "
                "ask the hospital to check it"
            )
        write(b"\x01")  # ClientInit: shared, the hospital's own viewers stay connected
        w, h = struct.unpack(">HH", await stream.exactly(4))
        fmt = await stream.exactly(16)
        (n,) = struct.unpack(">I", await stream.exactly(4))
        if n > MAX_NAME or not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise ProtocolError(f"{name} sent an implausible screen ({w}x{h}, name {n} bytes)")
        if fmt[0] not in (8, 16, 32):
            raise ProtocolError(f"{name} uses {fmt[0]} bits per pixel")
        title = (await stream.exactly(n)).decode("utf-8", "replace")
    except EOFError as exc:
        raise NotVnc(f"{name} closed the connection during the VNC handshake") from exc
    return ServerInit(w, h, fmt, title)


async def serve_handshake(
    stream: Stream, send: Callable[[bytes], Awaitable[None]], init: ServerInit
) -> None:
    """Be the browser's server: RFB 3.8, security type None, then ``init``."""
    await send(VERSION)
    ver = await stream.exactly(12)
    if ver != VERSION:
        raise ProtocolError("the browser does not speak RFB 3.8")
    await send(bytes((1, SEC_NONE)))
    if (await stream.exactly(1)) != bytes((SEC_NONE,)):
        raise ProtocolError("the browser chose a security type hoshu did not offer")
    await send(struct.pack(">I", 0))
    await stream.exactly(1)  # ClientInit (shared or not: the broker decided that already)
    await send(init.encode())


@dataclass
class Screen:
    """What framing needs to know of the session's current screen and pixel format."""

    width: int
    height: int
    bpp: int  # bytes per pixel

    @classmethod
    def of(cls, init: ServerInit) -> Screen:
        return cls(init.width, init.height, init.bytes_per_pixel)


@dataclass
class Message:
    """One whole RFB message; ``cut`` is classic clipboard text (ClientCutText or
    ServerCutText, ISO 8859-1), ``clip`` an extended clipboard message parsed,
    ``refused`` why an extended one that did not parse is not relayed."""

    kind: int
    data: bytes
    cut: bytes | None = None
    input: bool = False  # a key or pointer event (recorded when the policy says so)
    clip: Clip | None = None
    refused: ClipboardRefused | None = None


async def _cut(s: Stream, t: int) -> Message:
    """The rest of a ClientCutText or ServerCutText: classic, or extended (negative
    length: parsed, or refused if it does not parse)."""
    head = await s.exactly(7)
    (n,) = struct.unpack(">i", head[3:])
    body = await s.exactly(abs(n))
    data = bytes((t,)) + head + body
    if n >= 0:
        return Message(t, data, cut=body)
    try:
        return Message(t, data, clip=parse(body, max_text=MAX_MESSAGE))
    except ClipboardRefused as exc:
        return Message(t, data, refused=exc)


@dataclass
class ClientFramer:
    """Browser → instrument messages, whole; ``SetEncodings`` narrowed to :data:`FRAMED`
    (and :data:`EXT_CLIPBOARD` when ``clipboard``: the hospital allows it)."""

    screen: Screen
    encodings: list[int] = field(default_factory=list)
    clipboard: bool = False

    async def next(self, s: Stream) -> Message:
        t = await s.first()
        if t == C_PIXEL_FORMAT:
            body = await s.exactly(19)
            bits = body[3]
            if bits not in (8, 16, 32):
                raise ProtocolError(f"the browser asked for {bits} bits per pixel")
            self.screen.bpp = bits // 8
            return Message(t, bytes((t,)) + body)
        if t == C_ENCODINGS:
            head = await s.exactly(3)
            (n,) = struct.unpack(">H", head[1:])
            asked = struct.unpack(f">{n}i", await s.exactly(4 * n))
            kept = [e for e in asked if e in FRAMED or (self.clipboard and e == EXT_CLIPBOARD)]
            self.encodings = kept
            return Message(t, struct.pack(f">BxH{len(kept)}i", t, len(kept), *kept))
        if t == C_UPDATE_REQUEST:
            return Message(t, bytes((t,)) + await s.exactly(9))
        if t == C_KEY:
            return Message(t, bytes((t,)) + await s.exactly(7), input=True)
        if t == C_POINTER:
            return Message(t, bytes((t,)) + await s.exactly(5), input=True)
        if t == C_CUT:
            return await _cut(s, t)
        if t == C_SET_DESKTOP_SIZE:
            head = await s.exactly(7)
            screens = head[5]
            return Message(t, bytes((t,)) + head + await s.exactly(16 * screens))
        raise ProtocolError(f"the browser sent RFB message type {t}, which hoshu does not relay")


@dataclass
class ServerFramer:
    """Instrument → browser messages, whole, each rectangle checked against the screen."""

    screen: Screen

    async def next(self, s: Stream) -> Message:
        t = await s.first()
        if t == S_UPDATE:
            return Message(t, await self._update(s))
        if t == S_COLOURS:
            head = await s.exactly(5)
            (n,) = struct.unpack(">H", head[3:])
            return Message(t, bytes((t,)) + head + await s.exactly(6 * n))
        if t == S_BELL:
            return Message(t, bytes((t,)))
        if t == S_CUT:
            return await _cut(s, t)
        raise ProtocolError(f"the instrument sent RFB message type {t}, which hoshu does not relay")

    async def _update(self, s: Stream) -> bytes:
        head = await s.exactly(3)
        (count,) = struct.unpack(">H", head[1:])
        parts = [bytes((S_UPDATE,)), head]
        total = 4
        for _ in range(count):
            rect = await s.exactly(12)
            x, y, w, h, enc = struct.unpack(">HHHHi", rect)
            body = await self._rect(s, x, y, w, h, enc)
            total += 12 + len(body)
            if total > MAX_MESSAGE:
                raise ProtocolError("a framebuffer update larger than hoshu relays")
            parts += (rect, body)
            if enc == LAST_RECT:
                break
        return b"".join(parts)

    async def _rect(self, s: Stream, x: int, y: int, w: int, h: int, enc: int) -> bytes:
        sc = self.screen
        if enc == DESKTOP_SIZE:
            self._resize(w, h)
            return b""
        if enc == LAST_RECT:
            return b""
        if enc == EXT_DESKTOP_SIZE:
            head = await s.exactly(4)
            self._resize(w, h)
            return head + await s.exactly(16 * head[0])
        if enc == CURSOR:
            if w > 256 or h > 256:
                raise ProtocolError(f"a {w}x{h} cursor is larger than hoshu relays")
            return await s.exactly(w * h * sc.bpp + (w + 7) // 8 * h)
        if x + w > sc.width or y + h > sc.height:
            raise ProtocolError(
                f"a rectangle at {x},{y} of {w}x{h} lies outside the {sc.width}x{sc.height} screen"
            )
        if enc == RAW:
            return await s.exactly(w * h * sc.bpp)
        if enc == COPYRECT:
            return await s.exactly(4)
        if enc in (ZLIB, ZRLE):
            head = await s.exactly(4)
            (n,) = struct.unpack(">I", head)
            return head + await s.exactly(n)
        raise ProtocolError(f"the instrument sent encoding {enc}, which was not asked for")

    def _resize(self, w: int, h: int) -> None:
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise ProtocolError(f"the instrument resized its screen to {w}x{h}")
        self.screen.width, self.screen.height = w, h
