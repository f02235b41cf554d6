"""The append-only, hash-chained event log.

Each line of the log is one event record (JSON) carrying ``ChainSeq`` (its
position, from 1) and ``ChainHash`` = SHA-256 over the previous line's hash
and the canonical JSON of this record without ``ChainHash``.  Editing,
deleting, reordering or inserting a line breaks every hash after it;
:func:`verify` names the first bad position.  A small ``.head`` file next to
the log holds the last position and hash, so a truncated tail is caught too
(signed checkpoints, shipped off the machine, catch a truncated head file).

One process writes a log at a time: :class:`ChainLog` holds an exclusive
``flock`` on it and refuses to open a log another process is writing.
Appends from several threads are serialized by a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import ChainError
from audit.events import AuditEvent

GENESIS = "0" * 64
_HEAD_WIDTH = 96


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev: str, record: dict[str, Any]) -> str:
    """The hash committing to ``record`` (without ``ChainHash``) and all before it."""
    body = {k: v for k, v in record.items() if k != "ChainHash"}
    return hashlib.sha256(prev.encode() + b"\n" + _canonical(body)).hexdigest()


class ChainLog:
    """Append-only hash-chained log; an :class:`~audit.emitter.Emitter`."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ChainError(f"cannot open audit log {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            raise ChainError(f"audit log {self.path} is being written by another process") from exc
        self._seq, self._hash = self._recover()

    def _recover(self) -> tuple[int, str]:
        result = verify(self.path)
        if not result.ok:
            os.close(self._fd)
            raise ChainError(f"audit log {self.path} fails verification: {result.reason}")
        head = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o640)
        self._head_fd = head
        return result.count, result.last_hash

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def last_hash(self) -> str:
        return self._hash

    def emit(self, event: AuditEvent) -> AuditEvent:
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditEvent]:
        """Append events in order with one write; returns them with chain fields set."""
        out: list[AuditEvent] = []
        lines: list[bytes] = []
        with self._lock:
            seq, prev = self._seq, self._hash
            for event in events:
                seq += 1
                record = dict(event.record)
                record["ChainSeq"] = seq
                record.pop("ChainHash", None)
                prev = chain_hash(prev, record)
                record["ChainHash"] = prev
                lines.append(_canonical(record) + b"\n")
                out.append(AuditEvent(record))
            try:
                os.write(self._fd, b"".join(lines))
                if self._fsync:
                    os.fsync(self._fd)
                os.pwrite(self._head_fd, f"{seq} {prev}".ljust(_HEAD_WIDTH).encode(), 0)
            except OSError as exc:
                raise ChainError(f"cannot write audit log {self.path}: {exc.strerror}") from exc
            self._seq, self._hash = seq, prev
        return out

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._head_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self) -> ChainLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    last_hash: str
    first_bad: int | None = None  # 1-based line position of the first bad line
    reason: str = ""


def read_events(path: str | os.PathLike[str]) -> Iterator[AuditEvent]:
    """Yield the events of a log (no verification)."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield AuditEvent(json.loads(line))


def verify(path: str | os.PathLike[str], *, head: tuple[int, str] | None = None) -> VerifyResult:
    """Check every line of the log; name the first bad position.

    ``head`` (position, hash) is what the log must reach, for example from a
    signed checkpoint; by default the ``.head`` file beside the log is used.
    """
    p = Path(path)
    prev, seq = GENESIS, 0
    if p.exists():
        with open(p, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                except ValueError:
                    return VerifyResult(False, seq, prev, lineno, f"line {lineno} is not a record")
                if record.get("ChainSeq") != lineno:
                    return VerifyResult(False, seq, prev, lineno,
                                        f"line {lineno} has position {record.get('ChainSeq')}: "
                                        "an event was deleted, inserted or moved")
                if record.get("ChainHash") != chain_hash(prev, record):
                    return VerifyResult(False, seq, prev, lineno,
                                        f"line {lineno} does not match its hash: edited, "
                                        "inserted or reordered")
                prev, seq = record["ChainHash"], lineno
    if head is None:
        head_path = p.with_name(p.name + ".head")
        if head_path.exists():
            text = head_path.read_text().strip()
            if text:
                n, _, h = text.partition(" ")
                head = (int(n), h)
    if head is not None:
        if seq < head[0]:
            return VerifyResult(False, seq, prev, seq + 1,
                                f"the log ends at position {seq} but was written up to "
                                f"{head[0]}: the tail was truncated")
        if seq == head[0] and prev != head[1]:
            return VerifyResult(False, seq, prev, seq, f"position {seq} does not match the head")
    return VerifyResult(True, seq, prev)
