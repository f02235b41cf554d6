"""The durable outbox: the hash-chained log itself plus one cursor per sink.

The log is already durable and ordered, so each sink's outbox is "every event
after my cursor".  A cursor is a small JSON file (``<sink>.cursor``) naming the
last position the sink *acknowledged* (``seq``), the byte offset after it and
its chain hash, with a checksum.  It is replaced atomically (write, fsync,
rename) and only after the sink acknowledged the batch, so a crash at any
point re-sends the last batch at worst: delivery is at least once, and every
event carries its stable ``EventUid`` for de-duplication.

Failures:

* a cursor file that is unreadable, fails its checksum or does not match the
  log raises :class:`OutboxCorrupt`; the sink stops, the operator sees why in
  :meth:`Shipper.status`, and nothing is skipped: after a look, the operator
  resets the cursor (:func:`reset_cursor`) to a position, accepting duplicates
  rather than loss;
* a sink that is down or rejects a batch raises :class:`SinkError`; the batch
  stays in the outbox and is retried with exponential backoff (honouring a
  ``Retry-After`` the sink reported).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import AuditError

_SINK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_LINE = 8 * 1024 * 1024  # the log refuses events over 4 MiB; longer lines are not ours


class OutboxError(AuditError):
    """Base of outbox errors."""


class OutboxCorrupt(OutboxError):
    """A cursor or a log line cannot be trusted; the sink stops, nothing is skipped."""


class SinkError(OutboxError):
    """A sink did not acknowledge a batch; it stays in the outbox and is retried."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent  # the sink rejected the data itself (e.g. schema)


@dataclass(frozen=True, slots=True)
class Cursor:
    seq: int = 0
    offset: int = 0
    hash: str = ""


def _checksum(sink: str, c: Cursor) -> str:
    return hashlib.sha256(f"{sink}\n{c.seq}\n{c.offset}\n{c.hash}".encode()).hexdigest()[:16]


def check_sink_name(sink: str) -> str:
    """Sink names are short, lower-case words (they name files and rows)."""
    if not _SINK_NAME.fullmatch(sink):
        raise OutboxError(f"invalid sink name {sink!r}")
    return sink


class CursorStore:
    """One cursor file per sink in ``directory`` (the file log's cursors; the
    PostgreSQL store keeps them as rows, :class:`audit.pgchain.PgCursorStore`)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, sink: str) -> Path:
        return self.dir / f"{check_sink_name(sink)}.cursor"

    def stamp(self, sink: str) -> tuple[int, ...]:
        """Changes whenever the cursor is saved (it is replaced by rename: a new inode),
        so a stopped shipper sees an operator's reset."""
        try:
            st = self.path(sink).stat()
        except OSError:
            return (-1, -1, -1)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self, sink: str) -> Cursor:
        p = self.path(sink)
        if not p.exists():
            return Cursor()
        try:
            raw = json.loads(p.read_bytes()[:4096])
            c = Cursor(int(raw["seq"]), int(raw["offset"]), str(raw["hash"]))
            ok = raw.get("check") == _checksum(sink, c) and c.seq >= 0 and c.offset >= 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OutboxCorrupt(f"cursor of sink {sink!r} ({p}) is unreadable: {exc}") from exc
        if not ok:
            raise OutboxCorrupt(f"cursor of sink {sink!r} ({p}) fails its checksum")
        return c

    def save(self, sink: str, c: Cursor) -> None:
        p = self.path(sink)
        tmp = p.with_name(p.name + ".tmp")
        data = json.dumps(
            {"seq": c.seq, "offset": c.offset, "hash": c.hash, "check": _checksum(sink, c)}
        ).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)


def reset_cursor(
    store: CursorStore, log_path: str | os.PathLike[str], sink: str, seq: int
) -> Cursor:
    """Operator action: point a sink's cursor at ``seq`` (0 = re-send everything)."""
    cursor = Cursor()
    if seq > 0:
        for line_seq, end, record in _scan(Path(log_path), Cursor()):
            if line_seq == seq:
                cursor = Cursor(seq, end, str(record.get("ChainHash", "")))
                break
        else:
            raise OutboxError(f"the log has no position {seq}")
    store.save(sink, cursor)
    return cursor


def _scan(path: Path, start: Cursor) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Yield (seq, offset after the line, record) for complete lines after ``start``."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        f.seek(start.offset)
        offset = start.offset
        expected = start.seq + 1
        while True:
            line = f.readline(MAX_LINE + 1)
            if not line.endswith(b"\n"):
                if len(line) > MAX_LINE:
                    raise OutboxCorrupt(f"{path}: line at offset {offset} is too long")
                return  # a line still being written: wait for it
            offset += len(line)
            try:
                record = json.loads(line)
                seq = int(record["ChainSeq"])
            except (ValueError, KeyError, TypeError) as exc:
                raise OutboxCorrupt(
                    f"{path}: unreadable event at offset {offset - len(line)}"
                ) from exc
            if seq != expected:
                raise OutboxCorrupt(
                    f"{path}: expected position {expected} at offset "
                    f"{offset - len(line)}, found {seq}"
                )
            expected += 1
            yield seq, offset, record


def _check_cursor(p: Path, cursor: Cursor) -> None:
    """The line ending at ``cursor.offset`` must be the event the cursor names."""
    try:
        with open(p, "rb") as f:
            if cursor.offset > os.fstat(f.fileno()).st_size:
                raise OutboxCorrupt(f"cursor at position {cursor.seq} points past the log")
            window = 4096
            while True:
                start = max(0, cursor.offset - window)
                f.seek(start)
                chunk = f.read(cursor.offset - start)
                nl = chunk.rfind(b"\n", 0, len(chunk) - 1)
                if nl >= 0 or start == 0:
                    break
                if window >= MAX_LINE:
                    raise OutboxCorrupt(f"cursor at position {cursor.seq} is not at a line end")
                window *= 4
        record = json.loads(chunk[nl + 1 :])
    except (OSError, ValueError) as exc:
        raise OutboxCorrupt(f"cursor at position {cursor.seq} does not match the log") from exc
    if (
        not isinstance(record, dict)
        or record.get("ChainSeq") != cursor.seq
        or (cursor.hash and record.get("ChainHash") != cursor.hash)
    ):
        raise OutboxCorrupt(f"cursor at position {cursor.seq} does not match the log")


def read_batch(
    path: str | os.PathLike[str], cursor: Cursor, limit: int
) -> tuple[list[dict[str, Any]], Cursor]:
    """Up to ``limit`` events after ``cursor`` and the cursor after them.

    The cursor must point at the end of the line it names; otherwise the log
    was replaced or the cursor is wrong and :class:`OutboxCorrupt` is raised.
    """
    p = Path(path)
    if cursor.seq > 0:
        _check_cursor(p, cursor)
    out: list[dict[str, Any]] = []
    last = cursor
    for seq, end, record in _scan(p, cursor):
        out.append(record)
        last = Cursor(seq, end, str(record.get("ChainHash", "")))
        if len(out) >= limit:
            break
    return out, last


class FileOutbox:
    """The file log as a shipper reads it: events after a cursor, and its head."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read_batch(self, cursor: Cursor, limit: int) -> tuple[list[dict[str, Any]], Cursor]:
        return read_batch(self.path, cursor, limit)

    def head_seq(self) -> int:
        """The last position written, from the log's ``.head`` file."""
        try:
            text = self.path.with_name(self.path.name + ".head").read_text().strip()
            return int(text.partition(" ")[0]) if text else 0
        except (OSError, ValueError):
            return 0
