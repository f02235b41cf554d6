"""Auditor queries: filters, pagination and exports, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from audit import new_event
from audit.chain import ChainLog
from audit.export import write_export
from audit.index import AuditIndex, EventQuery, IndexSink, QueryError
from audit.outbox import CursorStore
from audit.shipper import Shipper
from tests.support import FakeClock

T0 = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)
HOSPITALS = ("h-okayama", "h-handa")
ENGINEERS = ("sato", "suzuki", "tanaka")


def _events(n: int = 300) -> list[dict[str, object]]:
    out = []
    for i in range(n):
        t = T0 + timedelta(minutes=10 * i)
        kind = ("session.started", "session.command", "ssh.login", "file.transferred")[i % 4]
        out.append(
            dict(
                new_event(
                    kind,
                    clock=FakeClock(t),
                    ActorUsername=ENGINEERS[i % 3],
                    ActorUserId=f"u-{i % 3}",
                    HospitalId=HOSPITALS[i % 2],
                    TargetHostname=f"cobas-{i % 5}",
                    VendorId="v-roche",
                    TargetSessionId=f"s-{i // 10}",
                    RequestId=f"r-{i // 20}",
                    EventResult="Failure" if kind == "ssh.login" and i % 8 == 2 else "Success",
                    EventMessage='=HYPERLINK("http://evil")' if i == 5 else f"event {i}",
                ).record
            )
        )
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditIndex]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.db'}"
    else:
        from tests.fixtures.postgres import create_database, drop_database

        admin = request.getfixturevalue("postgres_url")
        name = f"audit_{secrets.token_hex(6)}"
        url = create_database(admin, name)
    idx = AuditIndex.from_url(url)
    yield idx
    idx.engine.dispose()
    if request.param == "postgres":
        drop_database(admin, name)


def test_filters_answer_who_touched_what_and_when(index: AuditIndex) -> None:
    index.add(_events())
    page = index.search(
        EventQuery(engineer="sato", start=T0, end=T0 + timedelta(hours=10), limit=1000)
    )
    assert page.events and all(e["ActorUsername"] == "sato" for e in page.events)
    assert all("2026-04-01T08" <= e["TimeGenerated"] < "2026-04-01T18" for e in page.events)
    assert len(page.events) == 20  # 60 events in 10 h, every third is sato's
    by_id = index.search(EventQuery(engineer="u-0", limit=1000)).events
    assert {e["ActorUsername"] for e in by_id} == {"sato"}
    q = EventQuery(
        hospital_id="h-handa", instrument="cobas-1", types=("session.started", "session.command")
    )
    got = index.search(q).events
    assert got and all(
        e["HospitalId"] == "h-handa"
        and e["TargetHostname"] == "cobas-1"
        and e["EventType"].startswith("session.")
        for e in got
    )
    fails = index.search(EventQuery(outcome="Failure", limit=1000)).events
    assert fails and {e["EventType"] for e in fails} == {"ssh.login"}
    assert len(index.search(EventQuery(session_id="s-3")).events) == 10
    assert len(index.search(EventQuery(request_id="r-2", vendor_id="v-roche")).events) == 20
    scoped = index.search(EventQuery(hospital_ids=("h-okayama",), limit=1000)).events
    assert {e["HospitalId"] for e in scoped} == {"h-okayama"}


def test_pages_cover_every_event_once_in_order(index: AuditIndex) -> None:
    index.add(_events())
    seen: list[str] = []
    q = EventQuery(limit=7, newest_first=True)
    while True:
        page = index.search(q)
        seen += [e["EventUid"] for e in page.events]
        if not page.next_page:
            break
        q = EventQuery(limit=7, newest_first=True, page=page.next_page)
    assert len(seen) == len(set(seen)) == 300
    assert len(list(index.iterate(EventQuery()))) == 300


def test_absurd_queries_get_clear_errors(index: AuditIndex) -> None:
    for bad, msg in (
        (EventQuery(start=T0, end=T0 - timedelta(days=1)), "after its start"),
        (EventQuery(limit=0), "page size"),
        (EventQuery(limit=10**6), "page size"),
        (EventQuery(types=("no.such",)), "unknown event types"),
        (EventQuery(page="garbage!!"), "page token"),
        (EventQuery(outcome="Maybe"), "outcome"),
    ):
        with pytest.raises(QueryError, match=msg):
            index.search(bad)
    # a huge but valid range is fine
    assert (
        index.search(
            EventQuery(start=datetime(1970, 1, 1, tzinfo=UTC), end=datetime(2999, 1, 1, tzinfo=UTC))
        ).events
        == []
    )


def test_index_is_fed_from_the_log_and_ignores_resent_batches(tmp_path: Path) -> None:
    index = AuditIndex.from_url(f"sqlite:///{tmp_path / 'i.db'}")
    with ChainLog(tmp_path / "audit.log") as log:
        for e in _events(50):
            log.emit(new_event("user.logout", ActorUsername=str(e["ActorUsername"])))
        shipper = Shipper(IndexSink(index), log.path, CursorStore(tmp_path / "c"), batch_size=20)
        while shipper.ship_once():
            pass
    assert index.count() == 50
    IndexSink(index).send(
        [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()[:30]]
    )
    assert index.count() == 50


def test_exports_in_csv_and_json_lines(index: AuditIndex) -> None:
    index.add(_events(40))
    rows = list(index.iterate(EventQuery(engineer="tanaka")))
    out = io.StringIO()
    assert write_export(rows, "csv", out) == len(rows)
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["EventUid"] for r in parsed] == [e["EventUid"] for e in rows]
    assert parsed[0]["ActorUsername"] == "tanaka"
    all_rows = list(index.iterate(EventQuery()))
    out = io.StringIO()
    write_export(all_rows, "csv", out)
    evil = next(
        r for r in csv.DictReader(io.StringIO(out.getvalue())) if "HYPERLINK" in r["EventMessage"]
    )
    assert evil["EventMessage"].startswith("'=")  # not a live formula in a spreadsheet
    out = io.StringIO()
    assert write_export(rows, "jsonl", out) == len(rows)
    assert [json.loads(x) for x in out.getvalue().splitlines()] == rows
