"""Session recordings in asciicast v2 (what ``asciinema play`` plays).

One file per session: a JSON header line, then one ``[time, code, data]`` line
per event: ``"o"`` output from the instrument, ``"i"`` input from the engineer,
``"r"`` a terminal resize (``"COLSxROWS"``).  Writes are buffered; the size and
SHA-256 of the finished file go into the session's end event.

Fail closed: :meth:`Recording.open` writes and flushes the header, so an
unwritable directory refuses the session before it starts; any later write
failure raises :class:`~broker.ssh.errors.RecordingError` and the relay ends
the session.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO

from broker.ssh.errors import RecordingError

_FLUSH_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class RecordingSummary:
    path: Path
    size: int
    sha256: str


Opener = Callable[[Path], IO[bytes]]


def default_opener(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    return os.fdopen(fd, "wb", buffering=0)


class Recording:
    """An open asciicast v2 recording.  Not thread-safe; one per session."""

    def __init__(self, path: Path, fh: IO[bytes], monotonic: Callable[[], float]) -> None:
        self.path = path
        self._fh = fh
        self._mono = monotonic
        self._start = monotonic()
        self._buf: list[bytes] = []
        self._pending = 0
        self._size = 0
        self._hash = hashlib.sha256()
        self._dec = {
            "o": codecs.getincrementaldecoder("utf-8")("replace"),
            "i": codecs.getincrementaldecoder("utf-8")("replace"),
        }
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
    ) -> Recording:
        """Create ``<directory>/<name>.cast`` and write its header, or raise RecordingError."""
        path = directory / f"{name}.cast"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fh = opener(path)
        except OSError as exc:
            raise RecordingError(
                f"session refused: the recording cannot be written ({exc.strerror or exc})"
            ) from exc
        rec = cls(path, fh, monotonic)
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
        self._buf.append(line)
        self._pending += len(line)
        if self._pending >= _FLUSH_BYTES:
            self.flush()

    def _event(self, code: str, text: str) -> None:
        if self._failed is not None:
            raise self._failed
        t = round(self._mono() - self._start, 6)
        # the C string encoder of json, ASCII-only output: the cheapest per byte
        self._append(f'[{t!r}, "{code}", {encode_basestring_ascii(text)}]\n'.encode("ascii"))

    def output(self, data: bytes) -> None:
        text = self._dec["o"].decode(data)
        if text:
            self._event("o", text)

    def input(self, data: bytes) -> None:
        text = self._dec["i"].decode(data)
        if text:
            self._event("i", text)

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{width}x{height}")

    def flush(self) -> None:
        """Write buffered events to disk; raises RecordingError (and stays failed)."""
        if self._failed is not None:
            raise self._failed
        if not self._buf:
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
        except OSError as exc:
            self._failed = RecordingError(
                f"session ended: the recording could not be written ({exc.strerror or exc})"
            )
            raise self._failed from exc
        self._size += len(data)
        self._hash.update(data)

    def close(self) -> RecordingSummary:
        """Flush and close; the summary holds the final size and SHA-256."""
        if not self.closed:
            self.closed = True
            try:
                if self._failed is None:
                    self.flush()
            finally:
                try:
                    self._fh.close()
                except OSError:
                    pass
        return RecordingSummary(self.path, self._size, self._hash.hexdigest())
