"""A session ends exactly once across replicas, also when its replica was cut off from
the database.

Two replicas, a and b, on one real PostgreSQL, each with its audit chain in it
(:class:`~audit.pgchain.PgChainLog`), a shared recording store (files) and a fake clock.
Replica a reaches the database only through a TCP relay the test can cut (every
connection through it is reset and new ones are refused), so its session directory
and its audit chain both lose the database, as in a network partition.  Replica a ends
its session as the fail-closed bound does (``view_unconfirmed``) while cut off; what
the tests count is the ``session.ended`` events the two chains hold for the session.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.emitter import Emitter
from audit.events import AuditEvent
from audit.pgchain import PgChainLog, store_engine
from audit.recstore import digest
from audit.recstore.files import FileStore
from broker.access.door import GrantEnd
from broker.live.directory import SessionDirectory
from broker.live.sessions import VIEW_UNCONFIRMED, LiveSession, SessionRegistry
from broker.store.db import Store
from broker.tunnel.cluster import DEAD_AFTER_S, ClusterRegistry
from tests.fixtures.postgres import create_database
from tests.support import FakeClock, poll_sync

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
# long enough that a's retries outlast the cut (as the default ones outlast 15 s)
RETRIES = (0.2, 0.3, 0.5, 1.0)


class CutRelay:
    """A TCP relay in front of PostgreSQL; :meth:`cut` resets every connection through it
    and refuses new ones until :meth:`mend`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        while True:
            try:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
            except OSError:
                break
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def mend(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


class Hooked:
    """An emitter that calls ``after(event)`` once an event is committed."""

    def __init__(self, inner: Emitter) -> None:
        self.inner = inner
        self.after: Any = None

    def emit(self, event: AuditEvent) -> AuditEvent:
        out = self.inner.emit(event)
        if self.after is not None:
            self.after(event)
        return out


class Policy:
    def grant_end(self, grant_id: str, user_id: str, now: datetime) -> GrantEnd:
        return GrantEnd(datetime(2026, 12, 1, 18, 0, tzinfo=UTC), "")


@dataclass
class Pair:
    store: Store
    clock: FakeClock
    relay: CutRelay
    regs: dict[str, ClusterRegistry]
    chain_a: Hooked
    chain_b: PgChainLog
    dir_a: SessionDirectory
    dir_b: SessionDirectory
    registry_a: SessionRegistry
    recordings: FileStore

    def ends(self, session_id: str) -> list[dict[str, Any]]:
        """The ``session.ended`` events both chains hold for ``session_id``."""
        with self.store.engine.connect() as conn:
            records = conn.exec_driver_sql(
                "SELECT record FROM audit_chain_events WHERE chain_id IN ('a', 'b') "
                "ORDER BY chain_id, seq"
            ).scalars()
            events = [json.loads(r) for r in records]
        return [
            e
            for e in events
            if e.get("EventType") == "session.ended" and e.get("TargetSessionId") == session_id
        ]

    def row(self, session_id: str) -> tuple[str, str] | None:
        with self.store.engine.connect() as conn:
            got = conn.exec_driver_sql(
                "SELECT state, reaper FROM live_sessions WHERE session_id = %(s)s",
                {"s": session_id},
            ).first()
        return (str(got[0]), str(got[1])) if got is not None else None


@pytest.fixture
def pair(postgres_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    url = create_database(postgres_url, f"partend_{abs(hash(request.node.name)) % 10**9}")
    store = Store(url)
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    relay = CutRelay(port)
    via = url.replace(f":{port}/", f":{relay.port}/")
    clock = FakeClock(START)
    regs = {}
    for i, n in enumerate("ab"):
        regs[n] = ClusterRegistry(store.engine, n, clock=clock)
        regs[n].register(f"10.0.0.{i + 1}", 2224, f"ssh-ed25519 AAAA{n}")
    chain_engine_a = store_engine(via)
    chain_engine_b = store_engine(url)
    chain_a = Hooked(PgChainLog(chain_engine_a, "a", commit_timeout_s=2.0))
    chain_b = PgChainLog(chain_engine_b, "b", commit_timeout_s=2.0)
    engine_a = sa.create_engine(via, pool_pre_ping=True, connect_args={"connect_timeout": 3})
    recordings = FileStore(tmp_path)
    dir_a = SessionDirectory(
        engine_a, "a", clock=clock, emitter=chain_a, store=recordings, dead_after_s=DEAD_AFTER_S
    )
    dir_b = SessionDirectory(
        store.engine, "b", clock=clock, emitter=chain_b, store=recordings, dead_after_s=DEAD_AFTER_S
    )
    registry_a = SessionRegistry(Policy(), chain_a, clock, retry_delays=RETRIES)  # type: ignore[arg-type]
    registry_a.rows = dir_a
    p = Pair(store, clock, relay, regs, chain_a, chain_b, dir_a, dir_b, registry_a, recordings)
    try:
        yield p
    finally:
        relay.mend()
        poll_sync(lambda: registry_a.retries_pending() == 0, 30, what="a's retries to finish")
        dir_a.close()
        dir_b.close()
        chain_a.inner.close()  # type: ignore[attr-defined]
        chain_b.close()
        engine_a.dispose()
        chain_engine_a.dispose()
        chain_engine_b.dispose()
        relay.close()
        store.close()


def _start(p: Pair, sid: str) -> LiveSession:
    """A recorded shell session on a, noted in the directory, its recording stored."""
    w = p.recordings.create(f"{sid}.cast")
    w.write(b'{"version": 2}\n[0.1, "o", "hello"]\n')
    w.close()
    live = LiveSession(
        session_id=sid,
        kind="shell",
        user_id="u-tanaka",
        username="tanaka",
        instrument="cobas-c503-1",
        hospital_id="h-1",
        grant_id="g-1",
        port=22,
        started=START,
        src="10.0.0.9",
        recording=f"{sid}.cast",
    )
    ended: list[str] = []
    live.on_terminate = ended.append
    p.registry_a.add(live)
    p.dir_a.flush()
    assert p.row(sid) == ("live", "")
    return live


def _end_cut_off(p: Pair, live: LiveSession) -> None:
    """a is cut off: the fail-closed bound ends the session, whose task then writes its
    end (as the front door's relay does) with the recording's own summary."""
    p.relay.cut()
    assert p.registry_a.terminate(live.session_id, by="hoshu", reason=VIEW_UNCONFIRMED)
    size, sha = digest(p.recordings, live.recording)
    p.registry_a.remove(live.session_id)
    p.registry_a.emit(
        "session.ended",
        EventResultDetails=VIEW_UNCONFIRMED,
        EventResult="Partial",
        RecordingSize=size,
        RecordingSHA256=sha,
        details={"kind": "shell", "exit_status": None, "recording": live.recording},
        **live.columns(),
    )


def test_a_session_a_survivor_ended_while_its_replica_was_cut_off_ends_once(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """a is cut off past the bound: b ends the session (``replica_lost``); when a is
    back, it writes no second end and logs that b ended it."""
    p = pair
    caplog.set_level(logging.WARNING, logger="broker.live.directory")
    live = _start(p, "s-cut")
    _end_cut_off(p, live)
    p.clock.advance(DEAD_AFTER_S + 1)  # a, cut off, does not beat
    p.regs["b"].beat()
    assert p.dir_b.reap() == ["s-cut"]
    p.relay.mend()
    poll_sync(lambda: p.registry_a.retries_pending() == 0, 30, what="a's end to be settled")
    [end] = p.ends("s-cut")
    assert end["EventResultDetails"] == "replica_lost"
    assert end["RecordingSHA256"] == digest(p.recordings, live.recording)[1]
    assert "replica b" in caplog.text and "s-cut" in caplog.text
    assert p.row("s-cut") is None  # a took the record of b's end and let the row go
    p.regs["b"].beat()
    assert p.dir_b.reap() == [] and p.ends("s-cut") == [end]


def test_a_replica_back_just_before_the_bound_ends_its_session_itself_once(pair: Pair) -> None:
    """a is back 14.9 s after its last beat and writes its own end; b's reaper runs
    at 15.1 s, after a's end is committed and before a's row is gone.  a claimed the
    row (and beat) before writing: b leaves it, and the one end is a's, with its own
    reason and recording summary."""
    p = pair
    live = _start(p, "s-back")
    _end_cut_off(p, live)
    reaped: list[list[str]] = []

    def survivor_reaps(event: AuditEvent) -> None:
        if event.type == "session.ended":
            p.clock.advance(0.2)
            p.regs["b"].beat()
            reaped.append(p.dir_b.reap())

    p.chain_a.after = survivor_reaps
    p.clock.advance(DEAD_AFTER_S - 0.1)
    p.relay.mend()
    poll_sync(lambda: p.registry_a.retries_pending() == 0, 30, what="a's end to be written")
    assert reaped == [[]]
    [end] = p.ends("s-back")
    assert end["EventResultDetails"] == VIEW_UNCONFIRMED
    assert end["RecordingSize"] == digest(p.recordings, live.recording)[0]
    p.dir_a.flush()
    assert p.row("s-back") is None
    p.clock.advance(DEAD_AFTER_S + 1)
    p.regs["b"].beat()
    assert p.dir_b.reap() == [] and len(p.ends("s-back")) == 1


def test_a_replica_that_beats_while_the_reaper_decides_keeps_its_session(pair: Pair) -> None:
    """b reads a's session as a dead replica's while a's beat is being committed: b
    decides under the lock of a's replica row, sees the beat, and ends nothing."""
    p = pair
    _start(p, "s-race")
    p.clock.advance(DEAD_AFTER_S + 1)
    p.regs["b"].beat()
    beat = p.store.engine.connect()
    tx = beat.begin()
    beat.execute(
        sa.text("UPDATE broker_replicas SET last_seen = :now WHERE replica_id = 'a'"),
        {"now": p.clock()},
    )
    result: list[list[str]] = []
    reaper = threading.Thread(target=lambda: result.append(p.dir_b.reap()))
    reaper.start()

    def reaper_waits_or_is_done() -> bool:
        if not reaper.is_alive():
            return True
        with p.store.engine.connect() as conn:
            waiting = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar()
        return bool(waiting)

    try:
        poll_sync(reaper_waits_or_is_done, 10, what="b's reaper to decide or wait")
    finally:
        tx.commit()  # a's beat lands
        beat.close()
    reaper.join(10)
    assert result == [[]]
    assert p.ends("s-race") == []
    assert p.row("s-race") == ("live", "")
