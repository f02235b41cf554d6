"""The cluster's live sessions in a real PostgreSQL: rows, terminate requests, the reaper.

Two replicas' directories on one database, a real recording store (files) and the
live registry's own hooks: another replica lists the session and asks it ended (the
owner's registry ends it with its own events); a replica that stops beating has its
recorded session ended exactly once by the survivors (two racing), with the stored
recording's size and SHA-256; a reaper that cannot see itself alive does nothing.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from audit.recstore import digest
from audit.recstore.files import FileStore
from audit.testing import CapturingEmitter
from broker.access.door import GrantEnd
from broker.live.directory import CastOutput, ClusterSessions, SessionDirectory
from broker.live.sessions import LiveSession, SessionRegistry
from broker.store.db import Store
from broker.tunnel.cluster import DEAD_AFTER_S, ClusterRegistry
from tests.fixtures.postgres import create_database
from tests.support import FakeClock, poll

pytestmark = [pytest.mark.postgres]
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def store(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    url = create_database(postgres_url, f"livedir_{abs(hash(request.node.name)) % 10**9}")
    s = Store(url)
    try:
        yield s
    finally:
        s.close()


class Policy:
    def grant_end(self, grant_id: str, user_id: str, now: datetime) -> GrantEnd:
        return GrantEnd(datetime(2026, 12, 1, 18, 0, tzinfo=UTC), "")


def _session(sid: str, recording: str = "") -> LiveSession:
    return LiveSession(
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
        recording=recording,
    )


def _replicas(store: Store, clock: FakeClock, *names: str) -> dict[str, ClusterRegistry]:
    regs = {}
    for i, n in enumerate(names):
        regs[n] = ClusterRegistry(store.engine, n, clock=clock)
        regs[n].register(f"10.0.0.{i + 1}", 2224, f"ssh-ed25519 AAAA{n}")
    return regs


def _directory(
    store: Store, name: str, clock: FakeClock, emitter: CapturingEmitter, rec: FileStore
) -> SessionDirectory:
    return SessionDirectory(
        store.engine, name, clock=clock, emitter=emitter, store=rec, dead_after_s=DEAD_AFTER_S
    )


async def test_another_replica_lists_and_terminates_through_the_owner(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    _replicas(store, clock, "b", "c")
    events_b, events_c = CapturingEmitter(), CapturingEmitter()
    rec = FileStore(tmp_path)
    dir_b = _directory(store, "b", clock, events_b, rec)
    dir_c = _directory(store, "c", clock, events_c, rec)
    reg_b = SessionRegistry(Policy(), events_b, clock)  # type: ignore[arg-type]
    reg_b.rows = dir_b
    ended: list[str] = []
    live = _session("s-1", "s-1.cast")
    live.on_terminate = ended.append
    reg_b.add(live)
    dir_b.flush()
    owner = ClusterSessions(dir_b)
    owner.local = reg_b
    other = ClusterSessions(dir_c)
    try:
        [seen] = await other.others()
        assert (seen.session_id, seen.replica_id, seen.hospital_id) == ("s-1", "b", "h-1")
        assert await other.find("s-1") is not None
        assert await owner.find("s-1") is None  # b's own: its memory answers, not the row
        assert await other.terminate("s-1", by="sato", reason="approver") is not None
        watcher = asyncio.ensure_future(owner.watch_terminations())
        await poll(lambda: ended == ["approver"], deadline_s=2)
        watcher.cancel()
        [term] = events_b.of_type("session.terminated")
        assert term.details["by"] == "sato" and term.get("TargetSessionId") == "s-1"
        assert events_c.events == []  # the owner writes the events, not the asker
        # the session stops and its end is written: the row goes
        reg_b.remove("s-1")
        reg_b.emit("session.ended", EventResultDetails="terminated", **live.columns())
        dir_b.flush()
        assert await other.others() == [] and await other.find("s-1") is None
        assert await other.terminate("s-1", by="sato", reason="approver") is None
    finally:
        dir_b.close()
        dir_c.close()


def test_a_dead_replicas_session_is_ended_once_with_its_stored_hash(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    regs = _replicas(store, clock, "a", "b", "c")
    rec = FileStore(tmp_path)
    w = rec.create("s-9.cast")
    w.write(b'{"version": 2}\n[0.1, "o", "hello"]\n')
    w.close()
    events = {n: CapturingEmitter() for n in "abc"}
    dirs = {n: _directory(store, n, clock, events[n], rec) for n in "abc"}
    try:
        dirs["a"].added(_session("s-9", "s-9.cast"))
        dirs["a"].added(_session("s-10"))  # a file transfer: no end event to write
        dirs["a"].flush()
        clock.advance(DEAD_AFTER_S - 1)
        regs["b"].beat()
        regs["c"].beat()
        assert dirs["b"].reap() == [] and dirs["c"].reap() == []  # a is not gone yet
        clock.advance(2)  # a missed its beats; b and c beat in time
        regs["b"].beat()
        regs["c"].beat()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two survivors race
            results = list(pool.map(lambda n: dirs[n].reap(), ["b", "c"]))
        ended = [e for n in "bc" for e in events[n].of_type("session.ended")]
        assert len(ended) == 1, results
        [e] = ended
        size, sha = digest(rec, "s-9.cast")
        assert e.get("EventResultDetails") == "replica_lost"
        assert (e.get("RecordingSize"), e.get("RecordingSHA256")) == (size, sha)
        assert e.get("TargetSessionId") == "s-9" and e.get("ActorUsername") == "tanaka"
        assert e.details["replica"] == "a"
        assert sorted(sid for r in results for sid in r) == ["s-10", "s-9"]
        assert dirs["b"].others() == [] and dirs["c"].reap() == []
        # a comes back under its id: nothing is left for it to end (never twice)
        assert dirs["a"].end_own_leftovers() == []
        assert events["a"].events == []
    finally:
        for d in dirs.values():
            d.close()


def test_a_reaper_that_is_not_alive_itself_does_nothing(store: Store, tmp_path: Path) -> None:
    """Cut off (its own beat does not reach the database): it sees no live replica at
    all and ends nothing, though every other row looks dead too."""
    clock = FakeClock(START)
    _replicas(store, clock, "a", "c")
    events = CapturingEmitter()
    rec = FileStore(tmp_path)
    dir_a = _directory(store, "a", clock, events, rec)
    dir_c = _directory(store, "c", clock, events, rec)
    try:
        dir_a.added(_session("s-1", "s-1.cast"))
        dir_a.flush()
        clock.advance(DEAD_AFTER_S + 5)  # nobody beat, c included
        assert dir_c.reap() == []
        assert events.events == [] and [s.session_id for s in dir_c.others()] == ["s-1"]
    finally:
        dir_a.close()
        dir_c.close()


def test_a_restarted_replica_ends_what_its_last_run_left_open(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(START)
    _replicas(store, clock, "a")
    events = CapturingEmitter()
    rec = FileStore(tmp_path)
    w = rec.create("s-2.cast")
    w.write(b'{"version": 2}\n')
    w.close()
    first = _directory(store, "a", clock, events, rec)
    first.added(_session("s-2", "s-2.cast"))
    first.close()  # killed: no end written
    again = _directory(store, "a", clock, events, rec)
    try:
        assert again.end_own_leftovers() == ["s-2"]
        [e] = events.of_type("session.ended")
        assert e.get("EventResultDetails") == "broker_lost"
        assert e.get("RecordingSHA256") == digest(rec, "s-2.cast")[1]
        assert again.end_own_leftovers() == []
    finally:
        again.close()


def test_writes_the_database_refused_are_made_later_in_order(store: Store, tmp_path: Path) -> None:
    """The table is away (renamed) while a session starts and ends: nothing is lost or
    reordered; once it is back, the row comes and goes as if nothing had happened, so
    no survivor would end the session a second time."""
    clock = FakeClock(START)
    _replicas(store, clock, "a", "c")
    events = CapturingEmitter()
    rec = FileStore(tmp_path)
    dir_a = _directory(store, "a", clock, events, rec)
    dir_c = _directory(store, "c", clock, events, rec)
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE live_sessions RENAME TO live_sessions_away")
        dir_a.added(_session("s-1", "s-1.cast"))
        dir_a.added(_session("s-2", "s-2.cast"))
        dir_a.removed("s-1")
        dir_a.ended("s-1")
        dir_a.flush()
        assert dir_a.pending() == 4
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE live_sessions_away RENAME TO live_sessions")
        dir_a.retry()
        dir_a.flush()
        assert dir_a.pending() == 0
        assert [s.session_id for s in dir_c.others()] == ["s-2"]
    finally:
        dir_a.close()
        dir_c.close()


def test_a_follower_sees_the_terminal_output_of_a_recording() -> None:
    out = CastOutput()
    assert out.feed(b'{"version": 2, "width": 80}\n[0.1, "o", "he') == b""
    assert out.feed(b'llo\\r\\n"]\n[0.2, "i", "secret"]\n[0.3, "r", "80x24"]\n') == b"hello\r\n"
    assert out.feed(b'[0.4, "O", "' + base64.b64encode(b"\xff\xfe") + b'"]\n') == b"\xff\xfe"
    assert out.feed(b"not json\n[1]\n") == b""
