"""Session recordings in asciicast v2 (what ``asciinema play`` plays).

One file per session: a JSON header line, then one ``[time, code, data]`` line
per event: ``"o"`` output from the instrument, ``"i"`` input from the engineer,
``"r"`` a terminal resize (``"COLSxROWS"``); in exec recordings, ``"O"``/``"I"``
carry output/input bytes that are not UTF-8, base64-encoded (players skip them;
the bytes of both streams can be put back together exactly).  Writes are
buffered (at most 256 KiB, and never longer than :data:`FLUSH_EVERY_S`: each event past that age
flushes, and the session watcher flushes quiet sessions); the size and SHA-256
of the finished file go into the session's end event.  Where the bytes go is the
opener's choice: a file in the recordings directory (:func:`default_opener`), or a
writer of a recording store (:func:`store_opener`: Azure Blob storage, appended in
the background; a failed append surfaces at the next write or timed flush).

Limits: a recording holds at most ``max_bytes`` (the broker setting
``recording_max_mib``); the event that would pass it raises
:class:`~broker.frontdoor.errors.RecordingLimit` and the session ends with reason
``recording_limit``.  Input (what the engineer types, passwords at ``sudo``
prompts included) is recorded only when ``record_input`` is set: for shells
that is the hospital's policy ``record_input`` (off by default; the output
shows the echoed commands anyway).

Fail closed: :meth:`Recording.open` writes and flushes the header, so an
unwritable directory refuses the session before it starts; any later write
failure raises :class:`~broker.frontdoor.errors.RecordingError` and the relay ends
the session.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Protocol

from audit.recstore import RecordingFileError, RecordingStore
from broker.live.errors import RecordingError, RecordingLimit

_FLUSH_BYTES = 256 * 1024
FLUSH_EVERY_S = 1.0
DEFAULT_MAX_BYTES = 512 * 1024 * 1024

# JSON string escaping done on bytes, for ASCII data (nearly all terminal
# output): the characters json.encoder.encode_basestring_ascii escapes (controls,
# DEL, quote, backslash) are found in one C pass and replaced one kind at a time;
# the rest is copied as it is.  The result is byte for byte what that function
# gives, at a third of its cost on typical output.
_SPECIAL = frozenset(range(0x20)) | {0x7F, ord('"'), ord("\\")}
_NOT_SPECIAL = bytes(b for b in range(256) if b not in _SPECIAL)
_ESCAPES = {b: json.dumps(chr(b)).encode("ascii")[1:-1] for b in _SPECIAL}
_BACKSLASH = ord("\\")
_MAX_REPLACES = 4


def json_escape_ascii(data: bytes) -> bytes:
    """ASCII ``data`` as the inside of a JSON string literal (ASCII only)."""
    found = set(data.translate(None, _NOT_SPECIAL))
    if len(found) > _MAX_REPLACES:  # many kinds (colourful output): one pass in C
        return _escape_text(data.decode("ascii"))
    if _BACKSLASH in found:  # first: the other escapes add backslashes
        found.discard(_BACKSLASH)
        data = data.replace(b"\\", b"\\\\")
    for b in found:
        data = data.replace(bytes((b,)), _ESCAPES[b])
    return data


def _escape_text(text: str) -> bytes:
    return bytes(encode_basestring_ascii(text)[1:-1], "ascii")


@dataclass(frozen=True, slots=True)
class RecordingSummary:
    path: Path
    size: int
    sha256: str


class RecordingSink(Protocol):
    """Where an open recording's bytes go: a file, or a store's writer
    (:class:`audit.recstore.RecordingWriter`; its ``check`` raises an earlier failure)."""

    def write(self, data: memoryview, /) -> int | None: ...

    def close(self) -> None: ...


Opener = Callable[[Path], RecordingSink]


def store_opener(store: RecordingStore) -> Opener:
    """Recordings created in ``store`` (files, or Azure Blob storage), named as their file."""
    return lambda path: store.create(path.name)


def default_opener(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    return os.fdopen(fd, "wb", buffering=0)


class Recording:
    """An open asciicast v2 recording.  Not thread-safe; one per session."""

    def __init__(
        self,
        path: Path,
        fh: RecordingSink,
        monotonic: Callable[[], float],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        record_input: bool = True,
    ) -> None:
        self.path = path
        self._fh = fh
        self._mono = monotonic
        self._start = monotonic()
        self._last_flush = self._start
        self._max = max_bytes
        self.record_input = record_input
        # exec sessions: bytes that are not UTF-8 go in as base64 ("O"/"I"), so the
        # recording holds every byte of stdin and stdout exactly
        self.exact = False
        self._buf: list[bytes] = []
        self._pending = 0
        self._size = 0
        self._hash = hashlib.sha256()
        self._dec = {
            "o": codecs.getincrementaldecoder("utf-8")("replace"),
            "i": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self._partial = {"o": False, "i": False}  # a UTF-8 character left unfinished
        self._failed: RecordingError | None = None
        self.closed = False

    @classmethod
    def open(
        cls,
        directory: Path,
        name: str,
        *,
        width: int,
        height: int,
        env: dict[str, str],
        title: str,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        opener: Opener = default_opener,
        max_bytes: int = DEFAULT_MAX_BYTES,
        record_input: bool = True,
    ) -> Recording:
        """Create ``<directory>/<name>.cast`` and write its header, or raise RecordingError."""
        path = directory / f"{name}.cast"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fh = opener(path)
        except (OSError, RecordingFileError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise RecordingError(
                f"session refused: the recording cannot be written ({why})"
            ) from exc
        rec = cls(path, fh, monotonic, max_bytes=max_bytes, record_input=record_input)
        header = {
            "version": 2,
            "width": max(1, width),
            "height": max(1, height),
            "timestamp": int(wall_clock()),
            "env": env,
            "title": title,
        }
        rec._append(json.dumps(header, ensure_ascii=False).encode() + b"\n")
        rec.flush()
        return rec

    def _append(self, line: bytes) -> None:
        self._check_room(len(line))
        self._buf.append(line)
        self._pending += len(line)
        if self._pending >= _FLUSH_BYTES:
            self.flush()

    def _check_room(self, n: int) -> None:
        """Refuse (for good) the event that would take the file past ``max_bytes``."""
        if self._size + self._pending + n <= self._max:
            return
        self.flush()  # what came before the limit is kept
        mib = self._max / (1024 * 1024)
        self._failed = RecordingLimit(
            f"the recording reached its limit of {mib:g} MiB; the session was closed"
        )
        raise self._failed

    def _event(self, code: str, text: str) -> None:
        self._data_event(code, _escape_text(text))

    def _data_event(self, code: str, escaped: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        now = self._mono()
        t = round(now - self._start, 6)
        head = f'[{t!r}, "{code}", "'.encode("ascii")
        self._check_room(len(head) + len(escaped) + 3)
        self._buf += (head, escaped, b'"]\n')
        self._pending += len(head) + len(escaped) + 3
        if self._pending >= _FLUSH_BYTES or now - self._last_flush >= FLUSH_EVERY_S:
            self._last_flush = now
            self.flush()

    def _data(self, code: str, data: bytes) -> None:
        """Record ``data``: as it is when it is ASCII (the common case), else decoded
        incrementally (a character split across reads is kept whole, invalid bytes
        become U+FFFD).  Either way the line is ASCII-only JSON.  With ``exact``, a
        chunk that is not UTF-8 is written base64-encoded under the upper-case code,
        so the bytes can be recovered exactly."""
        if self.exact and data and not data.isascii():
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                self._data_event(code.upper(), base64.b64encode(data))
                return
            self._data_event(code, _escape_text(text))
            return
        if not self._partial[code] and data.isascii():
            if data:
                self._data_event(code, json_escape_ascii(data))
            return
        dec = self._dec[code]
        text = dec.decode(data)
        self._partial[code] = bool(dec.getstate()[0])
        if text:
            self._data_event(code, _escape_text(text))

    def elapsed(self) -> float:
        """Seconds since the recording began: the time its next event would carry."""
        return round(self._mono() - self._start, 6)

    def output(self, data: bytes) -> None:
        self._data("o", data)

    def input(self, data: bytes) -> None:
        if self.record_input:
            self._data("i", data)

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{width}x{height}")

    def flush(self) -> None:
        """Write buffered events to disk; raises RecordingError (and stays failed)."""
        if self._failed is not None:
            raise self._failed
        if not self._buf:
            self._check_sink()  # a store appending in the background may have failed since
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._pending = 0
        try:
            view = memoryview(data)
            while view:
                n = self._fh.write(view)
                if not n:
                    raise OSError("short write")
                view = view[n:]
        except (OSError, RecordingFileError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self._failed = RecordingError(
                f"session ended: the recording could not be written ({why})"
            )
            raise self._failed from exc
        self._size += len(data)
        self._hash.update(data)

    def _check_sink(self) -> None:
        check = getattr(self._fh, "check", None)
        if check is None:
            return
        try:
            check()
        except RecordingFileError as exc:
            self._failed = RecordingError(
                f"session ended: the recording could not be written ({exc})"
            )
            raise self._failed from exc

    def close(self) -> RecordingSummary:
        """Flush and close; the summary holds the final size and SHA-256."""
        if not self.closed:
            self.closed = True
            lost: RecordingFileError | None = None
            try:
                if self._failed is None:
                    self.flush()
            finally:
                try:
                    self._fh.close()  # a store's writer stores the rest here
                except OSError:
                    pass
                except RecordingFileError as exc:
                    if self._failed is None:
                        lost = exc
                        self._failed = RecordingError(
                            f"session ended: the recording could not be stored ({exc})"
                        )
            if lost is not None and self._failed is not None:
                raise self._failed from lost
        return RecordingSummary(self.path, self._size, self._hash.hexdigest())
