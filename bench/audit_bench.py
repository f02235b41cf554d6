"""Audit benchmarks: hash-chained appends per second, auditor queries over 1M events.

Appends go through the real :class:`audit.chain.ChainLog` (no fsync, as the
broker runs it), one ``emit`` per event, events built beforehand with
:func:`audit.new_event`; the build-and-append figure and a batched figure
(``append_many`` of 100) are reported beside it.

Queries are the auditor's "what did engineer X do between T1 and T2":
``ActorUsername = ? AND TimeGenerated BETWEEN ? AND ?``, every matching full
record returned in time order.  The table is shaped like the event columns
(the columns auditors filter on, plus the whole record as JSON) with an index
on ``(ActorUsername, TimeGenerated)``, loaded with synthetic events: 500
engineers over 90 days, windows of 1 to 7 days.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit import new_event
from audit.chain import ChainLog
from bench.probes import summarize
from bench.report import Results

ENGINEERS = 500
SPAN_DAYS = 90
START = datetime(2026, 7, 1, tzinfo=UTC)
EVENT_TYPE = "admin.change"

DDL = [
    "CREATE TABLE audit_events (ChainSeq BIGINT PRIMARY KEY, TimeGenerated VARCHAR(32) NOT NULL,"
    " EventType VARCHAR(64) NOT NULL, ActorUsername VARCHAR(128), TargetHostname VARCHAR(64),"
    " HospitalId VARCHAR(32), record TEXT NOT NULL)",
    "CREATE INDEX audit_events_actor_time ON audit_events (ActorUsername, TimeGenerated)",
]
QUERY = ("SELECT record FROM audit_events WHERE ActorUsername = {p} AND TimeGenerated >= {p}"
         " AND TimeGenerated < {p} ORDER BY TimeGenerated")


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def measure_append(res: Results, workdir: Path, n: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    events = [new_event(EVENT_TYPE, ActorUsername=f"eng{i % ENGINEERS}", Operation="update",
                        Object=f"policy-{i}", ObjectType="policy") for i in range(n)]
    path = workdir / "append.log"
    for p in (path, path.with_name(path.name + ".head")):
        p.unlink(missing_ok=True)
    with ChainLog(path) as log:
        t0 = time.perf_counter()
        for e in events:
            log.emit(e)
        single = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(0, n, 100):
            log.append_many(events[i:i + 100])
        batched = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(n):
            log.emit(new_event(EVENT_TYPE, ActorUsername=f"eng{i % ENGINEERS}",
                               Operation="update", Object=f"policy-{i}", ObjectType="policy"))
        built = n / (time.perf_counter() - t0)
    res.put("audit_append_per_s", single, 0)
    res.put("audit_append_batched_per_s", batched, 0)
    res.put("audit_build_and_append_per_s", built, 0)
    res.put("audit_append_events", n)


def synthetic_rows(n: int, seed: int = 8) -> Iterator[tuple[Any, ...]]:
    """``n`` event rows in time order, spread over 500 engineers and 90 days."""
    rng = random.Random(seed)
    template = dict(new_event(EVENT_TYPE, ActorUsername="x", Operation="update",
                              Object="policy", ObjectType="policy").record)
    step = SPAN_DAYS * 86400 / n
    for seq in range(1, n + 1):
        t = _ts(START + timedelta(seconds=seq * step))
        actor = f"eng{rng.randrange(ENGINEERS)}"
        target = f"cobas-c503-{rng.randrange(200)}"
        hospital = f"{rng.randrange(500):032x}"
        rec = dict(template, TimeGenerated=t, ActorUsername=actor, TargetHostname=target,
                   HospitalId=hospital, ChainSeq=seq, EventUid=f"{seq:032x}")
        yield (seq, t, EVENT_TYPE, actor, target, hospital, json.dumps(rec, sort_keys=True))


def query_params(count: int, seed: int = 88) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        days = rng.randint(1, 7)
        start = START + timedelta(seconds=rng.uniform(0, (SPAN_DAYS - days) * 86400))
        out.append((f"eng{rng.randrange(ENGINEERS)}", _ts(start),
                    _ts(start + timedelta(days=days))))
    return out


def _time_queries(run: Callable[[tuple[str, str, str]], int],
                  params: list[tuple[str, str, str]]) -> tuple[list[float], int]:
    for p in params[:10]:  # warm the cache as a running broker's would be
        run(p)
    times, rows = [], 0
    for p in params:
        t0 = time.perf_counter()
        rows += run(p)
        times.append(time.perf_counter() - t0)
    return times, rows


def measure_sqlite(res: Results, workdir: Path, n: int, queries: int) -> None:
    path = workdir / "audit-index.sqlite"
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        for stmt in DDL:
            db.execute(stmt)
        t0 = time.perf_counter()
        db.executemany("INSERT INTO audit_events VALUES (?,?,?,?,?,?,?)", synthetic_rows(n))
        db.commit()
        res.put("audit_load_s_sqlite", time.perf_counter() - t0, 1)
        sql = QUERY.format(p="?")

        def run(p: tuple[str, str, str]) -> int:
            return len(db.execute(sql, p).fetchall())

        times, rows = _time_queries(run, query_params(queries))
    finally:
        db.close()
    s = summarize(times)
    res.put("audit_query_p50_ms_sqlite", s.p50 * 1000)
    res.put("audit_query_p95_ms_sqlite", s.p95 * 1000)
    res.put("audit_query_rows_per_query_sqlite", rows / len(times), 1)


def measure_postgres(res: Results, url: str, n: int, queries: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in DDL:
            conn.execute(stmt.replace("INDEX audit", "INDEX IF NOT EXISTS audit"))
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
                "COPY audit_events (ChainSeq, TimeGenerated, EventType, ActorUsername,"
                " TargetHostname, HospitalId, record) FROM STDIN") as copy:
            for row in synthetic_rows(n):
                copy.write_row(row)
        conn.execute("ANALYZE audit_events")
        res.put("audit_load_s_postgres", time.perf_counter() - t0, 1)
        sql = QUERY.format(p="%s")

        def run(p: tuple[str, str, str]) -> int:
            return len(conn.execute(sql, p).fetchall())

        times, rows = _time_queries(run, query_params(queries))
    s = summarize(times)
    res.put("audit_query_p50_ms_postgres", s.p50 * 1000)
    res.put("audit_query_p95_ms_postgres", s.p95 * 1000)
    res.put("audit_query_rows_per_query_postgres", rows / len(times), 1)
