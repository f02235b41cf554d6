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
Concurrent emitters share one transaction (group commit): a writer thread
takes everything queued, stores it with one ``COPY``, updates the head row,
commits, and wakes the waiters.  If the database does not answer, the waiters
get :class:`~audit.errors.ChainError` within ``commit_timeout_s`` (fail closed:
the caller's action fails, as when the file log cannot be written); the next
batch reconnects and reads the head again.  An event whose emitter gave up
waiting may still be committed (more is logged, never less).

Errors: :class:`~audit.errors.ChainError` (store unreachable, head and tail
disagree at open) and its :class:`ChainBusy` (another live writer holds the chain);
:class:`~audit.outbox.OutboxCorrupt` (a cursor names a position the chain
does not hold with that hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import psycopg
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

from audit.chain import ChainState, Sealed
from audit.engines import PasswordSource, create_engine, sqlalchemy_url
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
    METADATA.create_all(engine, checkfirst=True)


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


_STORE = """
WITH head AS (
    UPDATE audit_chains SET seq = %(seq)s, hash = %(hash)s,
        checkpoint_seq = COALESCE(%(cp_seq)s, checkpoint_seq),
        checkpoint = COALESCE(%(cp)s, checkpoint)
    WHERE chain_id = %(chain)s AND seq = %(old_seq)s AND hash = %(old_hash)s
    RETURNING 1
), ins AS (
    INSERT INTO audit_chain_events (chain_id, seq, prev_hash, hash, record)
    SELECT %(chain)s, e.seq, e.prev, e.hash, e.record
    FROM unnest(%(seqs)b::bigint[], %(prevs)b::text[], %(hashes)b::text[],
                %(records)b::text[]) AS e(seq, prev, hash, record)
    WHERE EXISTS (SELECT 1 FROM head)
    RETURNING 1
)
SELECT count(*) FROM ins
"""


class ChainBusy(ChainError):
    """Another live process holds the chain's writer lock."""


@dataclass(eq=False)
class _Request:
    events: Sequence[AuditEvent]
    force: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    stored: list[AuditEvent] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    error: Exception | None = None
    abandoned: bool = False


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
        self._closing = False
        self._closed = False
        self._fairy: PoolProxiedConnection | None = None  # the pool's handle on it
        self._conn: psycopg.Connection[Any] | None = None  # holds the writer lock
        self._state: ChainState | None = None
        self._committed = 0
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
        return self._submit(_Request(list(events))).stored

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
            self._cond.notify()
        wait = self._timeout if timeout is None else timeout
        if not req.done.wait(wait):
            with self._cond:
                req.abandoned = True
            if not req.done.is_set():
                raise ChainError(f"audit store did not commit within {wait:g} s")
        if req.error is not None:
            raise req.error
        return req

    # --- the writer thread ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                batch: list[_Request] = []
                count = 0
                while self._queue and count < MAX_BATCH_EVENTS:
                    req = self._queue.pop(0)
                    if not req.abandoned:
                        batch.append(req)
                        count += len(req.events) + 1
                closing = self._closing and not self._queue
            if batch:
                self._commit(batch)
            if closing:
                return

    def _commit(self, batch: list[_Request]) -> None:
        sealed: list[tuple[_Request, Sealed]] = []
        try:
            state = self._connect()
            after: Sealed | None = None
            for req in batch:
                try:
                    s = state.seal(req.events, force_checkpoint=req.force, after=after)
                except InvalidEvent as exc:
                    req.error = exc
                    req.done.set()
                    continue
                sealed.append((req, s))
                after = s
            if after is None:
                return
            if after.links:
                self._store(state, [s for _, s in sealed], after)
        except Exception as exc:  # any failure: this batch fails closed, reconnect next time
            self._drop()
            err = (
                exc
                if isinstance(exc, ChainError)
                else ChainError(f"audit store: {type(exc).__name__}: {exc}"[:500])
            )
            for req in batch:
                if not req.done.is_set():
                    req.error = err
                    req.done.set()
            return
        state.advance(after)
        self._committed = after.seq
        self.commits += 1
        for req, s in sealed:
            req.stored = [k.event for k in s.links if k.checkpoint is None]
            req.checkpoint = s.checkpoint
            req.done.set()
        if any(s.links for _, s in sealed):
            for listener in self._listeners:
                listener(after.seq)

    def _store(self, state: ChainState, batches: list[Sealed], last: Sealed) -> None:
        """One statement, one transaction, one round trip: the head row moves from where
        this writer left it, and the events are inserted only if it did."""
        cp = next((s.checkpoint for s in reversed(batches) if s.checkpoint), None)
        links = [k for s in batches for k in s.links]
        conn = self._conn
        assert conn is not None
        with conn.cursor() as cur:
            cur.execute(
                _STORE,
                {
                    "chain": self.chain_id,
                    "seq": last.seq,
                    "hash": last.hash,
                    "old_seq": state.seq,
                    "old_hash": state.hash,
                    "cp_seq": cp.seq if cp else None,
                    "cp": json.dumps(cp.details()) if cp else None,
                    "seqs": [k.seq for k in links],
                    "prevs": [k.prev for k in links],
                    "hashes": [k.hash for k in links],
                    "records": [k.line[:-1].decode() for k in links],
                },
            )
            row = cur.fetchone()
        conn.commit()
        if row is None or int(row[0]) != len(links):
            raise ChainError(f"audit chain {self.chain_id} moved under this writer")

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
        except ChainError:
            fairy.invalidate()
            raise
        except Exception as exc:
            fairy.invalidate()
            raise ChainError(f"audit store: {type(exc).__name__}: {exc}"[:500]) from exc
        self._fairy, self._conn = fairy, conn
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

    def _drop(self) -> None:
        fairy, self._fairy, self._conn, self._state = self._fairy, None, None, None
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
            self._cond.notify()
        self._thread.join(wait)
        self._closed = True
        conn, fairy = self._conn, self._fairy
        if conn is not None and fairy is not None:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
                conn.commit()
                fairy.close()  # back to the pool, unlocked
                self._fairy = self._conn = None
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
