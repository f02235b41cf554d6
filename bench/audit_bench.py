"""Audit benchmarks: hash-chained appends per second, auditor queries over 1M events.

Appends go through the real :class:`audit.chain.ChainLog` as the broker runs
it (no fsync, signed checkpoints every 1,000 events), one ``emit`` per event,
events built beforehand with :func:`audit.new_event`; the build-and-append
figure, an unsigned figure and a batched figure (``append_many`` of 100) are
reported beside it.

The durable figure (:func:`measure_durable`) is the PostgreSQL chain
(``audit_store = "postgres"``) on a server with fsync on: ``emit`` returns once
committed, from 1, 16 and 256 producer threads sharing group commits.

Queries are the auditor's "what did engineer X do between T1 and T2" through
the real :class:`audit.index.AuditIndex` (``EventQuery(engineer=..., start=...,
end=..., limit=1000)``: full records, oldest first) on SQLite and on
PostgreSQL.  The index is loaded with synthetic events (500 engineers over 90
days; windows of 1 to 7 days) by bulk insert of the rows the index itself
would write; the time to load is reported, not part of the query figures.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit import new_event
from audit.chain import ChainLog
from audit.signing import CheckpointSigner
from bench.probes import summarize
from bench.report import Results

ENGINEERS = 500
SPAN_DAYS = 90
START = datetime(2026, 7, 1, tzinfo=UTC)
EVENT_TYPE = "admin.change"


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fresh(path: Path) -> Path:
    for p in (path, path.with_name(path.name + ".head")):
        p.unlink(missing_ok=True)
    return path


def _event(i: int) -> Any:
    return new_event(
        EVENT_TYPE,
        ActorUsername=f"eng{i % ENGINEERS}",
        Operation="update",
        Object=f"policy-{i}",
        ObjectType="policy",
        HospitalId=f"{i % 500:032x}",
    )


def measure_append(res: Results, workdir: Path, n: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    events = [_event(i) for i in range(n)]
    signer = CheckpointSigner.generate()
    with ChainLog(_fresh(workdir / "signed.log"), signer=signer) as log:
        t0 = time.perf_counter()
        for e in events:
            log.emit(e)
        signed = n / (time.perf_counter() - t0)
    with ChainLog(_fresh(workdir / "batched.log"), signer=signer) as log:
        t0 = time.perf_counter()
        for i in range(0, n, 100):
            log.append_many(events[i : i + 100])
        batched = n / (time.perf_counter() - t0)
    with ChainLog(_fresh(workdir / "built.log"), signer=signer) as log:
        t0 = time.perf_counter()
        for i in range(n):
            log.emit(_event(i))
        built = n / (time.perf_counter() - t0)
    with ChainLog(_fresh(workdir / "unsigned.log")) as log:
        t0 = time.perf_counter()
        for e in events:
            log.emit(e)
        unsigned = n / (time.perf_counter() - t0)
    res.put("audit_append_per_s", signed, 0)
    res.put("audit_append_unsigned_per_s", unsigned, 0)
    res.put("audit_append_batched_per_s", batched, 0)
    res.put("audit_build_and_append_per_s", built, 0)
    res.put("audit_append_events", n)


def synthetic_records(n: int, seed: int = 8) -> Iterator[dict[str, Any]]:
    """``n`` event records in time order, spread over 500 engineers, 200 hospitals, 90 days."""
    rng = random.Random(seed)
    template = dict(_event(0).record)
    step = SPAN_DAYS * 86400 / n
    for seq in range(1, n + 1):
        yield dict(
            template,
            TimeGenerated=_ts(START + timedelta(seconds=seq * step)),
            ActorUsername=f"eng{rng.randrange(ENGINEERS)}",
            ActorUserId=f"{rng.randrange(ENGINEERS):032x}",
            TargetHostname=f"cobas-c503-{rng.randrange(200)}",
            HospitalId=f"{rng.randrange(200):032x}",
            ChainSeq=seq,
            EventUid=f"{seq:032x}",
            Object=f"policy-{seq}",
        )


def query_params(count: int, seed: int = 88) -> list[tuple[str, datetime, datetime]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        days = rng.randint(1, 7)
        start = START + timedelta(seconds=rng.uniform(0, (SPAN_DAYS - days) * 86400))
        out.append((f"eng{rng.randrange(ENGINEERS)}", start, start + timedelta(days=days)))
    return out


def _copy_postgres(engine: Any, n: int) -> None:
    """Bulk-load the index's own rows with COPY (PostgreSQL)."""
    from audit.index import _row, events_table

    cols = [c.name for c in events_table.columns if c.name != "id"]
    names = ", ".join(f'"{c}"' for c in cols)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f"COPY audit_events ({names}) FROM STDIN") as copy:
            for rec in synthetic_records(n):
                row = _row(rec)
                copy.write_row([row[c] for c in cols])
        raw.commit()
    finally:
        raw.close()


def measure_index(res: Results, url: str, label: str, n: int, queries: int) -> None:
    """Load ``n`` events into an :class:`AuditIndex` at ``url`` and time auditor queries."""
    from sqlalchemy import insert

    from audit.index import AuditIndex, EventQuery, _row, events_table

    index = AuditIndex.from_url(url)
    try:
        t0 = time.perf_counter()
        if index.engine.dialect.name == "postgresql":
            _copy_postgres(index.engine, n)
        else:
            batch: list[dict[str, Any]] = []
            with index.engine.begin() as conn:
                for rec in synthetic_records(n):
                    batch.append(_row(rec))
                    if len(batch) == 10_000:
                        conn.execute(insert(events_table), batch)
                        batch = []
                if batch:
                    conn.execute(insert(events_table), batch)
        with index.engine.begin() as conn:
            if index.engine.dialect.name == "postgresql":
                conn.exec_driver_sql("ANALYZE audit_events")
            else:
                conn.exec_driver_sql("ANALYZE")
        res.put(f"audit_load_s_{label}", time.perf_counter() - t0, 1)
        params = query_params(queries)
        for who, start, end in params[:10]:  # warm caches as a running broker's would be
            index.search(EventQuery(engineer=who, start=start, end=end, limit=1000))
        times, rows = [], 0
        for who, start, end in params:
            t = time.perf_counter()
            rows += len(
                index.search(EventQuery(engineer=who, start=start, end=end, limit=1000)).events
            )
            times.append(time.perf_counter() - t)
    finally:
        index.engine.dispose()
    s = summarize(times)
    res.put(f"audit_query_p50_ms_{label}", s.p50 * 1000)
    res.put(f"audit_query_p95_ms_{label}", s.p95 * 1000)
    res.put(f"audit_query_rows_per_query_{label}", rows / len(times), 1)
    res.put("audit_index_events", n)


def measure_durable(
    res: Results,
    url: str,
    n: int,
    producers: tuple[int, ...] = (1, 16, 256),
) -> dict[int, float]:
    """Appends/s to the PostgreSQL chain (``audit_store = "postgres"``), end to end: each
    producer thread calls ``emit`` and it returns only once the event is committed
    (group commit shares the transactions).  Signed checkpoints every 1,000 events;
    events built beforehand, as for the file figure.  Run it on a server with fsync and
    synchronous_commit on (``pg.throwaway_postgres(durable=True)``)."""
    import threading

    from audit.pgchain import PgChainLog, store_engine, verify_chain

    engine = store_engine(url)
    signer = CheckpointSigner.generate()
    out: dict[int, float] = {}
    try:
        for p in producers:
            events = [_event(i) for i in range(n)]
            chunks = [events[k::p] for k in range(p)]
            chain = f"bench-{p}"
            with PgChainLog(engine, chain, signer=signer) as log:

                def run(chunk: list[Any], log: PgChainLog = log) -> None:
                    for e in chunk:
                        log.emit(e)

                threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                rate = n / (time.perf_counter() - t0)
                commits = log.commits
            result = verify_chain(engine, chain, keys=None, checkpoint_every=1000)
            if not result.ok or result.count < n:
                raise RuntimeError(f"the benchmark chain does not verify: {result.reason}")
            out[p] = rate
            res.put(f"audit_durable_append_per_s_{p}_producers", rate, 0)
            res.put(f"audit_durable_events_per_commit_{p}_producers", n / max(1, commits), 1)
    finally:
        engine.dispose()
    res.put("audit_durable_append_events", n)
    return out
