"""The RDP clipboard: the ``cliprdr`` static virtual channel (MS-RDPECLIP), plain text only.

:func:`broker.desktop.rdpclient.connect` joins this channel only when the hospital's
policy allows the clipboard (``clipboard=True``); otherwise the channel is not even
offered to the instrument, which then has no way to announce or ask for clipboard
data.  Built on aardwolf's :class:`~aardwolf.channels.Channel` (how a static channel
is joined, given its data and sends it); the clipboard PDUs are parsed and built
here, each length checked, because aardwolf's own cliprdr parsers can loop forever
on a cut-short format name and tear the whole connection down on a bad one.

What crosses, and how:

- **Browser → instrument.** :meth:`Cliprdr.offer` (the browser's ClientCutText, which
  the desktop gate has already allowed, logged and recorded) makes the text the
  broker's clipboard: a Format List PDU with ``CF_UNICODETEXT`` tells the instrument,
  and its Format Data Request for that format is answered with the text (UTF-16LE,
  line ends CR LF, NUL-terminated).  Anything else asked for is answered with a
  failure.  Text offered before the instrument's channel is ready goes with the
  first Format List.
- **Instrument → browser.** A Format List PDU naming ``CF_UNICODETEXT`` is answered
  at once with a Format Data Request; the text that comes back (line ends LF) is
  :class:`ClipText` in :attr:`Cliprdr.events`, which the bridge turns into
  ServerCutText.  A request not answered within :data:`REPLY_TIMEOUT_S` is given up
  (:class:`ClipRefused` ``clipboard_timeout``); an answer after that is dropped.
- **Not crossing.** Files (File Contents Requests are answered with a failure),
  images and every other format; no temporary directory, no clipboard locking.

**Bounds.** One clipboard PDU (all its channel chunks) is at most :data:`MAX_PDU`
bytes: the text of :data:`~broker.desktop.rfb.MAX_MESSAGE` UTF-16 code units, the
VNC path's bound on one clipboard text.  A longer one is refused as soon as its
first chunk says how long it is (``clipboard_too_large``) and its other chunks are
skipped.  A PDU that does not parse (a length that does not add up, a cut-short
format name, an odd-length text, chunks out of order) is refused
(``clipboard_malformed``, its size and SHA-256); either way the channel goes on and
nothing else of the session ends.  Refusals are :class:`ClipRefused` events, which
the desktop gate writes as ``file.refused``; no clipboard text is ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from dataclasses import dataclass
from typing import Any

from aardwolf.channels import Channel
from aardwolf.protocol.T124.userdata.constants import ChannelOption

from broker.desktop.rfb import MAX_MESSAGE
from broker.desktop.vchannel import (
    ChunkError,
    ChunkJoiner,
    PduTooLarge,
    chunks,
)

log = logging.getLogger(__name__)

NAME = "cliprdr"
MAX_PDU = 8 + 2 * MAX_MESSAGE + 2  # header, MAX_MESSAGE UTF-16 code units, the NUL
REPLY_TIMEOUT_S = 10.0  # the instrument's text must follow our request this soon
MAX_FORMATS = 1024  # formats one Format List may name
MAX_EVENTS = 64  # clipboard events waiting for the bridge; more are dropped (logged)
CF_UNICODETEXT = 13
# channel PDU header flags (MS-RDPBCGR 2.2.6.1.1)
# clipboard PDU types and flags (MS-RDPECLIP 2.2.1)
MONITOR_READY, FORMAT_LIST, FORMAT_LIST_RESPONSE = 1, 2, 3
DATA_REQUEST, DATA_RESPONSE, CLIP_CAPS = 4, 5, 7
FILECONTENTS_REQUEST, FILECONTENTS_RESPONSE = 8, 9
RESPONSE_OK, RESPONSE_FAIL, ASCII_NAMES = 0x1, 0x2, 0x4
LONG_FORMAT_NAMES = 0x2  # CB_USE_LONG_FORMAT_NAMES, the one general flag asked for
_SHORT_NAME = 36  # a short format name entry: id and 32 bytes of name


@dataclass(frozen=True, slots=True)
class ClipText:
    """Text the instrument's clipboard holds, as it arrived (line ends LF)."""

    text: str


@dataclass(frozen=True, slots=True)
class ClipRefused:
    """A clipboard PDU of the instrument that was refused; ``sha256`` is of its bytes
    (None when they were not kept: too large)."""

    reason: str
    message: str
    size: int
    sha256: str | None


ClipEvent = ClipText | ClipRefused


class _Malformed(Exception):
    pass


def pdu(kind: int, flags: int = 0, body: bytes = b"") -> bytes:
    """One clipboard PDU: its header (type, flags, length) and ``body``."""
    return struct.pack("<HHI", kind, flags, len(body)) + body


def to_instrument(text: str) -> bytes:
    """``CF_UNICODETEXT`` data of ``text``: CR LF line ends, UTF-16LE, NUL-terminated."""
    crlf = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return crlf.encode("utf-16-le", "replace") + b"\0\0"


def from_instrument(data: bytes) -> str:
    """The text of ``CF_UNICODETEXT`` data (up to its NUL; line ends LF)."""
    if len(data) % 2:
        raise _Malformed("clipboard text of an odd number of bytes")
    text = data.decode("utf-16-le", "replace").split("\0", 1)[0]
    return text.replace("\r\n", "\n")


def format_ids(body: bytes, long_names: bool) -> list[int]:
    """The format ids a Format List PDU names (short or long format names)."""
    ids: list[int] = []
    if not long_names:
        if len(body) % _SHORT_NAME:
            raise _Malformed("a short format list of a length that is no multiple of 36")
        ids = [struct.unpack_from("<I", body, at)[0] for at in range(0, len(body), _SHORT_NAME)]
    else:
        at = 0
        while at < len(body):
            if len(body) - at < 6:
                raise _Malformed("a long format name cut short")
            (fid,) = struct.unpack_from("<I", body, at)
            end = at + 4
            while end + 1 < len(body) and body[end : end + 2] != b"\0\0":
                end += 2
            if end + 1 >= len(body):
                raise _Malformed("a long format name without its NUL")
            ids.append(fid)
            at = end + 2
            if len(ids) > MAX_FORMATS:
                break
    if len(ids) > MAX_FORMATS:
        raise _Malformed(f"a format list of more than {MAX_FORMATS} formats")
    return ids


class Cliprdr(Channel):  # type: ignore[misc]
    """The ``cliprdr`` channel of one RDP connection (aardwolf makes it from the
    connection's settings, which then hold it as ``hoshu_cliprdr``)."""

    name = NAME

    def __init__(self, iosettings: Any) -> None:
        super().__init__(NAME, ChannelOption.INITIALIZED | ChannelOption.SHOW_PROTOCOL)
        iosettings.hoshu_cliprdr = self
        self.events: asyncio.Queue[ClipEvent | None] = asyncio.Queue(MAX_EVENTS + 1)
        self.ready = False  # the instrument's Monitor Ready came: it takes Format Lists
        self.long_names = False
        self._server_flags = 0
        self._text: bytes | None = None  # what the broker's clipboard holds (UTF-16LE)
        self._asked: asyncio.TimerHandle | None = None  # a Format Data Request under way
        self._chunks = ChunkJoiner(MAX_PDU)
        self._lock = asyncio.Lock()

    # --- aardwolf's side ------------------------------------------------------------

    async def stop(self) -> tuple[bool, None]:
        self._cancel_ask()
        self._put(None)
        return True, None

    async def process_channel_data(self, data: bytes) -> None:
        """One channel chunk from the instrument.  Never raises for what the instrument
        sent: a clipboard PDU that does not parse is refused, the connection goes on."""
        whole: bytes | None = None
        try:
            whole = self._chunks.feed(bytes(data))
            if whole is not None:
                await self._handle(whole)
        except PduTooLarge as big:  # its other chunks are skipped
            self._refuse(
                "clipboard_too_large",
                f"a clipboard PDU of {big.total} bytes (at most {MAX_PDU})",
                None,
                big.total,
            )
        except (ChunkError, _Malformed, struct.error, ValueError, IndexError) as exc:
            if whole is None:  # its other chunks are not PDUs of their own
                bad = self._chunks.drop(bytes(data))
            else:
                bad = whole
                if whole[:2] == struct.pack("<H", DATA_RESPONSE):
                    self._cancel_ask()  # the answer came, it did not parse
            self._refuse("clipboard_malformed", f"a clipboard PDU that does not parse: {exc}", bad)

    # --- what the bridge uses ---------------------------------------------------------

    async def offer(self, text: str) -> None:
        """Make ``text`` the broker's clipboard (the browser copied it); the instrument
        is told at once if its channel is ready, else when it is."""
        self._text = to_instrument(text)
        if self.ready:
            await self._send(pdu(FORMAT_LIST, 0, self._text_format()))

    # --- the protocol ---------------------------------------------------------------

    async def _handle(self, whole: bytes) -> None:
        if len(whole) < 8:
            raise _Malformed("a clipboard PDU shorter than its header")
        kind, flags, length = struct.unpack_from("<HHI", whole)
        if 8 + length > len(whole):
            raise _Malformed("a clipboard PDU shorter than its header says")
        body = whole[8 : 8 + length]
        if kind == CLIP_CAPS:
            self._server_flags = _general_flags(body)
        elif kind == MONITOR_READY:
            await self._start()
        elif kind == FORMAT_LIST:
            long_names = self.long_names and not flags & ASCII_NAMES
            ids = format_ids(body, long_names)
            await self._send(pdu(FORMAT_LIST_RESPONSE, RESPONSE_OK))
            self._cancel_ask()
            if CF_UNICODETEXT in ids:
                loop = asyncio.get_running_loop()
                self._asked = loop.call_later(REPLY_TIMEOUT_S, self._expired)
                await self._send(pdu(DATA_REQUEST, 0, struct.pack("<I", CF_UNICODETEXT)))
        elif kind == DATA_RESPONSE:
            if self._asked is None:
                log.info("clipboard data the broker did not ask for (or too late) is dropped")
                return
            self._cancel_ask()
            if flags & RESPONSE_OK:
                self._put(ClipText(from_instrument(body)))
            else:
                log.info("the instrument did not give the clipboard text it announced")
        elif kind == DATA_REQUEST:
            if len(body) < 4:
                raise _Malformed("a Format Data Request without its format")
            (fid,) = struct.unpack_from("<I", body)
            if fid == CF_UNICODETEXT and self._text is not None:
                await self._send(pdu(DATA_RESPONSE, RESPONSE_OK, self._text))
            else:
                await self._send(pdu(DATA_RESPONSE, RESPONSE_FAIL))
        elif kind == FILECONTENTS_REQUEST:
            if len(body) < 4:
                raise _Malformed("a File Contents Request without its stream id")
            await self._send(pdu(FILECONTENTS_RESPONSE, RESPONSE_FAIL, body[:4]))
        # Format List Responses, lock and unlock PDUs: nothing to do

    async def _start(self) -> None:
        """The instrument is ready: our capabilities, then our Format List."""
        self.long_names = bool(self._server_flags & LONG_FORMAT_NAMES)
        general = struct.pack("<HHII", 1, 12, 2, LONG_FORMAT_NAMES)
        await self._send(pdu(CLIP_CAPS, 0, struct.pack("<HH", 1, 0) + general))
        self.ready = True  # text offered from now on is announced by offer()
        formats = self._text_format() if self._text is not None else b""
        await self._send(pdu(FORMAT_LIST, 0, formats))

    def _text_format(self) -> bytes:
        if self.long_names:
            return struct.pack("<I", CF_UNICODETEXT) + b"\0\0"
        return struct.pack("<I", CF_UNICODETEXT) + bytes(32)

    async def _send(self, data: bytes) -> None:
        """One clipboard PDU to the instrument, in chunks (one PDU at a time)."""
        async with self._lock:
            for chunk in chunks(data):
                await self.send_channel_data(chunk, None, None, None, False)

    def _expired(self) -> None:
        self._asked = None
        self._refuse(
            "clipboard_timeout",
            f"the instrument did not send the clipboard text it announced within "
            f"{REPLY_TIMEOUT_S:.0f} s",
            b"",
        )

    def _cancel_ask(self) -> None:
        if self._asked is not None:
            self._asked.cancel()
            self._asked = None

    def _refuse(self, reason: str, message: str, data: bytes | None, size: int = 0) -> None:
        if data is not None:
            size = len(data)
        sha = hashlib.sha256(data).hexdigest() if data is not None else None
        log.info("clipboard PDU refused (%s): %s", reason, message)
        self._put(ClipRefused(reason, message, size, sha))

    def _put(self, event: ClipEvent | None) -> None:
        if event is None and self.events.full():
            self.events.get_nowait()  # the end must get through
        if self.events.qsize() >= MAX_EVENTS and event is not None:
            log.warning("clipboard events are not taken: one is dropped")
            return
        self.events.put_nowait(event)


def _general_flags(body: bytes) -> int:
    """The general capability flags of a Clipboard Capabilities PDU (0 if none)."""
    if len(body) < 4:
        raise _Malformed("a capabilities PDU cut short")
    (count,) = struct.unpack_from("<H", body)
    at = 4
    for _ in range(count):
        if len(body) - at < 4:
            raise _Malformed("a capability set cut short")
        kind, length = struct.unpack_from("<HH", body, at)
        if length < 4 or at + length > len(body):
            raise _Malformed("a capability set of a bad length")
        if kind == 1 and length >= 12:
            return int(struct.unpack_from("<I", body, at + 8)[0])
        at += length
    return 0


__all__ = [
    "MAX_PDU",
    "NAME",
    "REPLY_TIMEOUT_S",
    "ClipEvent",
    "ClipRefused",
    "ClipText",
    "Cliprdr",
    "format_ids",
    "from_instrument",
    "pdu",
    "to_instrument",
]
