"""The auditors' index is checked against the chain: what auditors search and what the
recording-access check reads cannot be edited, hidden or padded unnoticed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, update

from audit import new_event
from audit.chain import ChainLog, read_events
from audit.index import AuditIndex, IndexSink, check_index, events_table
from audit.outbox import CursorStore
from audit.retention import Retention, RetentionPolicy
from audit.shipper import Shipper
from audit.signing import CheckpointSigner
from broker.cli.main import main
from tests.fixtures.siem import DEADLINE_S
from tests.support import FakeClock, poll_sync

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def broker(tmp_path: Path) -> tuple[Path, AuditIndex, Path, str]:
    """A closed broker log whose events reached the index through its shipper."""
    signer = CheckpointSigner.load_or_create(tmp_path / "broker" / "keys" / "audit_signing_key")
    log = tmp_path / "broker" / "audit" / "audit.log"
    url = f"sqlite:///{tmp_path / 'broker' / 'index.db'}"
    index = AuditIndex.from_url(url)
    with ChainLog(log, signer=signer, checkpoint_every=5) as chain:
        for i in range(8):
            chain.emit(
                new_event(
                    "session.started",
                    ActorUsername="tanaka",
                    HospitalId="h-okayama",
                    TargetSessionId=f"s{i}",
                )
            )
    shipper = Shipper(IndexSink(index), log, CursorStore(log.parent / "cursors"))
    poll_sync(
        lambda: shipper.ship_once() == 0 and shipper.status().acked_seq >= 10,
        DEADLINE_S,
        what="the index to catch up",
    )
    pinned = tmp_path / "auditor" / "key.pub"
    pinned.parent.mkdir()
    pinned.write_bytes(signer.public_pem())
    return log, index, pinned, url


def _verify(log: Path, pinned: Path, url: str) -> int:
    return main(
        [
            "audit",
            "verify",
            "--log",
            str(log),
            "--key",
            str(pinned),
            "--checkpoint-every",
            "5",
            "--index",
            url,
        ]
    )


def test_the_index_as_shipped_matches_the_chain(
    broker: tuple[Path, AuditIndex, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    log, _, pinned, url = broker
    assert _verify(log, pinned, url) == 0
    assert (
        "index matches the chain: 10 events compared up to position 10" in capsys.readouterr().out
    )


def test_an_edited_index_row_fails_the_check(
    broker: tuple[Path, AuditIndex, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    log, index, pinned, url = broker
    t = events_table.c
    with index.engine.begin() as conn:
        row = conn.execute(events_table.select().where(t.ChainSeq == 3)).one()
        record = json.loads(row.record)
        record["ActorUsername"] = "someone-else"
        conn.execute(
            update(events_table)
            .where(t.ChainSeq == 3)
            .values(record=json.dumps(record), ActorUsername="someone-else")
        )
    assert _verify(log, pinned, url) == 1
    out = capsys.readouterr().out
    assert "DOES NOT match" in out and "position 3" in out and "ActorUsername" in out


def test_a_hospital_column_moved_to_hide_a_session_fails_the_check(
    broker: tuple[Path, AuditIndex, Path, str],
) -> None:
    """Only the searchable column changed: the hospital's auditor would not find it."""
    log, index, _, _ = broker
    with index.engine.begin() as conn:
        conn.execute(
            update(events_table)
            .where(events_table.c.ChainSeq == 2)
            .values(HospitalId="h-elsewhere")
        )
    check = check_index(index, (e.record for e in read_events(log)))
    assert not check.ok and any("position 2" in p and "HospitalId" in p for p in check.problems)


def test_a_deleted_or_an_extra_index_row_fails_the_check(
    broker: tuple[Path, AuditIndex, Path, str],
) -> None:
    log, index, _, _ = broker
    t = events_table.c
    with index.engine.begin() as conn:
        conn.execute(delete(events_table).where(t.ChainSeq == 4))
    check = check_index(index, (e.record for e in read_events(log)), indexed_upto=10)
    assert not check.ok and "position 4 is missing" in check.problems[0]
    index.add([new_event("session.started", ActorUsername="ghost").record])  # no position
    with index.engine.begin() as conn:
        extra = dict(new_event("session.started", ActorUsername="ghost2").record)
        conn.execute(
            insert(events_table).values(
                EventUid=extra["EventUid"],
                ChainSeq=40,
                TimeGenerated=extra["TimeGenerated"],
                EventType="session.started",
                record=json.dumps(extra),
            )
        )
    problems = " | ".join(check_index(index, (e.record for e in read_events(log))).problems)
    assert "carry no chain position" in problems and "position 40" in problems


def test_rows_removed_by_announced_retention_are_accepted(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    log = tmp_path / "audit.log"
    index = AuditIndex.from_url(f"sqlite:///{tmp_path / 'i.db'}")
    with ChainLog(log, clock=clock) as chain:
        for _ in range(3):
            index.add([chain.emit(new_event("user.logout", clock=clock)).record])
        clock.now += timedelta(days=40)
        index.add([chain.emit(new_event("user.logout", clock=clock)).record])
        Retention(RetentionPolicy(events_days=30), chain, index=index, clock=clock).run()
        index.add([e.record for e in read_events(log)][-1:])  # the announcement itself
    check = check_index(index, (e.record for e in read_events(log)))
    assert check.ok and check.retired == 3 and check.compared == 2


def test_on_the_broker_host_verify_index_uses_the_brokers_log_index_and_cursor(
    broker: tuple[Path, AuditIndex, Path, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log, index, pinned, url = broker
    monkeypatch.setenv("HOSHU_DATA_DIR", str(log.parent.parent))
    monkeypatch.setenv("HOSHU_AUDIT_INDEX_URL", url)
    monkeypatch.setenv("HOSHU_AUDIT_CHECKPOINT_EVERY", "5")
    assert main(["audit", "verify", "--key", str(pinned), "--index"]) == 0
    assert "index matches the chain: 10 events compared" in capsys.readouterr().out
    with index.engine.begin() as conn:  # the newest row goes: the cursor says it was indexed
        conn.execute(delete(events_table).where(events_table.c.ChainSeq == 10))
    assert main(["--json", "audit", "verify", "--key", str(pinned), "--index"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["index"]["indexed_upto"] == 10
    assert "position 10 is missing" in report["index"]["problems"][0]
