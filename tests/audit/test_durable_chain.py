"""The audit chain in PostgreSQL (``audit_store = "postgres"``), on a real server.

An event counts once ``emit`` returns: it is committed by then, concurrent emitters
share commits, a database that stops answering fails the emitter within a bound (and
the chain carries on afterwards), a second writer of one chain is refused, shipping
resumes from the cursor row, and every kind of tampering with the rows is named.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import Engine, text

from audit import new_event
from audit.errors import ChainError, InvalidEvent
from audit.events import AuditEvent
from audit.outbox import Cursor
from audit.pgchain import (
    PgChainLog,
    PgCursorStore,
    PgOutbox,
    _lock_key,
    chain_ids,
    reset_pg_cursor,
    store_engine,
    verify_chain,
)
from audit.shipper import Shipper
from audit.signing import CheckpointSigner, TrustedKeys
from tests.support import poll_sync

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
def engine(db: str) -> Iterator[Engine]:
    e = store_engine(db)
    try:
        yield e
    finally:
        e.dispose()


def _event(i: int) -> AuditEvent:
    return new_event(
        "admin.change",
        ActorUsername=f"admin{i}",
        Operation="update",
        Object=f"policy-{i}",
        ObjectType="policy",
    )


def _stored(engine: Engine, chain: str) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.scalars(
                text("SELECT seq FROM audit_chain_events WHERE chain_id = :c ORDER BY seq"),
                {"c": chain},
            )
        )


def test_an_event_is_committed_when_emit_returns_and_emitters_share_commits(
    engine: Engine, db: str
) -> None:
    signer = CheckpointSigner.generate()
    other = store_engine(db)  # a second client sees what was committed, nothing more
    log = PgChainLog(engine, "replica-a", signer=signer, checkpoint_every=50)
    seen_late: list[str] = []

    def producer(n: int) -> None:
        for i in range(100):
            stored = log.emit(_event(n * 1000 + i))
            with other.connect() as conn:
                found = conn.scalar(
                    text(
                        "SELECT count(*) FROM audit_chain_events WHERE chain_id = 'replica-a' "
                        "AND seq = :s AND hash = :h"
                    ),
                    {"s": stored.record["ChainSeq"], "h": stored.record["ChainHash"]},
                )
            if found != 1:
                seen_late.append(str(stored.record["ChainSeq"]))

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    other.dispose()
    assert seen_late == []
    assert log.commits < 800  # group commit: fewer transactions than events
    keys = TrustedKeys([signer.public_key])
    result = verify_chain(engine, "replica-a", keys=keys, checkpoint_every=50, closed=True)
    assert result.ok, result.reason
    assert result.count == 800 + result.checkpoints and result.checkpoints >= 16


def test_a_reopened_chain_continues_and_a_second_writer_is_refused(engine: Engine) -> None:
    signer = CheckpointSigner.generate()
    with PgChainLog(engine, "replica-b", signer=signer, checkpoint_every=10) as log:
        log.append_many([_event(i) for i in range(25)])
        with pytest.raises(ChainError, match="being written by another broker"):
            PgChainLog(engine, "replica-b", signer=signer)
    with PgChainLog(engine, "replica-b", signer=signer, checkpoint_every=10) as log:
        first = log.emit(_event(99))
    assert first.record["ChainSeq"] == 25 + 2 + 1 + 1  # 25 events, 2 + 1 at close
    with PgChainLog(engine, "replica-c", signer=signer) as log:
        log.emit(_event(1))
    assert chain_ids(engine) == ["replica-b", "replica-c"]
    for chain in chain_ids(engine):
        result = verify_chain(
            engine, chain, keys=TrustedKeys([signer.public_key]), checkpoint_every=10, closed=True
        )
        assert result.ok, (chain, result.reason)


def test_an_oversized_event_fails_only_its_own_emitter(engine: Engine) -> None:
    with PgChainLog(engine, "replica-d") as log:
        log.emit(_event(1))
        with pytest.raises(InvalidEvent, match="larger than"):
            log.emit(
                new_event(
                    "admin.change",
                    ActorUsername="x",
                    Operation="update",
                    Object="y" * (5 * 1024 * 1024),
                    ObjectType="policy",
                )
            )
        log.emit(_event(2))
    assert _stored(engine, "replica-d") == [1, 2]
    assert verify_chain(engine, "replica-d").ok


class _Proxy:
    """A TCP relay in front of PostgreSQL that can be cut (an unreachable database)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.cut = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        a.settimeout(None)
        while not self.cut.is_set():
            try:
                data = a.recv(65536)
            except OSError:
                break
            if not data or self.cut.is_set():
                break
            try:
                b.sendall(data)
            except OSError:
                break

    def blackhole(self) -> None:
        """Stop relaying: every byte from now on goes nowhere, no reset is sent."""
        self.cut.set()

    def restore(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:  # shutdown first: a close alone does not end a blocked recv
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.cut.clear()

    def close(self) -> None:
        self.restore()
        self.server.close()


def test_an_unreachable_database_fails_the_emitter_within_the_bound_and_the_chain_carries_on(
    engine: Engine, db: str
) -> None:
    port = int(db.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = _Proxy(port)
    via = store_engine(db.replace(f":{port}/", f":{proxy.port}/"))
    try:
        log = PgChainLog(via, "replica-e", commit_timeout_s=3.0)
        log.emit(_event(1))
        proxy.blackhole()
        t0 = time.monotonic()
        with pytest.raises(ChainError):
            log.emit(_event(2))
        assert time.monotonic() - t0 < 3.5  # bounded: the caller's action fails, closed
        proxy.restore()
        # the writer reconnects, reads the head again and carries on after the gap
        poll_sync(
            lambda: _try_emit(log, _event(3)),
            30,
            what="the chain to accept events again",
            interval_s=0.2,
        )
        log.close()
    finally:
        via.dispose()
        proxy.close()
    records = _records(engine, "replica-e")
    assert [r["ActorUsername"] for r in records][:1] == ["admin1"]
    assert verify_chain(engine, "replica-e").ok
    # admin2 failed its caller; whether its commit landed is the database's word, and the
    # chain stays whole either way (at most: more logged than acknowledged, never less)
    assert "admin3" in [r["ActorUsername"] for r in records]


def test_a_writer_whose_session_was_cut_waits_for_its_old_lock_instead_of_failing(
    engine: Engine,
) -> None:
    """The server ended the writer's session (a restart, a network cut): the next
    commit fails.  Until the server has ended that session too, it still holds the
    chain's lock; the commit after waits for it (here: a second session holding the
    lock for 0.5 s stands for the slow end) rather than refusing an event of its own."""
    log = PgChainLog(engine, "replica-r")
    try:
        log.emit(_event(1))
        assert log._conn is not None
        pid = log._conn.info.backend_pid
        key = _lock_key("replica-r")
        with engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            other.commit()
            poll_sync(
                lambda: other.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar(),
                10,
                what="the ended session's lock to be free",
            )
            other.commit()
            with pytest.raises(ChainError):
                log.emit(_event(2))  # committed on the ended session: fails, closed

            def unlock() -> None:
                other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                other.commit()

            timer = threading.Timer(0.5, unlock)
            timer.start()
            t0 = time.monotonic()
            log.emit(_event(3))  # waits for the lock instead of "written by another"
            assert time.monotonic() - t0 >= 0.4
            timer.join()
        log.close()
    finally:
        log.close()
    assert [r["ActorUsername"] for r in _records(engine, "replica-r")][-1:] == ["admin3"]
    assert verify_chain(engine, "replica-r").ok


def test_a_batch_is_sent_before_the_last_one_commits_and_a_failed_one_fails_the_next_too(
    engine: Engine,
) -> None:
    """The writer does not wait for one commit before sending the next batch; the
    next batch's head update starts from the head the first one writes.  So when the
    first fails, the second cannot commit either: both emitters get the error, neither
    event is stored, and the chain carries on whole from the head it reads again."""
    log = PgChainLog(engine, "replica-p", commit_timeout_s=15.0)
    outcome: dict[str, str] = {}

    def emit(name: str, i: int) -> None:
        try:
            log.emit(_event(i))
            outcome[name] = "acknowledged"
        except ChainError as exc:
            outcome[name] = f"failed: {exc}"

    try:
        log.emit(_event(1))
        assert log._conn is not None
        pid = log._conn.info.backend_pid
        with engine.connect() as blocker, engine.connect() as admin:
            # the head row locked elsewhere: the next batch's statement waits on it
            blocker.execute(
                text("SELECT 1 FROM audit_chains WHERE chain_id = 'replica-p' FOR UPDATE")
            )
            first = threading.Thread(target=emit, args=("first", 2))
            first.start()
            poll_sync(lambda: len(log._flights) == 1, 10, what="the first batch in flight")
            second = threading.Thread(target=emit, args=("second", 3))
            second.start()
            # sent while the first has not committed: two transactions in flight
            poll_sync(lambda: len(log._flights) == 2, 10, what="the second batch in flight")
            assert outcome == {}  # nothing acknowledged before its own commit
            admin.execute(text("SELECT pg_cancel_backend(:p)"), {"p": pid})  # the first fails
            first.join(15)
            second.join(15)
            blocker.rollback()
        assert outcome["first"].startswith("failed") and "cancel" in outcome["first"]
        assert outcome["second"].startswith("failed")
        log.emit(_event(4))  # reconnected, the head read again
    finally:
        log.close()
    assert [r["ActorUsername"] for r in _records(engine, "replica-p")] == ["admin1", "admin4"]
    assert [r["ChainSeq"] for r in _records(engine, "replica-p")] == [1, 2]
    assert verify_chain(engine, "replica-p").ok


def _try_emit(log: PgChainLog, event: AuditEvent) -> bool:
    try:
        log.emit(event)
    except ChainError:
        return False
    return True


def _records(engine: Engine, chain: str) -> list[dict[str, Any]]:
    import json

    with engine.connect() as conn:
        return [
            json.loads(r)
            for r in conn.scalars(
                text("SELECT record FROM audit_chain_events WHERE chain_id = :c ORDER BY seq"),
                {"c": chain},
            )
        ]


def test_tampering_with_the_rows_is_named_by_position(engine: Engine) -> None:
    signer = CheckpointSigner.generate()
    keys = TrustedKeys([signer.public_key])
    with PgChainLog(engine, "replica-f", signer=signer, checkpoint_every=5) as log:
        log.append_many([_event(i) for i in range(12)])

    def check() -> Any:
        return verify_chain(engine, "replica-f", keys=keys, checkpoint_every=5, closed=True)

    assert check().ok
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE audit_chain_events SET record = replace(record, "
                "'\"admin3\"', '\"admin9\"') WHERE chain_id = 'replica-f' AND seq = 4"
            )
        )
    bad = check()
    assert not bad.ok and bad.first_bad == 4 and "does not match its hash" in bad.reason
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE audit_chain_events SET record = replace(record, "
                "'\"admin9\"', '\"admin3\"') WHERE chain_id = 'replica-f' AND seq = 4"
            )
        )
        conn.execute(
            text("DELETE FROM audit_chain_events WHERE chain_id = 'replica-f' AND seq = 8")
        )
    bad = check()
    assert not bad.ok and bad.first_bad == 8 and "deleted" in bad.reason
    with engine.begin() as conn:
        conn.execute(
            text("DELETE FROM audit_chain_events WHERE chain_id = 'replica-f' AND seq >= 8")
        )
    bad = check()
    assert not bad.ok and "truncated" in bad.reason
    with pytest.raises(ChainError, match="fails verification"):
        PgChainLog(engine, "replica-f", signer=signer)  # the writer refuses a cut chain too
    stranger = CheckpointSigner.generate()
    with PgChainLog(engine, "replica-g", signer=stranger, checkpoint_every=5) as log:
        log.append_many([_event(i) for i in range(6)])
    bad = verify_chain(engine, "replica-g", keys=keys, checkpoint_every=5, closed=True)
    assert not bad.ok and "unknown key" in bad.reason


class _Collect:
    name = "collect"

    def __init__(self) -> None:
        self.got: list[Mapping[str, Any]] = []

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.got.extend(records)

    def close(self) -> None:
        return None


def test_shipping_resumes_from_the_stored_cursor_and_an_operator_can_reset_it(
    engine: Engine,
) -> None:
    with PgChainLog(engine, "replica-h") as log:
        log.append_many([_event(i) for i in range(30)])
    sink = _Collect()
    cursors = PgCursorStore(engine, "replica-h")
    first = Shipper(sink, PgOutbox(engine, "replica-h"), cursors, batch_size=20)
    assert first.ship_once() == 20
    # a new process (the old one's disk gone) continues from the row, not from the start
    sink2 = _Collect()
    second = Shipper(
        sink2, PgOutbox(engine, "replica-h"), PgCursorStore(engine, "replica-h"), batch_size=20
    )
    assert second.ship_once() == 10 and second.ship_once() == 0
    assert [r["ChainSeq"] for r in sink.got + sink2.got] == list(range(1, 31))
    assert second.status().lag_events == 0
    reset_pg_cursor(cursors, "collect", 25)
    assert second.ship_once() == 5
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_chain_cursors SET hash = :h WHERE sink = 'collect'"), {"h": "0" * 64}
        )
    from audit.outbox import OutboxCorrupt

    with pytest.raises(OutboxCorrupt, match="does not match"):
        second.ship_once()
    assert second.status().state == "stopped"
    assert cursors.load("collect") == Cursor(30, 0, "0" * 64)


def test_the_audit_service_on_the_postgres_store_ships_verifies_and_fails_closed(
    db: str, tmp_path: Any
) -> None:
    from audit.service import AuditConfig, build_audit

    cfg = AuditConfig(
        log_path=tmp_path / "audit.log",
        signing_key_path=tmp_path / "k",
        cursor_dir=tmp_path / "c",
        index_url=db,
        recordings_dir=tmp_path / "r",
        checkpoint_every=10,
        hostname="broker-1",
        store="postgres",
        replica_id="replica-s",
    )
    sink = _Collect()
    runtime = build_audit(cfg, sinks=[sink])
    runtime.start()
    try:
        for i in range(15):
            runtime.log.emit(_event(i))
        assert runtime.verify().ok
        poll_sync(lambda: runtime.shipping.wait_idle(0.1), 20, what="the sink to catch up")
        assert runtime.index.count() >= 16
    finally:
        runtime.stop()
    assert not (tmp_path / "audit.log").exists()  # nothing on the replica's disk
    assert [r["ActorUsername"] for r in sink.got if r["EventType"] == "admin.change"] == [
        f"admin{i}" for i in range(15)
    ]
    with pytest.raises(ChainError, match="PostgreSQL URL"):
        build_audit(AuditConfig(**{**cfg.__dict__, "store_url": f"sqlite:///{tmp_path}/x"}))
