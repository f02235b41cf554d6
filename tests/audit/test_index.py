"""Auditor queries: filters, pagination and exports, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Iterator
from dataclasses import replace
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
SPARSE = ("VendorId", "TargetSessionId", "RequestId", "GrantId", "GatewayId")
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


def _index_names(index: AuditIndex) -> set[str]:
    from sqlalchemy import inspect

    with index.engine.connect() as conn:
        return {str(ix["name"]) for ix in inspect(conn).get_indexes("audit_events")}


def test_an_engineer_is_found_by_user_name_or_user_id_once_each_in_pages(
    index: AuditIndex,
) -> None:
    events = _events(60)
    for e in events[:3]:  # a user whose user id is also someone's user name
        e["ActorUserId"] = "suzuki"
    index.add(events)
    want = [e["EventUid"] for e in events if "suzuki" in (e["ActorUsername"], e["ActorUserId"])]
    assert len(want) == 22  # suzuki's 20 and the 2 of sato and tanaka carrying that id
    for newest_first in (False, True):
        seen: list[object] = []
        q = EventQuery(engineer="suzuki", limit=3, newest_first=newest_first)
        while True:
            page = index.search(q)
            seen += [e["EventUid"] for e in page.events]
            if not page.next_page:
                break
            q = replace(q, page=page.next_page)
        assert seen == (want[::-1] if newest_first else want)


def test_long_records_are_indexed_and_found_in_order_with_the_others(
    index: AuditIndex,
) -> None:
    """A record too long for an index entry (PostgreSQL keeps the short ones in the
    user-name index) is still indexed and found, in its place among the others."""
    events = _events(30)
    for i, size in ((4, 1995), (7, 2100), (13, 50_000), (22, 3_000_000)):
        events[i]["EventMessage"] = "x" * size
    index.add(events)
    want = [e["EventUid"] for e in events if e["ActorUsername"] == "suzuki"]
    for newest_first in (False, True):
        got = index.search(EventQuery(engineer="suzuki", limit=1000, newest_first=newest_first))
        assert [e["EventUid"] for e in got.events] == (want[::-1] if newest_first else want)
    long = index.search(EventQuery(engineer="suzuki", limit=1000)).events
    assert {len(e["EventMessage"]) for e in long} >= {2100, 50_000, 3_000_000}


def test_an_index_of_the_earlier_version_is_brought_up_to_date(index: AuditIndex) -> None:
    """A table created before the user-name index carried the records: the next start
    adds that index, drops the one it replaces, and searches answer as before."""
    url = index.engine.url.render_as_string(hide_password=False)
    postgres = index.engine.dialect.name == "postgresql"
    with index.engine.begin() as conn:  # the earlier version's schema
        conn.exec_driver_sql("DROP INDEX ix_audit_events_actorusername_records")
        conn.exec_driver_sql(
            "CREATE INDEX ix_audit_events_actorusername_time ON audit_events "
            '("ActorUsername", "TimeGenerated", id)'
        )
        for col in SPARSE:  # each sparse column indexed with its empty entries too
            conn.exec_driver_sql(f"DROP INDEX ix_audit_events_{col.lower()}_named")
            conn.exec_driver_sql(
                f"CREATE INDEX ix_audit_events_{col.lower()}_time ON audit_events "
                f'("{col}", "TimeGenerated", id)'
            )
        if postgres:
            conn.exec_driver_sql(
                "ALTER TABLE audit_events RESET (autovacuum_vacuum_insert_threshold, "
                "autovacuum_vacuum_insert_scale_factor)"
            )
    index.add(_events())
    before = index.search(EventQuery(engineer="tanaka", limit=1000)).events
    by_request = index.search(EventQuery(request_id="r-3", limit=1000)).events
    again = AuditIndex.from_url(url)
    try:
        names = _index_names(again)
        assert "ix_audit_events_actorusername_records" in names
        assert "ix_audit_events_actorusername_time" not in names
        for col in SPARSE:
            assert f"ix_audit_events_{col.lower()}_named" in names
            assert f"ix_audit_events_{col.lower()}_time" not in names
        assert again.search(EventQuery(engineer="tanaka", limit=1000)).events == before
        assert len(before) == 100
        assert again.search(EventQuery(request_id="r-3", limit=1000)).events == by_request
        assert len(by_request) == 20
        if postgres:
            assert "ix_audit_events_actorusername_long" in names
            with again.engine.connect() as conn:
                options = conn.exec_driver_sql(
                    "SELECT reloptions FROM pg_class WHERE relname = 'audit_events'"
                ).scalar()
            assert "autovacuum_vacuum_insert_threshold=10000" in (options or ())
        AuditIndex.from_url(url).engine.dispose()  # a second start changes nothing
        assert _index_names(again) == names
    finally:
        again.engine.dispose()


def test_a_request_is_found_through_the_index_of_the_events_naming_one(
    index: AuditIndex,
) -> None:
    """Most events name no request: the request index holds only those that do, and a
    search by request (as by grant, session, vendor or gateway) reads that index."""
    events = _events(200)
    for e in events[100:]:  # half the events name no request, grant or session
        for col in ("RequestId", "GrantId", "TargetSessionId"):
            e.pop(col, None)
    index.add(events)
    want = [e["EventUid"] for e in events if e.get("RequestId") == "r-2"]
    assert len(want) == 20
    sent: list[tuple[str, object]] = []
    from sqlalchemy import event

    def keep(_c: object, _cur: object, statement: str, params: object, *_: object) -> None:
        sent.append((statement, params))

    event.listen(index.engine, "before_cursor_execute", keep)
    got = index.search(EventQuery(request_id="r-2", limit=1000))
    event.remove(index.engine, "before_cursor_execute", keep)
    assert [e["EventUid"] for e in got.events] == want
    statement, params = sent[-1]
    postgres = index.engine.dialect.name == "postgresql"
    with index.engine.connect() as conn:
        if postgres:  # a few hundred rows: the table scan is cheapest unless ruled out
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_bitmapscan = off")
        explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        plan = "\n".join(
            str(r[-1])
            for r in conn.exec_driver_sql(explain + statement, params)  # type: ignore[arg-type]
        )
        definition = conn.exec_driver_sql(
            "SELECT pg_get_indexdef('ix_audit_events_requestid_named'::regclass)"
            if postgres
            else "SELECT sql FROM sqlite_master WHERE name = 'ix_audit_events_requestid_named'"
        ).scalar()
    assert "ix_audit_events_requestid_named" in plan
    # only the events that name a request (PostgreSQL writes the predicate in brackets)
    assert (
        str(definition).replace("(", "").replace(")", "").endswith('WHERE "RequestId" IS NOT NULL')
    )


def test_postgres_answers_an_engineer_from_the_index_alone(index: AuditIndex) -> None:
    """PostgreSQL reads an engineer's window from the user-name index, records
    included (an index-only scan, no table page), the few long records and the
    events by user id from their own indexes; SQLite has the user-name index
    without the records."""
    assert "ix_audit_events_actorusername_records" in _index_names(index)
    if index.engine.dialect.name != "postgresql":
        return
    from sqlalchemy import event

    others = [  # 3,000 events of 300 other engineers in sato's 10 hours
        dict(
            new_event(
                "ssh.login",
                clock=FakeClock(T0 + timedelta(seconds=12 * i)),
                ActorUsername=f"eng{i % 300}",
                ActorUserId=f"u-eng{i % 300}",
                HospitalId=HOSPITALS[i % 2],
            ).record
        )
        for i in range(3000)
    ]
    index.add(_events() + others)
    with index.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # the test server commits asynchronously, and VACUUM marks a page all-visible
        # only once the commits of its rows are flushed: a synchronous commit that
        # writes WAL flushes them
        conn.exec_driver_sql("SET synchronous_commit = on")
        conn.exec_driver_sql("CREATE TEMP TABLE flush_wal (x int)")
        conn.exec_driver_sql("VACUUM (ANALYZE) audit_events")  # what autovacuum does
    sent: list[tuple[str, object]] = []

    def keep(_c: object, _cur: object, statement: str, params: object, *_: object) -> None:
        sent.append((statement, params))

    event.listen(index.engine, "before_cursor_execute", keep)
    q = EventQuery(engineer="sato", start=T0, end=T0 + timedelta(hours=10), limit=1000)
    assert len(index.search(q).events) == 20
    event.remove(index.engine, "before_cursor_execute", keep)
    statement, params = sent[-1]
    with index.engine.connect() as conn:
        # 3,300 rows fill a few table pages: reading them (whole or by bitmap) is the
        # cheapest plan here; at 10M rows an engineer's events are one table page each
        conn.exec_driver_sql("SET enable_bitmapscan = off")
        conn.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(
            str(r[0])
            for r in conn.exec_driver_sql("EXPLAIN (ANALYZE) " + statement, params)  # type: ignore[arg-type]
        )
    assert "Index Only Scan using ix_audit_events_actorusername_records" in plan
    assert "Heap Fetches: 0" in plan
    assert "Index Scan using ix_audit_events_actorusername_long" in plan  # long records
    assert "Index Scan using ix_audit_events_actoruserid_time" in plan
    assert "Bitmap Heap Scan" not in plan
