"""The hash-chained audit log in PostgreSQL: one chain per broker replica.

A Container Apps replica loses its disk when it restarts, so with
``audit_store = "postgres"`` the chain and the shipping cursors live in the
database instead of ``data_dir/audit``.  The rules are the file log's
(:class:`audit.chain.ChainState` numbers, hashes and signs; :func:`audit.verify.verify_lines`
checks), only the storage differs.

Tables (created here, beside the index's, with ``checkfirst``)::

    audit_chains         chain_id PK, seq, hash, checkpoint_seq, checkpoint (JSON)
    audit_chain_events   (chain_id, seq) PK, prev_hash, hash, record (the event JSON)
    audit_chain_cursors  (chain_id, sink) PK, seq, hash, version

Each replica writes its own chain (``chain_id`` = ``replica_id``), so replicas
never wait for each other; a second writer of the same chain is refused (a
session advisory lock held by the writer's connection, released by PostgreSQL
when that connection ends, also when the process is killed), and the head row
is updated only from the position it was read at, so a chain can never fork.

Durability: :meth:`PgChainLog.emit` returns only once the event is committed.
Concurrent emitters share one transaction (group commit): each emitter renders
its event's canonical JSON in its own thread (:func:`audit.chain.prepare`) and
queues it; a writer thread takes everything queued (lingering up to ``LINGER_S``
for the emitters the last commit answered), numbers and hashes it, and sends it as
one statement (the head row moved from where it stood, the events inserted from
arrays) that is its own transaction.  The writer's one session runs in pipeline
mode: it sends the next batch while the last one's commit is still being flushed
(``PIPELINE_DEPTH`` batches in flight), so the database never waits for the
writer.  The next batch's head update starts from the head the last one writes, so
if that one fails, the next cannot commit either, and the emitters of both get the
error; an emitter is answered only once its own batch's commit has returned.  If
the database does not answer, the waiters get :class:`~audit.errors.ChainError`
within ``commit_timeout_s`` (fail closed: the caller's action fails, as when the
file log cannot be written); the next batch reconnects and reads the head again.
An event whose emitter gave up waiting may still be committed (more is logged,
never less).

Errors: :class:`~audit.errors.ChainError` (store unreachable, head and tail
disagree at open) and its :class:`ChainBusy` (another live writer holds the chain);
:class:`~audit.outbox.OutboxCorrupt` (a cursor names a position the chain
does not hold with that hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import select as io_select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg import pq
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from audit.chain import ChainState, Prepared, Sealed, prepare
from audit.engines import PasswordSource, create_engine, create_schema, sqlalchemy_url
from audit.errors import ChainError, InvalidEvent
from audit.events import AuditEvent, utc_now
from audit.outbox import Cursor, OutboxCorrupt, OutboxError, check_sink_name
from audit.signing import Checkpoint, CheckpointSigner, TrustedKeys
from audit.verify import GENESIS, VerifyResult, verify_lines

METADATA = MetaData()
chains_table = Table(
    "audit_chains",
    METADATA,
    Column("chain_id", String(128), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("checkpoint_seq", BigInteger, nullable=True),  # position the newest one covers
    Column("checkpoint", Text, nullable=True),  # its details (JSON)
    Column("hostname", String(255), nullable=True),
)
chain_events_table = Table(
    "audit_chain_events",
    METADATA,
    Column("chain_id", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("record", Text, nullable=False),  # canonical JSON, ChainHash included
    PrimaryKeyConstraint("chain_id", "seq"),
)
cursors_table = Table(
    "audit_chain_cursors",
    METADATA,
    Column("chain_id", String(128), nullable=False),
    Column("sink", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),  # grows on every save
    PrimaryKeyConstraint("chain_id", "sink"),
)

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 10_000
MAX_BATCH_EVENTS = 10_000
CLOSE_TIMEOUT_S = 3.0
LINGER_S = 0.001  # how long a commit may wait for the emitters the last one answered
RELOCK_WAIT_S = 3.0  # after a dropped connection: how long its old session may keep the lock
PIPELINE_DEPTH = 2  # batches sent and not yet answered (the server works while one commits)
STORE_TIMEOUT_S = STATEMENT_TIMEOUT_MS / 1000 + 2  # a batch unanswered this long: session dropped
MAX_CHAIN_ID = 128


def store_engine(url: str, *, password: PasswordSource | None = None) -> Engine:
    """An engine on the audit store whose every read and write is bounded in time:
    connecting (5 s), each statement (10 s) and unacknowledged TCP data (10 s, both
    ends); ``password`` signs each new connection in (Entra ID) as for the index."""
    url = sqlalchemy_url(url)
    if not url.startswith("postgresql"):
        raise ChainError("the audit store needs a PostgreSQL URL (postgresql://...)")
    engine = create_engine(
        url,
        password=password,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            # the server drops a silent client within ~25 s too, so a partitioned writer's
            # chain lock does not outlive it by hours (TCP keepalive defaults)
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c tcp_keepalives_idle=10 "
            "-c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 "
            f"-c tcp_user_timeout={STATEMENT_TIMEOUT_MS}",
            "tcp_user_timeout": STATEMENT_TIMEOUT_MS,
        },
    )
    try:
        create_tables(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise ChainError(f"audit store unreachable: {type(exc).__name__}: {exc}"[:500]) from exc
    return engine


def create_tables(engine: Engine) -> None:
    create_schema(engine, METADATA, "audit_chains")


def _check_chain_id(chain_id: str) -> str:
    if not chain_id or len(chain_id) > MAX_CHAIN_ID or not chain_id.isprintable():
        raise ChainError(f"invalid audit chain id {chain_id!r} (the replica id)")
    return chain_id


def _lock_key(chain_id: str) -> int:
    digest = hashlib.sha256(b"hoshu-audit-chain\n" + chain_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _one(cur: psycopg.Cursor[Any]) -> Any:
    row = cur.fetchone()
    if row is None:
        raise ChainError("the audit store returned no row")
    return row


# The batch statement: the head row moves from where this writer left it (compare and
# set) and the events are inserted only if it did.  Sent in pipeline mode, each batch
# its own implicit transaction (committed at its Sync), so the CAS of batch N+1 starts
# from the head batch N writes: if N did not commit, N+1 inserts nothing either.
_STORE = b"""
WITH head AS (
    UPDATE audit_chains SET seq = $2, hash = $3,
        checkpoint_seq = COALESCE($4, checkpoint_seq),
        checkpoint = COALESCE($5, checkpoint)
    WHERE chain_id = $1 AND seq = $6 AND hash = $7
    RETURNING 1
), ins AS (
    INSERT INTO audit_chain_events (chain_id, seq, prev_hash, hash, record)
    SELECT $1, e.seq, e.prev, e.hash, e.record
    FROM unnest($8::bigint[], $9::text[], $10::text[], $11::text[])
        AS e(seq, prev, hash, record)
    WHERE EXISTS (SELECT 1 FROM head)
    RETURNING 1
)
SELECT count(*) FROM ins
"""
_TEXT, _INT8, _INT8_ARRAY, _TEXT_ARRAY = 25, 20, 1016, 1009  # type oids
_STORE_TYPES = [_TEXT, _INT8, _TEXT, _INT8, _TEXT, _INT8, _TEXT] + [_INT8_ARRAY] + [_TEXT_ARRAY] * 3
_BINARY = [1] * len(_STORE_TYPES)
_ARRAY_HEAD = struct.Struct("!iiIii")  # dimensions, has nulls, element type, length, lower bound
_INT8_ITEM = struct.Struct("!iq")
_LENGTH = struct.Struct("!i")
_INT8_VALUE = struct.Struct("!q")


def _int8_array(values: Sequence[int]) -> bytes:
    """A bigint[] in PostgreSQL's binary array format."""
    item = _INT8_ITEM.pack
    return _ARRAY_HEAD.pack(1, 0, _INT8, len(values), 1) + b"".join([item(8, v) for v in values])


def _text_array(values: Sequence[bytes]) -> bytes:
    """A text[] (UTF-8 elements) in PostgreSQL's binary array format."""
    length = _LENGTH.pack
    parts = [_ARRAY_HEAD.pack(1, 0, _TEXT, len(values), 1)]
    for v in values:
        parts += (length(len(v)), v)
    return b"".join(parts)


class ChainBusy(ChainError):
    """Another live process holds the chain's writer lock."""


class _Done:
    """Set once by the writer thread, waited on by one emitter: a bare lock, the
    cheapest wake-up CPython has (an emit per event pays for one)."""

    __slots__ = ("_flag", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._flag = False

    def set(self) -> None:  # the writer thread only
        if not self._flag:
            self._flag = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float) -> bool:
        return self._flag or self._lock.acquire(timeout=max(0.0, timeout)) or self._flag


@dataclass(eq=False)
class _Request:
    events: Sequence[AuditEvent | Prepared]
    force: bool = False
    done: _Done = field(default_factory=_Done)
    stored: list[AuditEvent] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    error: Exception | None = None
    abandoned: bool = False


@dataclass(eq=False, slots=True)
class _Flight:
    """A batch sent and not yet answered: its requests, where the chain stands after it
    and how many rows its statement must insert."""

    sealed: list[tuple[_Request, Sealed]]
    after: Sealed
    rows: int
    deadline: float


class _Pipeline:
    """The writer's session in libpq pipeline mode: a batch is sent without waiting
    for the one before it to commit; answers come back in order, one per batch, each
    only once that batch's transaction has committed (its Sync answered).  Nothing here
    blocks without a deadline."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.pg = conn.pgconn
        self.name = f"hoshu_chain_{secrets.token_hex(6)}".encode()
        res = self.pg.prepare(self.name, _STORE, _STORE_TYPES)
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise ChainError(f"audit store: {_error(res)}")
        self.pg.nonblocking = 1
        self.pg.enter_pipeline_mode()
        self.fd = self.pg.socket
        self._count: int | None = None
        self._error: str | None = None

    def send(self, params: list[bytes | None], deadline: float) -> None:
        self.pg.send_query_prepared(self.name, params, _BINARY)
        self.pg.pipeline_sync()
        while self.pg.flush():  # a large batch: the server reads while it works
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChainError("audit store did not take the batch in time")
            poller = io_select.poll()
            poller.register(self.fd, io_select.POLLIN | io_select.POLLOUT)
            if any(ev & io_select.POLLIN for _, ev in poller.poll(left * 1000)):
                self.pg.consume_input()  # answers of earlier batches: keep them flowing

    def answers(self) -> Iterator[int | str]:
        """The outcomes that have arrived, oldest first: the rows a batch inserted, or
        the server's error for it.  Raises when the session failed."""
        self.pg.consume_input()
        ended = False  # the last result was the end of one statement's results
        while not self.pg.is_busy():
            res = self.pg.get_result()
            if res is None:
                if self.pg.status == pq.ConnStatus.BAD:
                    raise ChainError("audit store: the session ended")
                if ended or (self._count is None and self._error is None):
                    return  # nothing more has arrived
                ended = True
                continue
            ended = False
            status = res.status
            if status == pq.ExecStatus.PIPELINE_SYNC:
                count, error, self._count, self._error = self._count, self._error, None, None
                yield error if error is not None else -1 if count is None else count
            elif status == pq.ExecStatus.TUPLES_OK:
                value = res.get_value(0, 0)
                self._count = int(value) if value is not None else -1
            elif status == pq.ExecStatus.FATAL_ERROR:
                self._error = _error(res)
            elif status == pq.ExecStatus.PIPELINE_ABORTED:
                self._error = "the batch was aborted"
            else:
                self._error = f"unexpected answer {pq.ExecStatus(status).name}"

    def leave(self, conn: psycopg.Connection[Any]) -> None:
        """Back to a plain session (nothing may be in flight)."""
        self.pg.exit_pipeline_mode()
        self.pg.nonblocking = 0
        conn.execute(f"DEALLOCATE {self.name.decode()}")


def _error(res: pq.abc.PGresult) -> str:
    return res.error_message.decode(errors="replace").strip()[:500] or "error"


class PgChainLog:
    """This replica's chain in PostgreSQL; an :class:`~audit.emitter.Emitter`.

    ``emit`` returns once the event is committed; it raises
    :class:`ChainError` if it could not be within ``commit_timeout_s`` (callers
    of enforced actions must stop) and :class:`InvalidEvent` for an oversized
    event.  Opening refuses a chain another live process writes.
    """

    def __init__(
        self,
        engine: Engine,
        chain_id: str,
        *,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        clock: Callable[[], datetime] = utc_now,
        hostname: str | None = None,
        commit_timeout_s: float = 20.0,
        lock_wait_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.chain_id = _check_chain_id(chain_id)
        self.hostname = hostname
        self.path = f"postgres:{chain_id}"  # how reports and status name this log
        self._signer = signer
        self._cp_every = max(1, checkpoint_every)
        self._cp_interval = checkpoint_interval_s
        self._clock = clock
        self._timeout = commit_timeout_s
        self._key = _lock_key(chain_id)
        self._listeners: list[Callable[[int], None]] = []
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._want = 0  # the writer sleeps until this many requests are queued (0: not)
        self._closing = False
        self._closed = False
        self._fairy: PoolProxiedConnection | None = None  # the pool's handle on it
        self._conn: psycopg.Connection[Any] | None = None  # holds the writer lock
        self._pipe: _Pipeline | None = None
        self._flights: deque[_Flight] = deque()
        self._state: ChainState | None = None
        self._committed = 0
        self._dropped_at = -RELOCK_WAIT_S  # when this writer last dropped its connection
        self.commits = 0  # transactions committed (group commit: fewer than events)
        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                self._connect()  # fail closed at start: no store, no broker
                break
            except ChainBusy:
                # another broker may be finishing a dead chain's shipping (audit.pgship)
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
        # emitters wake the writer through a pipe, so it can wait for them and for the
        # database's answers at once
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(
            target=self._run, name=f"audit-chain-{chain_id}", daemon=True
        )
        self._thread.start()

    # --- the emitter --------------------------------------------------------------

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(seq)`` after each commit (shippers wake on it); must not block."""
        self._listeners.append(listener)

    @property
    def checkpoint_every(self) -> int | None:
        return self._cp_every if self._signer is not None else None

    @property
    def seq(self) -> int:
        """The last committed position."""
        return self._committed

    @property
    def synced_seq(self) -> int:
        return self._committed

    @property
    def last_hash(self) -> str:
        state = self._state
        return state.hash if state is not None else GENESIS

    def emit(self, event: AuditEvent) -> AuditEvent:
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditEvent]:
        """Append events in order; returns them chained, once committed."""
        # rendered here, in the emitter's thread, while the writer waits on the database
        return self._submit(_Request([prepare(e) for e in events])).stored

    def checkpoint(self) -> Checkpoint | None:
        """Commit a signed checkpoint now if anything is unsigned."""
        return self._submit(_Request([], force=True)).checkpoint

    def maybe_checkpoint(self) -> Checkpoint | None:
        """Commit a checkpoint if the interval has passed (called periodically)."""
        return self._submit(_Request([])).checkpoint

    def _submit(self, req: _Request, timeout: float | None = None) -> _Request:
        with self._cond:
            if self._closing:
                raise ChainError(f"audit chain {self.chain_id} is closed")
            self._queue.append(req)
            if self._want and len(self._queue) >= self._want:
                self._want = 0
                self._wake()
        wait = self._timeout if timeout is None else timeout
        if not req.done.wait(wait):
            with self._cond:
                req.abandoned = True
            if not req.done.is_set():
                raise ChainError(f"audit store did not commit within {wait:g} s")
        if req.error is not None:
            raise req.error
        return req

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake_w, b"\0")

    # --- the writer thread ----------------------------------------------------------

    def _run(self) -> None:
        """Send each batch as soon as one is gathered and a slot in the pipeline is
        free (``PIPELINE_DEPTH`` batches in flight), and answer each batch's emitters
        once its own commit has returned."""
        released, done_at = 0, 0.0  # emitters the last commit answered, and when
        while True:
            batch: list[_Request] = []
            timeout: float | None = None
            with self._cond:
                queued, closing = len(self._queue), self._closing
                room = len(self._flights) < PIPELINE_DEPTH
                # the emitters just answered are likely to emit again at once: wait a
                # moment (LINGER_S at most) for them, so they share the next commit
                # instead of half of them waiting a whole commit more
                linger = 0.0
                if released > 1 and queued < released and not closing:
                    linger = done_at + LINGER_S - time.monotonic()
                if queued and room and linger <= 0:
                    batch = self._take()
                elif not queued and closing and not self._flights:
                    return
                else:
                    self._want = (released if linger > 0 and queued else 1) if room else 0
                    if self._want and queued:
                        timeout = linger
            if batch:
                self._send(batch)
                continue
            if self._flights:
                left = self._flights[0].deadline - time.monotonic()
                timeout = left if timeout is None else min(timeout, left)
            self._sleep(timeout)
            with self._cond:
                self._want = 0
            if self._flights:
                answered = self._collect()
                if answered:
                    released, done_at = answered, time.monotonic()

    def _take(self) -> list[_Request]:
        """Everything queued (up to ``MAX_BATCH_EVENTS``) that its emitter still waits for."""
        queue, count, taken = self._queue, 0, 0
        for req in queue:
            if count >= MAX_BATCH_EVENTS:
                break
            taken += 1
            count += len(req.events) + 1
        self._queue = queue[taken:]
        return [req for req in queue[:taken] if not req.abandoned]

    def _sleep(self, timeout: float | None) -> None:
        """Until an emitter wakes the writer, the database answers, or ``timeout``."""
        poller = io_select.poll()
        poller.register(self._wake_r, io_select.POLLIN)
        pipe = self._pipe
        if self._flights and pipe is not None:
            poller.register(pipe.fd, io_select.POLLIN)
        poller.poll(None if timeout is None else max(0.0, timeout) * 1000)
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)

    def _send(self, batch: list[_Request]) -> None:
        """Seal ``batch`` after whatever is in flight and send it, without waiting."""
        sealed: list[tuple[_Request, Sealed]] = []
        try:
            # a new connection only when nothing is in flight on the old one
            state = self._reconnect() if not self._flights else self._state
            assert state is not None
            after: Sealed | None = self._flights[-1].after if self._flights else None
            for req in batch:
                try:
                    s = state.seal(req.events, force_checkpoint=req.force, after=after)
                except InvalidEvent as exc:
                    req.error = exc
                    req.done.set()
                    continue
                sealed.append((req, s))
                after = s
            links = [k for _, s in sealed for k in s.links]
            if after is None or not links:
                for req, _ in sealed:  # nothing to store (no checkpoint was due)
                    req.done.set()
                return
            cp = next((s.checkpoint for _, s in reversed(sealed) if s.checkpoint), None)
            old = self._flights[-1].after if self._flights else None
            old_seq, old_hash = (old.seq, old.hash) if old else (state.seq, state.hash)
            params: list[bytes | None] = [
                self.chain_id.encode(),
                _INT8_VALUE.pack(after.seq),
                after.hash.encode(),
                _INT8_VALUE.pack(cp.seq) if cp else None,
                json.dumps(cp.details()).encode() if cp else None,
                _INT8_VALUE.pack(old_seq),
                old_hash.encode(),
                _int8_array([k.seq for k in links]),
                _text_array([k.prev.encode() for k in links]),
                _text_array([k.hash.encode() for k in links]),
                _text_array([k.line[:-1] for k in links]),
            ]
            deadline = time.monotonic() + STORE_TIMEOUT_S
            pipe = self._pipe
            assert pipe is not None
            pipe.send(params, deadline)
            self._flights.append(_Flight(sealed, after, len(links), deadline))
        except Exception as exc:  # fails closed, with everything in flight before it
            self._fail(exc, [req for req, _ in sealed])

    def _collect(self) -> int:
        """Answer the emitters of every batch whose commit has returned; the number of
        requests answered.  A failed batch fails those after it too (their compare and
        set started from its head), and the session is dropped."""
        answered = 0
        pipe = self._pipe
        try:
            assert pipe is not None
            for outcome in pipe.answers():
                flight = self._flights[0]
                if isinstance(outcome, str):
                    raise ChainError(f"audit store: {outcome}")
                if outcome != flight.rows:
                    raise ChainError(f"audit chain {self.chain_id} moved under this writer")
                self._flights.popleft()
                answered += self._acknowledge(flight)
                if not self._flights:
                    break
            if self._flights and time.monotonic() >= self._flights[0].deadline:
                raise ChainError(f"audit store did not answer within {STORE_TIMEOUT_S:g} s")
        except Exception as exc:
            self._fail(exc, [])
        return answered

    def _acknowledge(self, flight: _Flight) -> int:
        state = self._state
        assert state is not None
        state.advance(flight.after)
        self._committed = flight.after.seq
        self.commits += 1
        for req, s in flight.sealed:
            req.stored = [k.event for k in s.links if k.checkpoint is None]
            req.checkpoint = s.checkpoint
            req.done.set()
        for listener in self._listeners:
            listener(flight.after.seq)
        return len(flight.sealed)

    def _fail(self, exc: Exception, requests: list[_Request]) -> None:
        """Every batch in flight and ``requests`` fail closed; the session is dropped (the
        next batch reconnects and reads the head again)."""
        err = (
            exc
            if isinstance(exc, ChainError)
            else ChainError(f"audit store: {type(exc).__name__}: {exc}"[:500])
        )
        flights, self._flights = self._flights, deque()
        self._drop()
        for req in [r for f in flights for r, _ in f.sealed] + requests:
            if not req.done.is_set():
                req.error = err
                req.done.set()

    def _connect(self) -> ChainState:
        """The writer's connection (taking the chain's lock) and the chain's state as
        stored; on a new connection the head is read again (it is authoritative)."""
        if self._conn is not None and self._state is not None:
            return self._state
        try:
            fairy = self.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise ChainError(f"audit store unreachable: {exc}"[:500]) from exc
        conn = cast("psycopg.Connection[Any]", fairy.driver_connection)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
                if not _one(cur)[0]:
                    raise ChainBusy(
                        f"audit chain {self.chain_id} is being written by another "
                        "broker process (is replica_id unique?)"
                    )
                cur.execute(
                    "INSERT INTO audit_chains (chain_id, seq, hash, hostname) "
                    "VALUES (%s, 0, %s, %s) ON CONFLICT (chain_id) DO NOTHING",
                    (self.chain_id, GENESIS, self.hostname),
                )
                cur.execute(
                    "SELECT seq, hash, checkpoint_seq FROM audit_chains WHERE chain_id = %s",
                    (self.chain_id,),
                )
                seq, head, cp_seq = _one(cur)
                cur.execute(
                    "SELECT seq, hash FROM audit_chain_events WHERE chain_id = %s "
                    "ORDER BY seq DESC LIMIT 1",
                    (self.chain_id,),
                )
                tail = cur.fetchone() or (0, GENESIS)
            conn.commit()
            if (int(tail[0]), tail[1]) != (int(seq), head):
                raise ChainError(
                    f"audit chain {self.chain_id} fails verification: its head "
                    f"says position {seq} but the last stored event is "
                    f"{tail[0]} (run hoshu audit verify)"
                )
            conn.autocommit = True  # each batch is its own transaction
            pipe = _Pipeline(conn)
        except ChainError:
            fairy.invalidate()
            raise
        except Exception as exc:
            fairy.invalidate()
            raise ChainError(f"audit store: {type(exc).__name__}: {exc}"[:500]) from exc
        self._fairy, self._conn, self._pipe = fairy, conn, pipe
        state = self._state
        if state is None or (state.seq, state.hash) != (int(seq), head):
            state = ChainState(
                int(seq),
                head,
                signer=self._signer,
                checkpoint_every=self._cp_every,
                checkpoint_interval_s=self._cp_interval,
                clock=self._clock,
                hostname=self.hostname,
                last_checkpoint_seq=None if cp_seq is None else int(cp_seq),
            )
        self._state = state
        self._committed = state.seq
        return state

    def _reconnect(self) -> ChainState:
        """:meth:`_connect`; just after this writer dropped a broken connection, the
        server may not have ended that session yet, and it still holds the chain's lock:
        wait for it (``RELOCK_WAIT_S`` after the drop at most) instead of failing the batch."""
        while True:
            try:
                return self._connect()
            except ChainBusy:
                if time.monotonic() - self._dropped_at >= RELOCK_WAIT_S:
                    raise
                time.sleep(0.05)

    def _drop(self) -> None:
        self._dropped_at = time.monotonic()
        fairy, self._fairy, self._conn, self._state = self._fairy, None, None, None
        self._pipe = None
        if fairy is not None:
            with contextlib.suppress(Exception):  # already broken
                fairy.invalidate()  # closes it: the lock goes with it

    def close(self) -> None:
        """Commit a final checkpoint (when anything is unsigned), then release the chain."""
        if self._closed:
            return
        # bounded apart from emits: a broker draining on SIGTERM must exit within its grace
        wait = min(self._timeout, CLOSE_TIMEOUT_S)
        try:
            if self._signer is not None:
                self._submit(_Request([], force=True), wait)
        except ChainError:
            pass  # the next writer of this chain (or audit.pgship) signs the tail
        with self._cond:
            self._closing = True
            self._wake()
        self._thread.join(wait)
        self._closed = True
        if self._thread.is_alive():
            return  # stuck on the database: the session ends with the process
        os.close(self._wake_r)
        os.close(self._wake_w)
        conn, fairy, pipe = self._conn, self._fairy, self._pipe
        if conn is not None and fairy is not None and pipe is not None:
            try:
                pipe.leave(conn)
                conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
                conn.autocommit = False
                fairy.close()  # back to the pool, unlocked
                self._fairy = self._conn = self._pipe = None
            except Exception:
                self._drop()

    def __enter__(self) -> PgChainLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- shipping: the outbox is "every row after my cursor" -----------------------------


class PgOutbox:
    """One chain's events in order, for a shipper (the file log's ``read_batch``)."""

    def __init__(self, engine: Engine, chain_id: str) -> None:
        self.engine = engine
        self.chain_id = _check_chain_id(chain_id)

    def read_batch(self, cursor: Cursor, limit: int) -> tuple[list[dict[str, Any]], Cursor]:
        """Up to ``limit`` events after ``cursor`` and the cursor after them; the cursor
        must name a stored position with its hash (else :class:`OutboxCorrupt`)."""
        t = chain_events_table.c
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(t.seq, t.hash, t.record)
                    .where(t.chain_id == self.chain_id, t.seq >= max(1, cursor.seq))
                    .order_by(t.seq)
                    .limit(limit + 1)
                ).all()
        except SQLAlchemyError as exc:
            raise OutboxError(f"audit store: {type(exc).__name__}"[:200]) from exc
        if cursor.seq > 0:
            if (
                not rows
                or rows[0].seq != cursor.seq
                or (cursor.hash and rows[0].hash != cursor.hash)
            ):
                raise OutboxCorrupt(
                    f"cursor at position {cursor.seq} does not match chain {self.chain_id}"
                )
            rows = rows[1:]
        out: list[dict[str, Any]] = []
        last, expected = cursor, cursor.seq + 1
        for row in rows[:limit]:
            if row.seq != expected:
                raise OutboxCorrupt(
                    f"chain {self.chain_id}: expected position {expected}, found {row.seq}"
                )
            try:
                record = json.loads(row.record)
            except ValueError as exc:
                raise OutboxCorrupt(
                    f"chain {self.chain_id}: unreadable event at position {row.seq}"
                ) from exc
            out.append(record)
            last, expected = Cursor(row.seq, 0, row.hash), expected + 1
        return out, last

    def head_seq(self) -> int:
        try:
            with self.engine.connect() as conn:
                return int(
                    conn.scalar(
                        select(chains_table.c.seq).where(chains_table.c.chain_id == self.chain_id)
                    )
                    or 0
                )
        except SQLAlchemyError:
            return 0


class PgCursorStore:
    """Each sink's acknowledged position in one chain, as rows (``audit_chain_cursors``)."""

    def __init__(self, engine: Engine, chain_id: str) -> None:
        self.engine = engine
        self.chain_id = _check_chain_id(chain_id)

    def load(self, sink: str) -> Cursor:
        check_sink_name(sink)
        t = cursors_table.c
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(t.seq, t.hash).where(t.chain_id == self.chain_id, t.sink == sink)
                ).first()
        except SQLAlchemyError as exc:
            raise OutboxError(
                f"cannot read the cursor of sink {sink!r}: {type(exc).__name__}"
            ) from exc
        if row is None:
            return Cursor()
        if row.seq < 0:
            raise OutboxCorrupt(f"cursor of sink {sink!r} in chain {self.chain_id} is invalid")
        return Cursor(int(row.seq), 0, str(row.hash))

    def save(self, sink: str, c: Cursor) -> None:
        check_sink_name(sink)
        stmt = pg_insert(cursors_table).values(
            chain_id=self.chain_id, sink=sink, seq=c.seq, hash=c.hash, version=1
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["chain_id", "sink"],
            set_={"seq": c.seq, "hash": c.hash, "version": cursors_table.c.version + 1},
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt)
        except SQLAlchemyError as exc:
            raise OutboxError(
                f"cannot save the cursor of sink {sink!r}: {type(exc).__name__}"
            ) from exc

    def stamp(self, sink: str) -> tuple[int, ...]:
        """Changes whenever the cursor is saved (an operator's reset shows)."""
        t = cursors_table.c
        try:
            with self.engine.connect() as conn:
                v = conn.scalar(
                    select(t.version).where(t.chain_id == self.chain_id, t.sink == sink)
                )
        except SQLAlchemyError:
            return (-1,)
        return (int(v) if v is not None else -1,)

    def sinks(self) -> list[str]:
        t = cursors_table.c
        with self.engine.connect() as conn:
            return list(
                conn.scalars(select(t.sink).where(t.chain_id == self.chain_id).order_by(t.sink))
            )


def reset_pg_cursor(store: PgCursorStore, sink: str, seq: int) -> Cursor:
    """Operator action: point a sink's cursor at ``seq`` (0 = re-send everything)."""
    cursor = Cursor()
    if seq > 0:
        t = chain_events_table.c
        with store.engine.connect() as conn:
            h = conn.scalar(select(t.hash).where(t.chain_id == store.chain_id, t.seq == seq))
        if h is None:
            raise OutboxError(f"chain {store.chain_id} has no position {seq}")
        cursor = Cursor(seq, 0, str(h))
    store.save(sink, cursor)
    return cursor


# --- verification ------------------------------------------------------------------


def chain_ids(engine: Engine) -> list[str]:
    """Every chain in the store (one per replica that ever wrote)."""
    with engine.connect() as conn:
        return list(conn.scalars(select(chains_table.c.chain_id).order_by(chains_table.c.chain_id)))


def _lines(engine: Engine, chain_id: str, problems: list[tuple[int, str]]) -> Iterator[bytes]:
    """The chain's records in order as lines; a row whose columns disagree with its
    record ends the stream with a problem noted."""
    t = chain_events_table.c
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=5000).execute(
            select(t.seq, t.prev_hash, t.hash, t.record)
            .where(t.chain_id == chain_id)
            .order_by(t.seq)
        )
        prev, expected = GENESIS, 1
        for row in rows:
            if row.seq != expected or row.prev_hash != prev:
                problems.append(
                    (
                        expected,
                        f"position {expected} of chain {chain_id} is "
                        "missing or out of order: deleted or inserted",
                    )
                )
                return
            line = row.record.encode() + b"\n"
            if f'"ChainHash":"{row.hash}"'.encode() not in line:
                problems.append(
                    (
                        row.seq,
                        f"position {row.seq} of chain {chain_id}: the hash "
                        "column disagrees with the record: edited",
                    )
                )
                return
            prev, expected = row.hash, expected + 1
            yield line


def verify_chain(
    engine: Engine,
    chain_id: str,
    *,
    keys: TrustedKeys | None = None,
    checkpoints: Sequence[Checkpoint] = (),
    checkpoint_every: int | None = None,
    closed: bool = False,
    upto: int | None = None,
) -> VerifyResult:
    """:func:`audit.verify.verify` for one chain in the store: the same rules, with the
    head row as the ``.head`` file and its newest checkpoint as the ``.checkpoint`` file."""
    c = chains_table.c
    try:
        with engine.connect() as conn:
            head = conn.execute(
                select(c.seq, c.hash, c.checkpoint).where(c.chain_id == chain_id)
            ).first()
    except SQLAlchemyError as exc:
        raise ChainError(f"audit store: {type(exc).__name__}: {exc}"[:500]) from exc
    if head is None:
        return VerifyResult(False, 0, GENESIS, 1, f"there is no audit chain {chain_id!r}")
    side = Checkpoint.from_details(json.loads(head.checkpoint)) if head.checkpoint else None
    problems: list[tuple[int, str]] = []
    try:
        result = verify_lines(
            _lines(engine, chain_id, problems),
            head=None if upto is not None else (int(head.seq), str(head.hash)),
            keys=keys,
            checkpoints=checkpoints,
            upto=upto,
            checkpoint_every=checkpoint_every,
            closed=closed,
            side=side,
            side_required=True,
            side_name="the chain's head row checkpoint",
        )
    except SQLAlchemyError as exc:
        raise ChainError(f"audit store: {type(exc).__name__}: {exc}"[:500]) from exc
    if problems and (result.ok or (result.first_bad or 0) >= problems[0][0]):
        pos, why = problems[0]
        return VerifyResult(
            False,
            result.count,
            result.last_hash,
            pos,
            why,
            result.checkpoints,
            keys is not None,
            result.last_checkpoint,
            result.unsigned_tail,
        )
    return result


def count_events(engine: Engine, chain_id: str) -> int:
    t = chain_events_table.c
    with engine.connect() as conn:
        return int(
            conn.scalar(
                select(func.count()).select_from(chain_events_table).where(t.chain_id == chain_id)
            )
            or 0
        )
