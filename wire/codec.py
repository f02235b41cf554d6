"""JSON-lines encoding of control messages, with a size limit both ways.

Pure functions, no I/O: the transports feed bytes to :class:`LineFramer` and
hand each complete line to :func:`decode`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from wire.errors import MalformedMessage, MessageTooLarge, UnknownMessageType
from wire.models import MESSAGE_ADAPTER, MESSAGE_TYPES, Message
from wire.names import MAX_MESSAGE_BYTES


def encode(message: Message, *, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """One JSON line for ``message``; raises :class:`MessageTooLarge` past ``limit``."""
    line = message.model_dump_json().encode() + b"\n"
    if len(line) > limit:
        raise MessageTooLarge(f"{message.type} message is {len(line)} bytes (limit {limit})")
    return line


def decode(line: bytes, *, limit: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse and validate one line.

    Raises :class:`MessageTooLarge`, :class:`MalformedMessage` (with a short
    reason, never the raw input) or :class:`UnknownMessageType`.
    """
    if len(line) > limit:
        raise MessageTooLarge(f"message of {len(line)} bytes (limit {limit})")
    try:
        raw: Any = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage("message is not JSON") from exc
    except RecursionError as exc:
        raise MalformedMessage("message is nested too deeply") from exc
    if not isinstance(raw, dict):
        raise MalformedMessage("message is not a JSON object")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise MalformedMessage("message has no type")
    if kind not in MESSAGE_TYPES:
        raise UnknownMessageType(f"unknown message type {kind[:40]!r}")
    try:
        return MESSAGE_ADAPTER.validate_python(raw)
    except RecursionError as exc:
        raise MalformedMessage(f"{kind} message is nested too deeply") from exc
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise MalformedMessage(f"{kind} message: {where or 'message'}: {first['msg']}") from exc


class LineFramer:
    """Split a byte stream into lines of at most ``limit`` bytes.

    :meth:`feed` returns complete lines (without the newline) and, in their
    place, a :class:`MessageTooLarge` for each line that grew past the limit;
    the rest of such a line is discarded up to its newline, so the stream
    resynchronises and memory stays bounded.
    """

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | MessageTooLarge]:
        out: list[bytes | MessageTooLarge] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            chunk = data[start:] if nl < 0 else data[start:nl]
            if not self._discarding:
                if len(self._buf) + len(chunk) + 1 > self._limit:
                    out.append(MessageTooLarge(f"control line longer than {self._limit} bytes"))
                    self._buf.clear()
                    self._discarding = True
                else:
                    self._buf += chunk
            if nl < 0:
                return out
            if not self._discarding and self._buf.strip():
                out.append(bytes(self._buf))
            self._buf.clear()
            self._discarding = False
            start = nl + 1
