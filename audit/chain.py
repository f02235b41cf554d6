"""The append-only, hash-chained event log.

Each line of the log is one event record (JSON) carrying ``ChainSeq`` (its
position, from 1) and ``ChainHash`` = SHA-256 over the previous line's hash
and the canonical JSON of this record without ``ChainHash``.  Editing,
deleting, reordering or inserting a line breaks every hash after it;
:func:`verify` names the first bad position.  A small ``.head`` file next to
the log holds the last position and hash, so a truncated tail is caught too
(signed checkpoints, shipped off the machine, catch a truncated head file).

With a :class:`~audit.signing.CheckpointSigner`, the log writes an
``audit.checkpoint`` event after every ``checkpoint_every`` events (also in the
middle of a large batch), every ``checkpoint_interval_s`` seconds when
something new was written, and when it is closed; it carries the position and
hash of the event before it and an Ed25519 signature.  The newest checkpoint
is also kept in a ``.checkpoint`` file beside the log.  Checking lives in
:mod:`audit.verify` (re-exported here): an auditor's check requires a
checkpoint every ``checkpoint_every`` events and at the end, so a log that was
re-hashed after an edit cannot hide that it lost its signatures.

One process writes a log at a time: :class:`ChainLog` holds an exclusive
``flock`` on it and refuses to open a log another process is writing.
Appends from several threads are serialized by a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from audit.errors import ChainError, InvalidEvent
from audit.events import AuditEvent, new_event, utc_now
from audit.signing import Checkpoint, CheckpointSigner
from audit.verify import (
    GENESIS,
    VerifyResult,
    canonical,
    chain_hash,
    link_hash,
    read_events,
    verify,
)

__all__ = [
    "GENESIS",
    "ChainLog",
    "ChainState",
    "Prepared",
    "Sealed",
    "VerifyResult",
    "chain_hash",
    "prepare",
    "read_events",
    "verify",
]

MAX_EVENT_BYTES = 4 * 1024 * 1024
_HEAD_WIDTH = 96


def _line(record: dict[str, Any], prev: str) -> tuple[str, bytes]:
    """Hash ``record`` (which has ``ChainSeq`` and no ``ChainHash``) and render its line."""
    body = canonical(record)
    h = link_hash(prev, body)
    # readers parse the JSON, so the hash may follow the sorted body
    return h, body[:-1] + b',"ChainHash":"' + h.encode() + b'"}\n'


_SEQ_KEY = "ChainSeq"
# the canonical encoder (audit.verify.canonical's arguments), built once
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# stands where the position goes while an event is rendered ahead of sealing: random per
# process, so no event text can carry it (and it must occur exactly once, or the slow way)
_MARK = "\x00" + secrets.token_hex(16)
_MARK_JSON = json.dumps(_MARK).encode()


@dataclass(frozen=True, slots=True)
class Prepared:
    """An event rendered ahead of sealing: its record without ``ChainHash`` and its
    canonical JSON split where the ``ChainSeq`` digits go, so sealing only joins and
    hashes (the same bytes :func:`_line` renders).

    Rendering costs most of an append; a store with a writer thread (the PostgreSQL
    chain) renders in the emitting thread while the writer waits on the database."""

    event: AuditEvent
    record: dict[str, Any]  # with the marker as ChainSeq (replaced when sealed)
    head: bytes  # canonical JSON up to and including '"ChainSeq":'
    tail: bytes  # the rest of it, after the position's digits


def prepare(event: AuditEvent) -> Prepared | AuditEvent:
    """Render ``event`` for :meth:`ChainState.seal`; an event that cannot be split
    (the marker occurs twice, keys that are not all strings) is returned as it is and
    sealed the plain way."""
    record = dict(event.record)
    record.pop("ChainHash", None)
    record[_SEQ_KEY] = _MARK
    try:
        body = _ENCODER.encode(record).encode()
    except (TypeError, ValueError):
        return event  # the plain way raises the same, where the caller expects it
    head, mark, tail = body.partition(_MARK_JSON)
    if not mark or _MARK_JSON in tail:
        return event
    return Prepared(event, record, head, tail)


@dataclass(frozen=True, slots=True)
class Link:
    """One sealed event: its position, the hash before it, its hash and its line."""

    seq: int
    prev: str
    hash: str
    line: bytes  # canonical JSON with ChainHash, ending in a newline
    event: AuditEvent
    checkpoint: Checkpoint | None = None  # set on the audit.checkpoint events


@dataclass(frozen=True, slots=True)
class Sealed:
    """Events numbered, hashed and (when due) checkpointed, not yet stored."""

    links: tuple[Link, ...]
    seq: int
    hash: str
    cp_seq: int  # the first position the next checkpoint has to cover
    cp_time: datetime

    @property
    def data(self) -> bytes:
        return b"".join(link.line for link in self.links)

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint in this batch (None: none was due)."""
        return next((k.checkpoint for k in reversed(self.links) if k.checkpoint), None)


class ChainState:
    """Where one chain stands and when its next checkpoint is due.

    The one place that numbers, hashes and signs events, whatever stores them
    (:class:`ChainLog` on a file, :class:`audit.pgchain.PgChainLog` in
    PostgreSQL): :meth:`seal` computes a batch without changing the state, the
    store writes it, and :meth:`advance` moves the state once it is stored.
    A signed checkpoint is placed after every ``checkpoint_every`` events (also
    inside a large batch) and when ``checkpoint_interval_s`` has passed with
    something new written.
    """

    def __init__(
        self,
        seq: int,
        last_hash: str,
        *,
        signer: CheckpointSigner | None,
        checkpoint_every: int,
        checkpoint_interval_s: float,
        clock: Callable[[], datetime],
        hostname: str | None,
        last_checkpoint_seq: int | None,
    ) -> None:
        self.seq, self.hash = seq, last_hash
        self.signer = signer
        self.every = max(1, checkpoint_every)
        self.interval_s = checkpoint_interval_s
        self.clock = clock
        self.hostname = hostname
        # the checkpoint event itself sits at last_checkpoint_seq + 1
        self.cp_seq = last_checkpoint_seq + 2 if last_checkpoint_seq is not None else 1
        self.cp_time = clock()

    def seal(
        self,
        events: Sequence[AuditEvent | Prepared],
        *,
        force_checkpoint: bool = False,
        after: Sealed | None = None,
    ) -> Sealed:
        """Number and hash ``events`` after the state (or after ``after``), placing
        checkpoints where due; ``force_checkpoint`` signs whatever is unsigned at the
        end.  Raises :class:`InvalidEvent` for an event over ``MAX_EVENT_BYTES``."""
        seq, prev = (after.seq, after.hash) if after else (self.seq, self.hash)
        cp_seq, cp_time = (after.cp_seq, after.cp_time) if after else (self.cp_seq, self.cp_time)
        links: list[Link] = []

        def add(event: AuditEvent | Prepared, cp: Checkpoint | None = None) -> None:
            nonlocal seq, prev
            seq += 1
            if isinstance(event, Prepared):
                record = dict(event.record)
                record[_SEQ_KEY] = seq
                body = event.head + str(seq).encode() + event.tail
                h = hashlib.sha256(prev.encode() + b"\n" + body).hexdigest()  # link_hash
                line = body[:-1] + b',"ChainHash":"' + h.encode() + b'"}\n'
            else:
                record = dict(event.record)
                record.pop("ChainHash", None)
                record[_SEQ_KEY] = seq
                h, line = _line(record, prev)
            if len(line) > MAX_EVENT_BYTES:
                raise InvalidEvent(
                    f"{record.get('EventType')}: event of {len(line)} bytes is "
                    f"larger than {MAX_EVENT_BYTES}"
                )
            record["ChainHash"] = h
            links.append(Link(seq, prev, h, line, AuditEvent(record), cp))
            prev = h

        def sign() -> None:
            nonlocal cp_seq, cp_time
            assert self.signer is not None
            cp = self.signer.sign(seq, prev)
            add(
                new_event(
                    "audit.checkpoint",
                    clock=self.clock,
                    details=cp.details(),
                    DvcRole="broker",
                    DvcHostname=self.hostname,
                    EventMessage=f"signed checkpoint at position {cp.seq}",
                ),
                cp,
            )
            cp_seq, cp_time = seq + 1, self.clock()

        def due() -> bool:
            if self.signer is None or seq < cp_seq:
                return False
            if seq - cp_seq + 1 >= self.every:
                return True
            return (self.clock() - cp_time).total_seconds() >= self.interval_s

        rest = list(events)
        while True:
            # room before the count-based checkpoint falls due
            room = (
                len(rest)
                if self.signer is None
                else max(1, min(len(rest), self.every - (seq - cp_seq + 1)))
            )
            for event in rest[:room]:
                add(event)
            rest = rest[room:]
            if due():
                sign()
            if not rest:
                break
        if force_checkpoint and self.signer is not None and seq >= cp_seq:
            sign()
        return Sealed(tuple(links), seq, prev, cp_seq, cp_time)

    def advance(self, sealed: Sealed) -> None:
        """The batch is stored: the chain now stands after it."""
        self.seq, self.hash = sealed.seq, sealed.hash
        self.cp_seq, self.cp_time = sealed.cp_seq, sealed.cp_time

    @property
    def unsigned(self) -> bool:
        """Something was written since the last checkpoint (and this chain signs)."""
        return self.signer is not None and self.seq >= self.cp_seq


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
        self._listeners: list[Callable[[int], None]] = []
        self._lock = threading.Lock()
        self._closed = False
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
        self._cut_partial_tail()
        result = verify(self.path)
        if not result.ok:
            os.close(self._fd)
            raise ChainError(f"audit log {self.path} fails verification: {result.reason}")
        self._head_fd = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._state = ChainState(
            result.count,
            result.last_hash,
            signer=signer,
            checkpoint_every=checkpoint_every,
            checkpoint_interval_s=checkpoint_interval_s,
            clock=clock,
            hostname=hostname,
            last_checkpoint_seq=result.last_checkpoint.seq if result.last_checkpoint else None,
        )
        self._synced = self._state.seq

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
    def checkpoint_every(self) -> int | None:
        """The longest stretch without a checkpoint (None: this log does not sign)."""
        return self._cp_every if self._signer is not None else None

    @property
    def seq(self) -> int:
        return self._state.seq

    @property
    def last_hash(self) -> str:
        return self._state.hash

    @property
    def synced_seq(self) -> int:
        """The last seq known to be on disk: fsync'd (``fsync=True``) or found at open."""
        return self._synced

    def emit(self, event: AuditEvent) -> AuditEvent:
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditEvent]:
        """Append events in order with one write; returns them with chain fields set.

        A checkpoint that falls due inside a large batch is written there, so no
        stretch of the log is longer than ``checkpoint_every`` without one.
        """
        with self._lock:
            sealed = self._store(self._state.seal(events))
            seq = self._state.seq
        self._after(seq)
        return [k.event for k in sealed.links if k.checkpoint is None]

    def checkpoint(self) -> Checkpoint | None:
        """Write a signed checkpoint now if anything was appended since the last one."""
        with self._lock:
            cp = None
            if self._state.unsigned:
                cp = self._store(self._state.seal([], force_checkpoint=True)).checkpoint
            seq = self._state.seq
        self._after(seq)
        return cp

    def maybe_checkpoint(self) -> Checkpoint | None:
        """Write a checkpoint if the interval has passed (call periodically when idle)."""
        with self._lock:
            sealed = self._state.seal([])
            if not sealed.links:
                return None
            cp = self._store(sealed).checkpoint
            seq = self._state.seq
        if self._fsync:
            self._sync(seq)
        return cp

    def _after(self, seq: int) -> None:
        if self._fsync:
            self._sync(seq)
        for listener in self._listeners:
            listener(seq)

    def _sync(self, seq: int) -> None:
        """Group commit: one fsync makes every append up to now durable.

        Threads that appended while another thread's fsync ran find their
        position already covered and return without a second fsync.
        """
        with self._sync_lock:
            if self._synced >= seq:
                return
            target = self._state.seq  # every write counted here is already in the file
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise ChainError(f"cannot sync audit log {self.path}: {exc.strerror}") from exc
            self._synced = target

    def _store(self, sealed: Sealed) -> Sealed:
        """Write a sealed batch in one write (all or nothing), then the head and the
        newest checkpoint beside the log; the state moves only once it is written."""
        if self._closed:
            raise ChainError(f"audit log {self.path} is closed")
        if not sealed.links:
            return sealed
        data = sealed.data
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.pwrite(self._head_fd, f"{sealed.seq} {sealed.hash}".ljust(_HEAD_WIDTH).encode(), 0)
        except OSError as exc:
            # a half-written line would break the chain: cut the log back to the last event
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise ChainError(f"cannot write audit log {self.path}: {exc.strerror}") from exc
        self._size += len(data)
        self._state.advance(sealed)
        cp = sealed.checkpoint
        if cp is not None:
            try:
                tmp = self.checkpoint_path.with_name(self.checkpoint_path.name + ".tmp")
                tmp.write_text(json.dumps(cp.details()))
                os.replace(tmp, self.checkpoint_path)
            except OSError as exc:
                raise ChainError(f"cannot write {self.checkpoint_path}: {exc.strerror}") from exc
        return sealed

    def close(self) -> None:
        """Write a final checkpoint (when signing and anything is unsigned), then close.

        A log closed this way ends with a checkpoint, which ``hoshu audit verify``
        requires; if the checkpoint cannot be written the log is closed anyway and
        verification reports its unsigned tail.
        """
        with self._lock:
            if self._closed:
                return
            if self._state.unsigned:
                try:
                    self._store(self._state.seal([], force_checkpoint=True))
                    if self._fsync:
                        os.fsync(self._fd)
                except (ChainError, OSError):
                    pass
            self._closed = True
            for fd in (self._fd, self._head_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self) -> ChainLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
