"""Session recordings in asciicast v2: a writer for the front door, a reader and a player.

Format (https://docs.asciinema.org/manual/asciicast/v2/): a JSON header line,
then one JSON array per event, ``[seconds, code, data]`` with code ``o``
(output), ``i`` (input) or ``r`` (resize, ``"COLSxROWS"``).  The asciinema
tools and web player read these files as they are.

The writer is *fail closed*: creating it raises :class:`RecordingFileError` if the
file cannot be created (the session must then not start), every write that
fails raises too (the session must then end), and it refuses to overwrite an
existing recording.  It keeps a running SHA-256 and size, which go into the
``session.ended`` event (``RecordingSHA256``/``RecordingSize``) so an auditor
can prove the file was not altered.  Recordings may contain patient data: they
stay on the broker (or immutable storage), are never shipped to a SIEM, and
are readable only through the access rules in ``broker/api/routes/audit.py``.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from audit.errors import AuditError

MAX_RECORDING_BYTES = 2 * 1024 * 1024 * 1024
_SESSION_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class RecordingFileError(AuditError):
    """A recording cannot be written or read."""


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    path: Path
    size: int
    sha256: str
    duration_s: float


def recording_path(recordings_dir: str | os.PathLike[str], session_id: str) -> Path:
    """``<recordings_dir>/<session_id>.cast``; refuses ids that could escape the directory."""
    if not session_id or len(session_id) > 128 or not set(session_id) <= _SESSION_ID_OK:
        raise RecordingFileError(f"invalid session id {session_id!r}")
    return Path(recordings_dir) / f"{session_id}.cast"


class AsciicastWriter:
    """Writes one asciicast v2 recording; thread-safe; use as a context manager."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        title: str | None = None,
        env: Mapping[str, str] | None = None,
        timestamp: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        max_bytes: int = MAX_RECORDING_BYTES,
        fsync: bool = True,
    ) -> None:
        self.path = Path(path)
        self._mono = monotonic
        self._start = monotonic()
        self._lock = threading.Lock()
        self._hash = hashlib.sha256()
        self._size = 0
        self._max = max_bytes
        self._fsync = fsync
        self._closed: RecordingInfo | None = None
        self._decoders = {c: codecs.getincrementaldecoder("utf-8")("replace") for c in "oi"}
        self._last_t = 0.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            raise RecordingFileError(
                f"cannot create recording {self.path}: {exc.strerror}"
            ) from exc
        self._f = os.fdopen(fd, "wb")
        header: dict[str, Any] = {
            "version": 2,
            "width": int(width),
            "height": int(height),
            "timestamp": int(timestamp if timestamp is not None else time.time()),
        }
        if title:
            header["title"] = title
        if env:
            header["env"] = dict(env)
        self._write_line(json.dumps(header, ensure_ascii=False))

    def _write_line(self, line: str) -> None:
        data = line.encode() + b"\n"
        if self._size + len(data) > self._max:
            raise RecordingFileError(f"recording {self.path} reached its size limit")
        try:
            self._f.write(data)
            self._f.flush()
        except (OSError, ValueError) as exc:
            raise RecordingFileError(f"cannot write recording {self.path}: {exc}") from exc
        self._hash.update(data)
        self._size += len(data)

    def _event(self, code: str, data: str) -> None:
        with self._lock:
            if self._closed is not None:
                raise RecordingFileError(f"recording {self.path} is closed")
            t = max(self._last_t, round(self._mono() - self._start, 6))
            self._last_t = t
            self._write_line(json.dumps([t, code, data], ensure_ascii=False))

    def _text(self, code: str, data: bytes | str) -> str | None:
        if isinstance(data, str):
            return data
        text = self._decoders[code].decode(data)
        return text or None

    def output(self, data: bytes | str) -> None:
        """What the instrument sent to the engineer's terminal."""
        if (text := self._text("o", data)) is not None:
            self._event("o", text)

    def input(self, data: bytes | str) -> None:
        """What the engineer typed."""
        if (text := self._text("i", data)) is not None:
            self._event("i", text)

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{int(width)}x{int(height)}")

    @property
    def size(self) -> int:
        return self._size

    def close(self) -> RecordingInfo:
        """Flush, fsync and close; returns size and SHA-256 (idempotent)."""
        with self._lock:
            if self._closed is None:
                try:
                    self._f.flush()
                    if self._fsync:
                        os.fsync(self._f.fileno())
                    self._f.close()
                except OSError as exc:
                    raise RecordingFileError(f"cannot close recording {self.path}: {exc}") from exc
                self._closed = RecordingInfo(
                    self.path, self._size, self._hash.hexdigest(), self._last_t
                )
            return self._closed

    def __enter__(self) -> AsciicastWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class CastEvent:
    time: float
    code: str
    data: str


def file_sha256(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, SHA-256) of a recording file, to compare with the session.ended event."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def read_cast(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_RECORDING_BYTES
) -> tuple[dict[str, Any], Iterator[CastEvent]]:
    """The header and a lazy iterator of events; malformed lines raise
    :class:`RecordingFileError`."""
    p = Path(path)
    try:
        if p.stat().st_size > max_bytes:
            raise RecordingFileError(f"recording {p} is larger than {max_bytes} bytes")
        f = open(p, encoding="utf-8")
    except OSError as exc:
        raise RecordingFileError(f"cannot read recording {p}: {exc.strerror}") from exc
    try:
        header = json.loads(f.readline())
    except ValueError as exc:
        f.close()
        raise RecordingFileError(f"{p} is not an asciicast recording") from exc
    if not isinstance(header, dict) or header.get("version") != 2:
        f.close()
        raise RecordingFileError(f"{p} is not an asciicast v2 recording")
    return header, _events(f, p)


def _events(f: TextIO, p: Path) -> Iterator[CastEvent]:
    with f:
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                t, code, data = json.loads(line)
                yield CastEvent(float(t), str(code), str(data))
            except (ValueError, TypeError) as exc:
                raise RecordingFileError(f"{p}: line {n} is not an asciicast event") from exc


def play(
    path: str | os.PathLike[str],
    write: Callable[[str], Any],
    *,
    speed: float = 1.0,
    max_idle_s: float = 2.0,
    sleep: Callable[[float], Any] = time.sleep,
) -> int:
    """Replay output events to ``write`` in real time (scaled by ``speed``, idle capped).

    Returns the number of output events played.  Input events are not replayed
    (the output already shows the echo); resizes are announced as a line.
    """
    if speed <= 0:
        raise RecordingFileError("speed must be positive")
    _, events = read_cast(path)
    last, played = 0.0, 0
    for ev in events:
        gap = min(max(0.0, ev.time - last), max_idle_s) / speed
        last = ev.time
        if gap > 0:
            sleep(gap)
        if ev.code == "o":
            write(ev.data)
            played += 1
        elif ev.code == "r":
            write(f"\r\n[terminal resized to {ev.data}]\r\n")
    return played
