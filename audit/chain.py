"""The append-only, hash-chained event log.

Each line of the log is one event record (JSON) carrying ``ChainSeq`` (its
position, from 1) and ``ChainHash`` = SHA-256 over the previous line's hash
and the canonical JSON of this record without ``ChainHash``.  Editing,
deleting, reordering or inserting a line breaks every hash after it;
:func:`verify` names the first bad position.  A small ``.head`` file next to
the log holds the last position and hash, so a truncated tail is caught too
(signed checkpoints, shipped off the machine, catch a truncated head file).

With a :class:`~audit.signing.CheckpointSigner`, the log writes an
``audit.checkpoint`` event every ``checkpoint_every`` events or
``checkpoint_interval_s`` seconds (whichever comes first; only when something
new was written), carrying the position and hash of the event before it and
an Ed25519 signature.  The newest checkpoint is also kept in a ``.checkpoint``
file beside the log.  :func:`verify` checks each checkpoint against the chain
and, given the trusted keys, its signature; given a checkpoint held elsewhere
(a SIEM row), it proves the log still reaches that position unchanged.

One process writes a log at a time: :class:`ChainLog` holds an exclusive
``flock`` on it and refuses to open a log another process is writing.
Appends from several threads are serialized by a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from audit.errors import ChainError, InvalidEvent
from audit.events import AuditEvent, new_event, utc_now
from audit.signing import Checkpoint, CheckpointSigner, TrustedKeys

GENESIS = "0" * 64
MAX_EVENT_BYTES = 4 * 1024 * 1024
_HEAD_WIDTH = 96


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev: str, record: dict[str, Any]) -> str:
    """The hash committing to ``record`` (without ``ChainHash``) and all before it."""
    body = {k: v for k, v in record.items() if k != "ChainHash"}
    return hashlib.sha256(prev.encode() + b"\n" + _canonical(body)).hexdigest()


def _line(record: dict[str, Any], prev: str) -> tuple[str, bytes]:
    """Hash ``record`` (which has ``ChainSeq`` and no ``ChainHash``) and render its line."""
    body = _canonical(record)
    h = hashlib.sha256(prev.encode() + b"\n" + body).hexdigest()
    # readers parse the JSON, so the hash may follow the sorted body
    return h, body[:-1] + b',"ChainHash":"' + h.encode() + b'"}\n'


def _lock_exclusive(fd: int) -> None:
    """Take the single-writer lock on the log without waiting (OSError if held)."""
    if sys.platform == "win32":  # the gateway also runs as a plain Windows process
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class ChainLog:
    """Append-only hash-chained log; an :class:`~audit.emitter.Emitter`.

    ``emit`` raises :class:`ChainError` when the event could not be written
    (full disk, closed log): callers of enforced actions must stop (fail closed).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        clock: Callable[[], datetime] = utc_now,
        hostname: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.hostname = hostname
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.checkpoint_path = self.path.with_name(self.path.name + ".checkpoint")
        self._fsync = fsync
        self._signer = signer
        self._cp_every = max(1, checkpoint_every)
        self._cp_interval = checkpoint_interval_s
        self._clock = clock
        self._listeners: list[Callable[[int], None]] = []
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ChainError(f"cannot open audit log {self.path}: {exc.strerror}") from exc
        try:
            _lock_exclusive(self._fd)
        except OSError as exc:
            os.close(self._fd)
            raise ChainError(f"audit log {self.path} is being written by another process") from exc
        self._seq, self._hash = self._recover()
        self._synced = self._seq

    def _recover(self) -> tuple[int, str]:
        self._cut_partial_tail()
        result = verify(self.path)
        if not result.ok:
            os.close(self._fd)
            raise ChainError(f"audit log {self.path} fails verification: {result.reason}")
        head = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o640)
        self._head_fd = head
        self._size = os.fstat(self._fd).st_size
        self._cp_seq = result.last_checkpoint.seq + 2 if result.last_checkpoint else 1
        self._cp_time = self._clock()
        return result.count, result.last_hash

    def _cut_partial_tail(self) -> None:
        """A crash in the middle of a write leaves a line without its newline: that
        event was never acknowledged to anyone, so it is cut off before appending."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            back = min(size, MAX_EVENT_BYTES + 1)
            f.seek(size - back)
            tail = f.read(back)
        nl = tail.rfind(b"\n")
        keep = size - back + nl + 1 if nl >= 0 else (0 if back == size else -1)
        if keep < 0:
            return  # not a partial event: leave it for verification to report
        os.truncate(self.path, keep)

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(seq)`` after each append (shippers wake on it); must not block."""
        self._listeners.append(listener)

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
        with self._lock:
            out = self._write(events)
            if self._checkpoint_due():
                self._write_checkpoint()
            seq = self._seq
        if self._fsync:
            self._sync(seq)
        for listener in self._listeners:
            listener(seq)
        return out

    def checkpoint(self) -> Checkpoint | None:
        """Write a signed checkpoint now if anything was appended since the last one."""
        with self._lock:
            cp = self._write_checkpoint() if self._seq >= self._cp_seq else None
            seq = self._seq
        if self._fsync:
            self._sync(seq)
        for listener in self._listeners:
            listener(seq)
        return cp

    def maybe_checkpoint(self) -> Checkpoint | None:
        """Write a checkpoint if the interval has passed (call periodically when idle)."""
        with self._lock:
            if not self._checkpoint_due():
                return None
            cp = self._write_checkpoint()
            seq = self._seq
        if self._fsync:
            self._sync(seq)
        return cp

    def _sync(self, seq: int) -> None:
        """Group commit: one fsync makes every append up to now durable.

        Threads that appended while another thread's fsync ran find their
        position already covered and return without a second fsync.
        """
        with self._sync_lock:
            if self._synced >= seq:
                return
            target = self._seq  # every write counted here is already in the file
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise ChainError(f"cannot sync audit log {self.path}: {exc.strerror}") from exc
            self._synced = target

    def _checkpoint_due(self) -> bool:
        if self._signer is None or self._seq < self._cp_seq:
            return False
        if self._seq - self._cp_seq + 1 >= self._cp_every:
            return True
        return (self._clock() - self._cp_time).total_seconds() >= self._cp_interval

    def _write_checkpoint(self) -> Checkpoint | None:
        if self._signer is None:
            return None
        cp = self._signer.sign(self._seq, self._hash)
        self._write([new_event("audit.checkpoint", clock=self._clock, details=cp.details(),
                               DvcRole="broker", DvcHostname=self.hostname,
                               EventMessage=f"signed checkpoint at position {cp.seq}")])
        self._cp_seq, self._cp_time = self._seq + 1, self._clock()
        try:
            tmp = self.checkpoint_path.with_name(self.checkpoint_path.name + ".tmp")
            tmp.write_text(json.dumps(cp.details()))
            os.replace(tmp, self.checkpoint_path)
        except OSError as exc:
            raise ChainError(f"cannot write {self.checkpoint_path}: {exc.strerror}") from exc
        return cp

    def _write(self, events: Sequence[AuditEvent]) -> list[AuditEvent]:
        out: list[AuditEvent] = []
        lines: list[bytes] = []
        seq, prev = self._seq, self._hash
        for event in events:
            seq += 1
            record = dict(event.record)
            record.pop("ChainHash", None)
            record["ChainSeq"] = seq
            prev, line = _line(record, prev)
            if len(line) > MAX_EVENT_BYTES:
                raise InvalidEvent(f"{record.get('EventType')}: event of {len(line)} bytes is "
                                   f"larger than {MAX_EVENT_BYTES}")
            record["ChainHash"] = prev
            lines.append(line)
            out.append(AuditEvent(record))
        data = b"".join(lines)
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.pwrite(self._head_fd, f"{seq} {prev}".ljust(_HEAD_WIDTH).encode(), 0)
        except OSError as exc:
            # a half-written line would break the chain: cut the log back to the last event
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise ChainError(f"cannot write audit log {self.path}: {exc.strerror}") from exc
        self._seq, self._hash, self._size = seq, prev, self._size + len(data)
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
    checkpoints: int = 0  # checkpoint events found (and checked) in the log
    signatures_checked: bool = False
    last_checkpoint: Checkpoint | None = None


def read_events(path: str | os.PathLike[str]) -> Iterator[AuditEvent]:
    """Yield the events of a log (no verification)."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield AuditEvent(json.loads(line))


def _read_head(p: Path) -> tuple[int, str] | None:
    head_path = p.with_name(p.name + ".head")
    if not head_path.exists():
        return None
    n, _, h = head_path.read_text().strip().partition(" ")
    try:
        return (int(n), h) if n else None
    except ValueError:
        return (-1, "unreadable head file")


def verify(
    path: str | os.PathLike[str],
    *,
    head: tuple[int, str] | None = None,
    keys: TrustedKeys | None = None,
    checkpoint: Checkpoint | None = None,
    upto: int | None = None,
) -> VerifyResult:
    """Check every line of the log; name the first bad position.

    ``head`` (position, hash) is what the log must reach; by default the
    ``.head`` file beside the log is used.  Every ``audit.checkpoint`` event
    must match the chain before it, and with ``keys`` carry a good signature by
    a trusted key.  ``checkpoint`` is a signed checkpoint held elsewhere (for
    example the newest one the SIEM received): the log must reach its position
    with the same hash, otherwise it was truncated or rewritten.
    """
    p = Path(path)
    prev, seq, cps = GENESIS, 0, 0
    last_cp: Checkpoint | None = None
    at_checkpoint: str | None = None

    def bad(pos: int, reason: str) -> VerifyResult:
        return VerifyResult(False, seq, prev, pos, reason, cps, keys is not None, last_cp)

    if checkpoint is not None and keys is not None and (why := keys.check(checkpoint)):
        return bad(checkpoint.seq, f"the given {why}")
    if p.exists():
        with open(p, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if upto is not None and lineno > upto:
                    break
                if not line.endswith(b"\n"):
                    break  # the writer is in the middle of this line
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                except ValueError:
                    return bad(lineno, f"line {lineno} is not a record")
                if record.get("ChainSeq") != lineno:
                    return bad(lineno, f"line {lineno} has position {record.get('ChainSeq')}: "
                                       "an event was deleted, inserted or moved")
                if record.get("ChainHash") != chain_hash(prev, record):
                    return bad(lineno, f"line {lineno} does not match its hash: edited, "
                                       "inserted or reordered")
                if record.get("EventType") == "audit.checkpoint":
                    try:
                        cp = Checkpoint.from_details(record.get("Details") or {})
                    except ChainError as exc:
                        return bad(lineno, f"line {lineno}: {exc}")
                    if cp.seq != lineno - 1 or cp.hash != prev:
                        return bad(lineno, f"checkpoint at line {lineno} does not match the "
                                           "chain before it")
                    if keys is not None and (why := keys.check(cp)):
                        return bad(lineno, f"line {lineno}: {why}")
                    cps, last_cp = cps + 1, cp
                prev, seq = record["ChainHash"], lineno
                if checkpoint is not None and lineno == checkpoint.seq:
                    at_checkpoint = prev
    if checkpoint is not None:
        if seq < checkpoint.seq:
            return bad(seq + 1, f"the log ends at position {seq} but a signed checkpoint "
                                f"covers position {checkpoint.seq}: the tail was truncated")
        if at_checkpoint != checkpoint.hash:
            return bad(checkpoint.seq, f"position {checkpoint.seq} does not match the signed "
                                       "checkpoint: the log was rewritten")
    if head is None and upto is None:
        head = _read_head(p)
    if upto is not None and seq < upto:
        return bad(seq + 1, f"the log ends at position {seq}, expected {upto}")
    if head is not None:
        if head[0] < 0:
            return bad(seq + 1, "the .head file beside the log is unreadable")
        if seq < head[0]:
            return bad(seq + 1, f"the log ends at position {seq} but was written up to "
                                f"{head[0]}: the tail was truncated")
        if seq == head[0] and prev != head[1]:
            return bad(seq, f"position {seq} does not match the head")
    return VerifyResult(True, seq, prev, None, "", cps, keys is not None, last_cp)
