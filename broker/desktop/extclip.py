"""RFB's Extended Clipboard (pseudo-encoding 0xC0A1E5CE): clipboard text as UTF-8.

A ClientCutText or ServerCutText whose length is negative is an extended clipboard
message of ``abs(length)`` bytes (the community RFB specification, "Extended
Clipboard Pseudo-Encoding"): a ``U32`` of flags (format bits 0-15: text, rtf,
html, dib, files; action bits 24-28: caps, request, peek, notify, provide), then

- caps: one ``U32`` size for each format bit set (the largest unsolicited
  provide the sender takes);
- request, peek, notify: nothing more;
- provide: a zlib stream holding a ``U32`` size and that many bytes for each
  format bit set, in bit order.  Text is UTF-8, line ends CR LF, followed by a
  terminating NUL.

hoshu relays text only.  :func:`parse` reads a whole message and keeps only what
concerns text: what the other side is told (:func:`encode`) never names another
format, so neither side offers rtf, html, images or files to the other.  The text
of a provide is kept as the user sees it (line ends LF, no NUL); it is encoded
again on the way out.  Each message is checked whole: a size that does not add up,
more than one action, an unknown action, text that is not UTF-8 or has no NUL is
:class:`ClipboardRefused` ``clipboard_malformed``; a provide that inflates past
``max_text`` bytes is ``clipboard_too_large`` (the zlib stream is inflated at most
that far, so a small message that would inflate to gigabytes costs no more).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

TEXT, RTF, HTML, DIB, FILES = 1, 1 << 1, 1 << 2, 1 << 3, 1 << 4
CAPS, REQUEST, PEEK, NOTIFY, PROVIDE = 1 << 24, 1 << 25, 1 << 26, 1 << 27, 1 << 28
ACTIONS = CAPS | REQUEST | PEEK | NOTIFY | PROVIDE
FORMAT_BITS = 0xFFFF
MAX_TEXT = 64 * 1024 * 1024  # one clipboard text, at most (the RFB relay's bound)
_ACTION_BITS = 0xFF000000


class ClipboardRefused(Exception):
    """An extended clipboard message hoshu does not relay; ``reason`` is the
    ``file.refused`` reason (``clipboard_malformed`` or ``clipboard_too_large``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Clip:
    """One extended clipboard message as far as text goes.

    ``action`` is the one action (:data:`CAPS` ... :data:`PROVIDE`); ``text`` is
    whether text is among its formats.  Caps: ``actions`` the sender takes and
    ``text_size`` (its largest unsolicited text).  Provide: ``data`` is the text,
    line ends LF, no NUL (None: the sender provided no text)."""

    action: int
    text: bool = False
    actions: int = 0
    text_size: int = 0
    data: str | None = None

    @property
    def utf8(self) -> bytes | None:
        """The provided text in UTF-8, as the user sees it (size and SHA-256 are of it)."""
        return None if self.data is None else self.data.encode("utf-8")


def _malformed(why: str) -> ClipboardRefused:
    return ClipboardRefused("clipboard_malformed", f"a malformed extended clipboard message: {why}")


class _Inflate:
    """Exact reads from a zlib stream, never inflating more than ``budget`` bytes."""

    def __init__(self, data: bytes, budget: int) -> None:
        self._z = zlib.decompressobj()
        self._left = data
        self._budget = budget

    def take(self, n: int) -> bytes:
        if n > self._budget:
            raise ClipboardRefused(
                "clipboard_too_large", "an extended clipboard message inflates past the bound"
            )
        out = bytearray()
        try:
            while len(out) < n:
                chunk = self._z.decompress(self._left, n - len(out))
                self._left = self._z.unconsumed_tail
                out += chunk
                if not chunk:
                    raise _malformed("its zlib stream ends early")
        except zlib.error as exc:
            raise _malformed("its zlib stream does not inflate") from exc
        self._budget -= n
        return bytes(out)

    def more(self) -> bool:
        """Whether the stream holds data past what was read."""
        try:
            return bool(self._z.decompress(self._left, 1))
        except zlib.error as exc:
            raise _malformed("its zlib stream does not inflate") from exc


def parse(payload: bytes, *, max_text: int = MAX_TEXT) -> Clip:
    """The extended clipboard message ``payload`` (the ``abs(length)`` bytes after the
    cut text's header); raises :class:`ClipboardRefused`."""
    if len(payload) < 4:
        raise _malformed("shorter than its flags")
    (flags,) = struct.unpack_from(">I", payload)
    formats = flags & FORMAT_BITS
    actions = flags & _ACTION_BITS
    if actions & ~ACTIONS:
        raise _malformed(f"unknown action bits {actions & ~ACTIONS:#x}")
    text = bool(formats & TEXT)
    count = bin(formats).count("1")
    if actions & CAPS:
        if len(payload) != 4 + 4 * count:
            raise _malformed(f"caps of {count} formats in {len(payload)} bytes")
        size = struct.unpack_from(">I", payload, 4)[0] if text else 0
        return Clip(CAPS, text, actions, min(size, max_text))
    if actions not in (REQUEST, PEEK, NOTIFY, PROVIDE):
        raise _malformed(f"actions {actions:#x}: one action is allowed")
    if actions != PROVIDE:
        if len(payload) != 4:
            raise _malformed(f"{len(payload)} bytes where 4 are")
        return Clip(actions, text)
    stream = _Inflate(payload[4:], max_text + 1 + 4 * count)
    data: str | None = None
    for bit in range(16):
        if not formats & (1 << bit):
            continue
        (n,) = struct.unpack(">I", stream.take(4))
        if bit == 0 and n > max_text + 1:
            raise ClipboardRefused(
                "clipboard_too_large", f"an extended clipboard text of {n} bytes is too large"
            )
        body = stream.take(n)
        if bit == 0:
            data = _text(body)
    if stream.more():
        raise _malformed("data past its last format")
    return Clip(PROVIDE, text, data=data)


def _text(body: bytes) -> str:
    """A provided text: UTF-8 ending in its NUL, line ends CR LF (LF or CR taken too)."""
    if not body.endswith(b"\0") or b"\0" in body[:-1]:
        raise _malformed("its text does not end with its one NUL")
    try:
        text = body[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed("its text is not UTF-8") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def encode(clip: Clip) -> bytes:
    """The payload of ``clip`` (text only: no other format is named)."""
    fmt = TEXT if clip.text or clip.data is not None else 0
    if clip.action == CAPS:
        sizes = struct.pack(">I", clip.text_size) if fmt else b""
        return struct.pack(">I", (clip.actions & ACTIONS) | fmt) + sizes
    if clip.action != PROVIDE:
        return struct.pack(">I", clip.action | fmt)
    if clip.data is None:
        return struct.pack(">I", PROVIDE)
    body = clip.data.replace("\n", "\r\n").encode("utf-8") + b"\0"
    z = zlib.compressobj()
    packed = z.compress(struct.pack(">I", len(body)) + body) + z.flush(zlib.Z_SYNC_FLUSH)
    return struct.pack(">I", PROVIDE | TEXT) + packed


def message(kind: int, clip: Clip) -> bytes:
    """The whole cut text message (``kind``: ClientCutText 6 or ServerCutText 3)."""
    payload = encode(clip)
    return struct.pack(">Bxxxi", kind, -len(payload)) + payload


def provide(text: str) -> Clip:
    return Clip(PROVIDE, True, data=text)


def text_of(record: bytes) -> str | None:
    """The text a recorded cut text message (a desktop recording's ``X`` record)
    carries: classic ones are ISO 8859-1, extended provides UTF-8 (line ends LF);
    None for an extended message without text (caps, request, peek, notify)."""
    (n,) = struct.unpack_from(">i", record, 4)
    if n >= 0:
        return record[8 : 8 + n].decode("latin-1")
    return parse(record[8:]).data


__all__ = [
    "ACTIONS",
    "CAPS",
    "NOTIFY",
    "PEEK",
    "PROVIDE",
    "REQUEST",
    "TEXT",
    "Clip",
    "ClipboardRefused",
    "encode",
    "message",
    "parse",
    "provide",
    "text_of",
]
