"""The cluster's live sessions in the database: list, follow and terminate from any
replica, and the sessions of a replica that died are ended by a survivor.

With PostgreSQL (several replicas), each replica's :class:`~broker.live.sessions.SessionRegistry`
notes its sessions in the table :data:`broker.store.tables.LIVE_SESSIONS` through a
:class:`SessionDirectory` (its ``rows``): a row when a session starts, ``ending`` once
it stops, deleted once its ``session.ended`` is in the audit log.  The writes run on
one thread, in order, never on the event loop.  The row replaces the on-disk journal
(:mod:`broker.live.journal`) there: a replica needs no disk of its own to account for
its sessions.

Another replica (:class:`ClusterSessions`) uses the rows to

* **list** the cluster's sessions (the API and the console add them to their own);
* **terminate** one: it writes a request into the row (the caller was checked against
  the permission table first) and, in the same transaction, bumps the change feed
  (``("session", id)``: PostgreSQL NOTIFY at commit).  The owner's
  :class:`~broker.live.changes.ChangeFeed` wakes it at once; it reads its requests and
  ends the session as a local terminate does (``session.terminated`` naming the
  caller, then ``session.ended``).  A lost notification is caught by the feed's
  version re-read (``reread_s``, 2 s: a version nobody announced wakes every
  listener) and, whatever happens to the feed, by the owner's own read of its
  requests every :data:`TERMINATE_BACKSTOP_S`;
* **follow** one: it tails the session's recording in the shared recording store
  (Blob storage, appended while the session runs), so the live view lags the
  terminal by the recording's flush interval (about 1 s) plus the poll.

**Dead replicas.**  Every :data:`REAP_EVERY_S` each replica looks for rows whose owner
has a replica row (``broker_replicas``) that has not beaten for ``dead_after_s``
(15 s).  It never acts when it is not itself among the live replicas (it cannot beat:
more likely it is the one cut off).  A row is claimed by a conditional update
(compare-and-set on its state and reaper) made while holding the lock of the owner's
replica row and after reading its beat again, so exactly one survivor ends it, and
only if the owner has not come back: one ``session.ended``, reason ``replica_lost``,
with the size and SHA-256 of the recording as stored.  The row is then kept a day as
``ended`` (naming the reaper), so an owner that was only cut off learns, when it
claims the row before writing its own end (:meth:`SessionDirectory.claim_end`), that
the session's end is written already.  A replica that starts again under the same
id ends its own leftover rows the same way (reason ``broker_lost``, as the journal
does).  Sessions without a
recording (file transfers, forwards) have no end event to write: their rows just go.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from audit import new_event
from audit.emitter import Emitter
from audit.recording import RecordingFileError
from audit.recstore import RecordingStore, digest
from audit.recstore import follow as tail_recording
from broker.store.db import Change, bump_version
from broker.store.tables import LIVE_SESSIONS, REPLICAS

log = logging.getLogger(__name__)

TERMINATE_POLL_S = 0.2  # without a change feed (tests): the owner reads requests this often
TERMINATE_BACKSTOP_S = 5.0  # with the feed: the owner reads them at least this often
SESSION_CHANGE = "session"  # the change feed's kind for a terminate request
REAP_EVERY_S = 2.0
FOLLOW_POLL_S = 0.25  # how often a follower on another replica reads the recording
MAX_REMOTE_FOLLOWERS = 32  # followers of other replicas' sessions, per replica
MAX_QUEUED_WRITES = 100_000  # writes waiting for the database, at most
_MAX_CAST_LINE = 1024 * 1024
TERMINATE_REASONS = frozenset({"approver"})

LIVE, ENDING, REAPING = "live", "ending", "reaping"
ENDED = "ended"  # a reaper wrote its end; kept ENDED_KEEP_S for an owner that was cut off
ENDED_KEEP_S = 24 * 3600.0


class Terminable(Protocol):
    """The local registry, as the terminate-request watcher uses it."""

    def terminate(self, session_id: str, *, by: str, reason: str) -> bool: ...


class Feed(Protocol):
    """The change feed, as the terminate-request watcher uses it
    (:class:`broker.live.changes.ChangeFeed`)."""

    def subscribe(self, listener: Callable[[list[Change] | None], None]) -> None: ...

    def unsubscribe(self, listener: Callable[[list[Change] | None], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class RemoteSession:
    """A live session another replica runs, as the API and the console show it."""

    session_id: str
    kind: str
    user_id: str
    username: str
    instrument: str
    hospital_id: str
    grant_id: str
    port: int
    started: datetime
    grant_ends: datetime | None
    src: str
    recording: str
    replica_id: str

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "kind": self.kind,
            "user": self.username,
            "instrument": self.instrument,
            "port": self.port,
            "hospital_id": self.hospital_id,
            "grant_id": self.grant_id,
            "started": self.started.isoformat(),
            "grant_ends": self.grant_ends.isoformat() if self.grant_ends else None,
            "src": self.src,
            "replica": self.replica_id,
        }


def _remote(row: Any) -> RemoteSession:
    return RemoteSession(
        session_id=row.session_id,
        kind=row.kind,
        user_id=row.user_id,
        username=row.username,
        instrument=row.instrument,
        hospital_id=row.hospital_id,
        grant_id=row.grant_id,
        port=int(row.port),
        started=row.started,
        grant_ends=row.grant_ends,
        src=row.src,
        recording=row.recording,
        replica_id=row.replica_id,
    )


class SessionDirectory:
    """The ``live_sessions`` rows, as one replica (``replica_id``) writes and reads them.

    ``added``/``removed``/``ended`` (the registry's :class:`~broker.live.journal.SessionRows`)
    queue their write and return; the other methods block (run them on a thread)."""

    def __init__(
        self,
        engine: sa.Engine,
        replica_id: str,
        *,
        clock: Callable[[], datetime],
        emitter: Emitter,
        store: RecordingStore,
        dead_after_s: float = 15.0,
    ) -> None:
        self.engine = engine
        self.replica_id = replica_id
        self._clock = clock
        self._emitter = emitter
        self.store = store
        self._dead_after = timedelta(seconds=dead_after_s)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hoshu-sessions"
        )
        self._closed = False
        # writes not done yet, oldest first (touched on the writer thread only)
        self._queued: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )

    # --- this replica's sessions (the registry's hooks) -------------------------------

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a write; writes happen in order, and one that fails (the database away)
        is tried again, before any later one, at the next write or :meth:`retry`."""

        def run() -> None:
            if len(self._queued) >= MAX_QUEUED_WRITES:
                dropped, _ = self._queued.popleft()
                log.error(
                    "session directory: too many writes waiting, dropped %s", dropped.__name__
                )
            self._queued.append((fn, args))
            self._drain()

        if self._closed:
            return
        with contextlib.suppress(RuntimeError):  # shut down: nothing more is written
            self._pool.submit(run)

    def _drain(self) -> None:
        """On the writer thread: the queued writes, oldest first, until one fails."""
        while self._queued:
            fn, args = self._queued[0]
            try:
                fn(*args)
            except Exception as exc:  # the session goes on; its recording still holds it
                log.error(
                    "session directory write failed (%s), %d waiting: %s",
                    fn.__name__.strip("_"),
                    len(self._queued),
                    exc,
                )
                return
            self._queued.popleft()

    def retry(self) -> None:
        """Try the writes that failed again (the broker calls this every few seconds)."""
        if not self._closed:
            with contextlib.suppress(RuntimeError):
                self._pool.submit(self._drain)

    def pending(self) -> int:
        """Writes not done yet (failed ones included)."""
        return len(self._queued)

    def added(self, session: Any) -> None:
        now = self._clock()
        location = ""
        with contextlib.suppress(Exception):
            location = str(self.store.location)
        values = {
            "session_id": session.session_id,
            "replica_id": self.replica_id,
            "kind": session.kind,
            "user_id": session.user_id,
            "username": session.username,
            "hospital_id": session.hospital_id or "",
            "gateway_id": getattr(session, "gateway_id", None) or None,
            "instrument": session.instrument,
            "port": int(session.port),
            "grant_id": session.grant_id,
            "src": session.src or "",
            "started": session.started,
            "grant_ends": session.grant_ends,
            "recording": session.recording or "",
            "recording_location": location,
            "columns": {k: v for k, v in session.columns().items() if v is not None},
            "state": LIVE,
            "reaper": "",
            "updated": now,
        }
        self._later(self._insert, values)

    def _insert(self, values: dict[str, Any]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(LIVE_SESSIONS).values(**values))
        except sa.exc.IntegrityError:  # written before (a retry after a lost answer)
            log.info("session %s already in the directory", values["session_id"])

    def removed(self, session_id: str) -> None:
        self._later(self._stopped, session_id)

    def _stopped(self, session_id: str) -> None:
        s = LIVE_SESSIONS.c
        mine = (s.session_id == session_id) & (s.replica_id == self.replica_id)
        with self.engine.begin() as conn:
            # no recording, no end event to wait for: the row goes now
            conn.execute(sa.delete(LIVE_SESSIONS).where(mine & (s.recording == "")))
            conn.execute(
                sa.update(LIVE_SESSIONS)
                .where(mine & (s.state == LIVE))
                .values(state=ENDING, updated=self._clock())
            )

    def ended(self, session_id: str) -> None:
        self._later(self._delete, session_id)

    def _delete(self, session_id: str) -> None:
        s = LIVE_SESSIONS.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(LIVE_SESSIONS).where(
                    (s.session_id == session_id) & (s.replica_id == self.replica_id)
                )
            )

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until the writes queued so far are done (tests, shutdown)."""
        if not self._closed:
            self._pool.submit(lambda: None).result(timeout=timeout_s)

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)

    # --- the cluster's sessions (blocking reads) ---------------------------------------

    def find(self, session_id: str) -> RemoteSession | None:
        """A live session of any replica, or None."""
        s = LIVE_SESSIONS.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(LIVE_SESSIONS).where((s.session_id == session_id) & (s.state == LIVE))
            ).first()
        return _remote(row) if row is not None else None

    def others(self, limit: int = 5000) -> list[RemoteSession]:
        """The live sessions other replicas run (oldest first)."""
        s = LIVE_SESSIONS.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(LIVE_SESSIONS)
                .where((s.state == LIVE) & (s.replica_id != self.replica_id))
                .order_by(s.started)
                .limit(limit)
            ).all()
        return [_remote(r) for r in rows]

    def is_live(self, session_id: str) -> bool:
        s = LIVE_SESSIONS.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(s.session_id).where((s.session_id == session_id) & (s.state == LIVE))
            ).first()
        return row is not None

    def request_terminate(self, session_id: str, *, by: str, reason: str) -> datetime | None:
        """Ask the owner to end the session; when it was asked (the first request), or
        None when the session is not live.  A second request while the first is pending
        changes nothing.  The first one bumps the change feed in its transaction, so
        the owner is woken at the commit (NOTIFY)."""
        s = LIVE_SESSIONS.c
        now = self._clock()
        with self.engine.begin() as conn:
            asked = conn.execute(
                sa.update(LIVE_SESSIONS)
                .where(
                    (s.session_id == session_id) & (s.state == LIVE) & (s.terminate_at.is_(None))
                )
                .values(terminate_by=by, terminate_reason=reason, terminate_at=now, updated=now)
            ).rowcount
            if asked:
                bump_version(conn, {(SESSION_CHANGE, session_id)})
            row = conn.execute(
                sa.select(s.terminate_at).where((s.session_id == session_id) & (s.state == LIVE))
            ).first()
        return row.terminate_at if row is not None else None

    def terminations(self) -> list[tuple[str, str, str]]:
        """Terminate requests for this replica's sessions: (session id, by, reason)."""
        s = LIVE_SESSIONS.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(s.session_id, s.terminate_by, s.terminate_reason).where(
                    (s.replica_id == self.replica_id)
                    & (s.state == LIVE)
                    & (s.terminate_at.is_not(None))
                )
            ).all()
        return [(r.session_id, r.terminate_by or "", r.terminate_reason or "") for r in rows]

    # --- sessions nobody runs any more ---------------------------------------------------

    def reap(self) -> list[str]:
        """End (``replica_lost``) the sessions of replicas that stopped beating; the ids ended.

        Does nothing unless this replica is itself among the live ones.  The rows read
        here are candidates only: each is decided under the lock of its owner's replica
        row (:meth:`_claim_and_end`), so an owner that beat in between keeps it."""
        now = self._clock()
        since = now - self._dead_after
        r, s = REPLICAS.c, LIVE_SESSIONS.c
        with self.engine.connect() as conn:
            live = {
                row.replica_id
                for row in conn.execute(sa.select(r.replica_id).where(r.last_seen > since))
            }
            if self.replica_id not in live:
                return []  # no beat of our own: we may be the one cut off
            dead = sa.select(r.replica_id).where(r.last_seen <= since)
            rows = conn.execute(
                sa.select(LIVE_SESSIONS).where(
                    s.replica_id.in_(dead)
                    & (
                        s.state.in_((LIVE, ENDING))
                        | ((s.state == REAPING) & s.reaper.not_in(sorted(live)))
                    )
                )
            ).all()
        with self.engine.begin() as conn:  # what ended a day ago is no one's business now
            conn.execute(
                sa.delete(LIVE_SESSIONS).where(
                    (s.state == ENDED) & (s.updated < now - timedelta(seconds=ENDED_KEEP_S))
                )
            )
        ended = []
        for row in rows:
            if self._claim_and_end(row, "replica_lost", owner_dead=True):
                ended.append(row.session_id)
        return ended

    def end_own_leftovers(self) -> list[str]:
        """At start, before any session: end what a previous process of this replica id
        left open (``broker_lost``)."""
        s = LIVE_SESSIONS.c
        mine = s.replica_id == self.replica_id
        with self.engine.begin() as conn:
            # ended by another replica while the last run was cut off: settled already
            conn.execute(sa.delete(LIVE_SESSIONS).where(mine & (s.state == ENDED)))
            rows = conn.execute(
                sa.select(LIVE_SESSIONS).where(
                    mine
                    & (
                        s.state.in_((LIVE, ENDING))
                        | ((s.state == REAPING) & (s.reaper == self.replica_id))
                    )
                )
            ).all()
        return [row.session_id for row in rows if self._claim_and_end(row, "broker_lost")]

    def _claim_and_end(self, row: Any, reason: str, *, owner_dead: bool = False) -> bool:
        """Claim ``row`` (compare-and-set on the state and reaper read) and end it; False
        when another replica got there first or, with ``owner_dead``, when its owner is
        found alive.

        ``owner_dead``: the claim is made holding the lock of the owner's replica row
        (``SELECT ... FOR UPDATE``), after reading its ``last_seen`` again.  The owner's
        beat and its own claim (:meth:`claim_end`) update that row, so they either wait
        for this claim to commit or are seen by it, and the row is then left alone."""
        s, r = LIVE_SESSIONS.c, REPLICAS.c
        with self.engine.begin() as conn:
            if owner_dead:
                seen = conn.execute(
                    sa.select(r.last_seen).where(r.replica_id == row.replica_id).with_for_update()
                ).first()
                if seen is None or seen.last_seen > self._clock() - self._dead_after:
                    log.info(
                        "session %s: replica %s is alive again", row.session_id, row.replica_id
                    )
                    return False
            claimed = conn.execute(
                sa.update(LIVE_SESSIONS)
                .where(
                    (s.session_id == row.session_id)
                    & (s.replica_id == row.replica_id)
                    & (s.state == row.state)
                    & (s.reaper == row.reaper)
                )
                .values(state=REAPING, reaper=self.replica_id, updated=self._clock())
            ).rowcount
        if claimed != 1:
            return False
        done = (s.session_id == row.session_id) & (s.reaper == self.replica_id)
        if row.recording:
            self._write_end(row, reason)  # raises if the audit log refuses: the row stays
        with self.engine.begin() as conn:
            if row.recording and owner_dead:
                # kept ENDED_KEEP_S, so an owner that was cut off learns who ended it
                conn.execute(
                    sa.update(LIVE_SESSIONS).where(done).values(state=ENDED, updated=self._clock())
                )
            else:
                conn.execute(sa.delete(LIVE_SESSIONS).where(done))
        return True

    def claim_end(self, session_id: str, timeout_s: float = 30.0) -> str | None:
        """The owner's claim on the end of its own session (blocking: run it on a thread).

        None: this replica writes the session's ``session.ended`` (it claimed the row,
        now or at an earlier try, or no row is left to claim).  A replica id: that
        replica ended the session (``replica_lost``) while this one was cut off; this
        one writes nothing.  Raises while the database cannot be reached.

        One transaction beats this replica's row in ``broker_replicas`` (the lock a
        reaper takes before its claim, :meth:`_claim_and_end`) and claims the session's
        row (``live``/``ending``, no reaper → ``reaping`` by this replica).  It runs on
        the directory's writer thread after the writes queued before it (the row's own
        insert included), which must all have been made."""
        return self._pool.submit(self._claim_own, session_id).result(timeout=timeout_s)

    def _claim_own(self, session_id: str) -> str | None:
        self._drain()
        if self._queued:
            raise ConnectionError("the session directory cannot be written yet")
        s, r = LIVE_SESSIONS.c, REPLICAS.c
        mine = (s.session_id == session_id) & (s.replica_id == self.replica_id)
        now = self._clock()
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(REPLICAS).where(r.replica_id == self.replica_id).values(last_seen=now)
            )
            gone = sa.select(r.replica_id).where(r.last_seen <= now - self._dead_after)
            claimed = conn.execute(
                sa.update(LIVE_SESSIONS)
                .where(
                    mine
                    & (
                        (s.state.in_((LIVE, ENDING)) & (s.reaper == ""))
                        | ((s.state == REAPING) & s.reaper.in_(gone))  # a reaper that died
                    )
                )
                .values(state=REAPING, reaper=self.replica_id, updated=now)
            ).rowcount
            if claimed:
                return None
            row = conn.execute(sa.select(s.state, s.reaper).where(mine)).first()
            if row is None:
                # nobody else ended it within ENDED_KEEP_S (its end would have left the
                # row, ``ended``): the owner's end is written, more rather than less
                log.warning("session %s has no row left; its end is written", session_id)
                return None
            if row.reaper == self.replica_id:
                return None  # claimed at an earlier try whose end did not get through
            if row.state == ENDED:
                conn.execute(sa.delete(LIVE_SESSIONS).where(mine & (s.state == ENDED)))
        by = str(row.reaper)
        log.warning(
            "session %s was ended by replica %s while this replica was cut off; "
            "its end is not written again",
            session_id,
            by,
        )
        return by

    def _write_end(self, row: Any, reason: str) -> None:
        size, sha = 0, None
        try:
            size, sha = digest(self.store, row.recording)
        except RecordingFileError as exc:
            log.error("recording of lost session %s cannot be read: %s", row.session_id, exc)
        cols = {k: v for k, v in dict(row.columns or {}).items() if v is not None}
        cols["TargetSessionId"] = row.session_id
        lost = (
            f"session {row.session_id} ended: replica {row.replica_id} that ran it is gone"
            if reason == "replica_lost"
            else f"session {row.session_id} ended with the broker that ran it"
        )
        self._emitter.emit(
            new_event(
                "session.ended",
                clock=self._clock,
                EventResult="Partial",
                EventResultDetails=reason,
                EventMessage=lost,
                RecordingSize=size,
                RecordingSHA256=sha,
                details={
                    "kind": row.kind,
                    "exit_status": None,
                    "recording": row.recording,
                    "replica": row.replica_id,
                    "ended_by": self.replica_id,
                },
                **cols,
            )
        )
        log.warning("session %s of replica %s ended: %s", row.session_id, row.replica_id, reason)


class CastOutput:
    """The terminal output in an asciicast v2 byte stream (what a follower sees)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out: list[bytes] = []
        while (nl := self._buf.find(b"\n")) >= 0:
            line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            out.append(self._output(line))
        if len(self._buf) > _MAX_CAST_LINE:  # not a recording line: skipped
            self._buf = b""
        return b"".join(out)

    @staticmethod
    def _output(line: bytes) -> bytes:
        try:
            ev = json.loads(line)
        except ValueError:
            return b""
        if not isinstance(ev, list) or len(ev) < 3 or not isinstance(ev[2], str):
            return b""  # the header, or not an event
        if ev[1] == "o":
            return ev[2].encode("utf-8", "replace")
        if ev[1] == "O":
            with contextlib.suppress(binascii.Error, ValueError):
                return base64.b64decode(ev[2], validate=True)
        return b""  # input, resizes


class ClusterSessions:
    """What the API and the console ask about sessions other replicas run (async)."""

    def __init__(
        self,
        directory: SessionDirectory,
        *,
        feed: Feed | None = None,
        poll_s: float | None = None,
        reap_every_s: float = REAP_EVERY_S,
    ) -> None:
        self.directory = directory
        self.replica_id = directory.replica_id
        self.local: Terminable | None = None  # the front door's registry, once it runs
        self.feed = feed
        if poll_s is None:
            poll_s = TERMINATE_BACKSTOP_S if feed is not None else TERMINATE_POLL_S
        self._poll_s = poll_s
        self.reads = 0  # reads of this replica's terminate requests (woken or backstop)
        self._reap_every_s = reap_every_s
        self._handled: set[str] = set()
        self._followers = 0

    async def find(self, session_id: str) -> RemoteSession | None:
        """A live session of another replica, or None."""
        s = await asyncio.to_thread(self.directory.find, session_id)
        return s if s is not None and s.replica_id != self.replica_id else None

    async def others(self) -> list[RemoteSession]:
        return await asyncio.to_thread(self.directory.others)

    async def terminate(self, session_id: str, *, by: str, reason: str) -> datetime | None:
        """Ask the owner to end it (woken by the change feed, it does within a fraction
        of a second); when it was asked, or None when the session is not live."""
        return await asyncio.to_thread(
            lambda: self.directory.request_terminate(session_id, by=by, reason=reason)
        )

    async def follow(self, session_id: str, recording: str) -> AsyncIterator[bytes]:
        """The terminal output of another replica's session, from its recording as it is
        stored, until the session ends (or the follower goes)."""
        if not recording or self._followers >= MAX_REMOTE_FOLLOWERS:
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        gone = threading.Event()
        checked = [time.monotonic(), True]

        def ended() -> bool:
            if gone.is_set():
                return True
            if time.monotonic() - float(checked[0]) >= 1.0:
                checked[0] = time.monotonic()
                with contextlib.suppress(Exception):
                    checked[1] = self.directory.is_live(session_id)
            return not checked[1]

        def put(item: bytes | None) -> None:
            if not gone.is_set():
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(item)

        def tail() -> None:
            parser = CastOutput()
            try:
                for chunk in tail_recording(
                    self.directory.store,
                    recording,
                    poll_s=FOLLOW_POLL_S,
                    stop=ended,
                    idle_timeout_s=3600.0,
                ):
                    if gone.is_set():
                        return
                    out = parser.feed(chunk)
                    if out:
                        loop.call_soon_threadsafe(put, out)
            except Exception as exc:  # the stream ends; the session is not touched
                log.warning("following session %s failed: %s", session_id, exc)
            finally:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(put, None)

        self._followers += 1
        worker = threading.Thread(target=tail, daemon=True, name="hoshu-follow")
        worker.start()
        try:
            while (chunk := await queue.get()) is not None:
                yield chunk
        finally:
            gone.set()
            self._followers -= 1

    # --- the owner's side and the reaper (the broker task) ------------------------------

    async def watch_terminations(self) -> None:
        """Read this replica's terminate requests when the change feed names a session
        (or may have missed something), and every ``poll_s`` whatever it says."""
        wake = asyncio.Event()

        def changed(changes: list[Change] | None) -> None:
            if changes is None or any(k in (SESSION_CHANGE, "all") for k, _ in changes):
                wake.set()

        if self.feed is not None:
            self.feed.subscribe(changed)
        try:
            while True:
                try:
                    await self.terminate_requested()
                except Exception as exc:  # retried at the next wake-up or poll
                    log.error("reading terminate requests failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._poll_s)
                wake.clear()
        finally:
            if self.feed is not None:
                self.feed.unsubscribe(changed)

    async def terminate_requested(self) -> None:
        """End this replica's sessions another replica asked to terminate."""
        asked = await asyncio.to_thread(self.directory.terminations)
        self.reads += 1
        self._handled &= {sid for sid, _by, _reason in asked}
        for sid, by, reason in asked:
            if sid in self._handled or self.local is None:
                continue
            self._handled.add(sid)
            self.local.terminate(
                sid, by=by or "hoshu", reason=reason if reason in TERMINATE_REASONS else "approver"
            )

    async def reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_every_s)
            self.directory.retry()
            try:
                await asyncio.to_thread(self.directory.reap)
            except Exception as exc:  # retried: the rows stay until an end is written
                log.error("ending a lost replica's sessions failed: %s", exc)

    async def run(self) -> None:
        await asyncio.gather(self.watch_terminations(), self.reap_forever())
