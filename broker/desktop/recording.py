"""Desktop recordings: the RFB stream the engineer saw, with timestamps.

Format (``<session id>.rfb``, in the recording store beside terminal recordings)::

    b"HOSHU-RFB 1\\n"
    one JSON line: version, session, instrument, hospital_id, started (UTC), input
    records: >I milliseconds since start, 1 byte kind, >I length, data

Kinds: ``S`` a server message as the browser received it (the first is the
ServerInit, then framebuffer updates: changed rectangles; the instrument is asked
for the whole screen every :data:`KEYFRAME_EVERY_S`, so the stream holds keyframes),
``C`` a client key or pointer event (only when the hospital's policy records
input), ``F`` the browser's ``SetPixelFormat`` (how the server's pixels read from
then on: :mod:`broker.desktop.video` needs it), ``X`` a clipboard transfer that was
allowed (its size and SHA-256 are logged too): the cut text message as it was
passed on, classic (ISO 8859-1) or an extended provide (UTF-8, zlib;
:func:`broker.desktop.extclip.text_of` reads either).  Extended clipboard messages
sent to the browser are not ``S`` records: noVNC, view-only as the player is,
cannot read a provide.  Playing the ``S`` records in order
into any RFB client redraws the session; the console does that with noVNC
(:mod:`broker.console.desktop`).

Writes are buffered and flushed at least every second (the session watcher's
timed flush, :meth:`DesktopRecording.flush`); the first flush happens at open,
so a store that cannot be written refuses the session before it starts, and a
later failure raises :class:`~broker.live.errors.RecordingError` and ends it.
The size and SHA-256 of the whole file go into ``session.ended``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from audit.recstore import RecordingFileError
from broker.live.errors import RecordingError, RecordingLimit
from broker.live.recorder import RecordingSink

MAGIC = b"HOSHU-RFB 1\n"
KEYFRAME_EVERY_S = 10.0
_HEAD = struct.Struct(">IcI")
_FLUSH_BYTES = 1 << 20
FLUSH_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    size: int
    sha256: str


class DesktopRecording:
    """One open desktop recording (not thread-safe; one per session)."""

    def __init__(
        self,
        name: str,
        sink: RecordingSink,
        max_bytes: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._sink = sink
        self._max = max_bytes
        self._mono = monotonic
        self._start = monotonic()
        self._last_flush = self._start
        self._buf: list[bytes] = []
        self._pending = 0
        self._size = 0
        self._hash = hashlib.sha256()
        self._failed: RecordingError | None = None
        self.closed = False

    @classmethod
    def open(
        cls,
        name: str,
        sink_for: Callable[[str], RecordingSink],
        header: dict[str, Any],
        *,
        max_bytes: int,
    ) -> DesktopRecording:
        """Create the recording and write its header, or raise RecordingError (refused)."""
        try:
            sink = sink_for(name)
        except (OSError, RecordingFileError) as exc:
            raise RecordingError(
                f"session refused: the recording cannot be written ({exc})"
            ) from exc
        rec = cls(name, sink, max_bytes)
        rec._append(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
        rec.flush()
        return rec

    def _append(self, data: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        if self._size + self._pending + len(data) > self._max:
            self.flush()
            self._failed = RecordingLimit(
                f"the recording reached its limit of {self._max / (1 << 20):g} MiB; "
                "the session was closed"
            )
            raise self._failed
        self._buf.append(data)
        self._pending += len(data)
        now = self._mono()
        if self._pending >= _FLUSH_BYTES or now - self._last_flush >= FLUSH_EVERY_S:
            self.flush()

    @property
    def size(self) -> int:
        """Bytes written to the store so far (what a flush has sent)."""
        return self._size

    def record(self, kind: bytes, data: bytes) -> None:
        """One record of ``kind`` (``S``, ``C`` or ``X``) at the time now."""
        ms = int((self._mono() - self._start) * 1000)
        self._append(_HEAD.pack(ms, kind, len(data)) + data)

    def flush(self) -> None:
        """Write what is buffered; raises RecordingError (and stays failed) when it cannot."""
        if self._failed is not None:
            raise self._failed
        self._last_flush = self._mono()
        if not self._buf:
            check = getattr(self._sink, "check", None)
            if check is not None:
                try:
                    check()
                except RecordingFileError as exc:
                    self._failed = RecordingError(
                        f"session ended: the recording could not be written ({exc})"
                    )
                    raise self._failed from exc
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._pending = 0
        try:
            view = memoryview(data)
            while view:
                n = self._sink.write(view)
                if not n:
                    raise OSError("short write")
                view = view[n:]
        except (OSError, RecordingFileError) as exc:
            self._failed = RecordingError(
                f"session ended: the recording could not be written ({exc})"
            )
            raise self._failed from exc
        self._size += len(data)
        self._hash.update(data)

    def close(self) -> Summary:
        """Flush and close; the summary holds the final size and SHA-256."""
        if not self.closed:
            self.closed = True
            try:
                if self._failed is None:
                    self.flush()
            finally:
                try:
                    self._sink.close()
                except (OSError, RecordingFileError) as exc:
                    if self._failed is None:
                        self._failed = RecordingError(
                            f"session ended: the recording could not be stored ({exc})"
                        )
                        raise self._failed from exc
        return Summary(self.name, self._size, self._hash.hexdigest())


def read_records(data: bytes) -> tuple[dict[str, Any], Iterator[tuple[int, bytes, bytes]]]:
    """A recording's header and its records ``(ms, kind, data)``; ValueError if malformed."""
    if not data.startswith(MAGIC):
        raise ValueError("not a hoshu desktop recording")
    end = data.index(b"\n", len(MAGIC))
    header: dict[str, Any] = json.loads(data[len(MAGIC) : end])

    def records() -> Iterator[tuple[int, bytes, bytes]]:
        pos = end + 1
        while pos + _HEAD.size <= len(data):
            ms, kind, n = _HEAD.unpack_from(data, pos)
            pos += _HEAD.size
            if pos + n > len(data):
                raise ValueError("the recording ends inside a record")
            yield ms, kind, data[pos : pos + n]
            pos += n

    return header, records()
