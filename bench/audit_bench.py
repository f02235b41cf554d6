"""Audit benchmarks: hash-chained appends per second, auditor queries over 1M events.

Appends go through the real :class:`audit.chain.ChainLog` as the broker runs
it (no fsync, signed checkpoints every 1,000 events), one ``emit`` per event,
events built beforehand with :func:`audit.new_event`; the build-and-append
figure, an unsigned figure and a batched figure (``append_many`` of 100) are
reported beside it.

The durable figure (:func:`measure_durable`) is the PostgreSQL chain
(``audit_store = "postgres"``) on a server with fsync on: ``emit`` returns once
committed, from 1, 8, 32 and 256 producer threads sharing group commits, and
from 8 threads appending batches of 100.

Queries are the auditor's "what did engineer X do between T1 and T2" through
the real :class:`audit.index.AuditIndex` (``EventQuery(engineer=..., start=...,
end=..., limit=1000)``: full records, oldest first) on SQLite and on
PostgreSQL.  The index is loaded with synthetic events (500 engineers over 90
days; windows of 1 to 7 days) by bulk insert of the rows the index itself
would write, then vacuumed on PostgreSQL as autovacuum keeps it in service; the
time to load is reported, not part of the query figures.  The same windows as
the console's search page asks them (the newest 50) are timed beside.
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
from bench.report import Results, machine

ENGINEERS = 500
SPAN_DAYS = 90
START = datetime(2026, 7, 1, tzinfo=UTC)
EVENT_TYPE = "admin.change"
LARGE_INDEX = 10_000_000  # the requirement's PostgreSQL query target is at 10M events


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
        # the bench server commits asynchronously; VACUUM marks a page all-visible only
        # once the commit of its rows is flushed, so flush this one
        cur.execute("SET synchronous_commit = on")
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
        t1 = time.perf_counter()
        if index.engine.dialect.name == "postgresql":
            # the table as autovacuum keeps it in service (audit.index sets it to run
            # every 10,000 new rows): pages all-visible, so the engineer's records
            # come from the user-name index alone
            with index.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("VACUUM (ANALYZE) audit_events")
        else:
            with index.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
        res.put(f"audit_load_s_{label}", time.perf_counter() - t0, 1)
        res.put(f"audit_load_vacuum_s_{label}", time.perf_counter() - t1, 1)
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
        # beside it, what the console's search page asks: the newest 50
        console = []
        for who, start, end in params:
            q = EventQuery(engineer=who, start=start, end=end, limit=50, newest_first=True)
            t = time.perf_counter()
            index.search(q)
            console.append(time.perf_counter() - t)
    finally:
        index.engine.dispose()
    page = summarize(console)
    res.put(f"audit_query_p50_ms_{label}_console_page_of_50", page.p50 * 1000)
    res.put(f"audit_query_p95_ms_{label}_console_page_of_50", page.p95 * 1000)
    s = summarize(times)
    res.put(f"audit_query_p50_ms_{label}", s.p50 * 1000)
    res.put(f"audit_query_p95_ms_{label}", s.p95 * 1000)
    res.put(f"audit_query_rows_per_query_{label}", rows / len(times), 1)
    res.put(f"audit_index_events_{label}", n)
    if label in ("sqlite", "postgres"):
        res.put("audit_index_events", n)
    if label == "postgres":
        _large_postgres(res, n, s.p50 * 1000, s.p95 * 1000)


def _large_postgres(res: Results, n: int, p50_ms: float, p95_ms: float) -> None:
    """The 10M-event figures: these figures when ``n`` reaches it, else a note saying so."""
    keys = ["audit_query_p95_ms_postgres_10M", "audit_query_p50_ms_postgres_10M"]
    if n >= LARGE_INDEX:
        res.put(keys[0], p95_ms)
        res.put(keys[1], p50_ms)
        return
    res.missing(
        keys,
        f"this run loaded {n:,} events into PostgreSQL, not {LARGE_INDEX:,} (bench/sizes.py "
        "audit_events); python -m bench.audit_bench --index-events 10000000 --merge "
        "bench/results.json measures them",
    )


def measure_durable(
    res: Results,
    url: str,
    n: int,
    producers: tuple[int, ...] = (1, 8, 32, 256),
    batched: int = 100,
) -> dict[int, float]:
    """Appends/s to the PostgreSQL chain (``audit_store = "postgres"``), end to end: each
    producer thread calls ``emit`` and it returns only once the event is committed
    (group commit shares the transactions; the writer sends the next batch while the
    last one commits).  Signed checkpoints every 1,000 events; events built beforehand,
    as for the file figure.  Run it on a server with fsync and synchronous_commit on
    (``pg.throwaway_postgres(durable=True)``).

    Each emitter waits for its commit, so ``p`` producers append at most ``p`` events
    per commit: the rate is bounded by ``p / commit time``, and the commits per second
    (``audit_durable_commits_per_s_*``) by the disk's flush.  ``p`` producers append
    ``min(n, 1000 * p)`` events (a single producer is the flush rate itself).  The
    batched figure: 8 producers calling ``append_many`` with ``batched`` events each
    (a caller with several events at once), also acknowledged only once committed.
    ``audit_append_durable_per_s`` is the highest of these figures."""
    import threading

    from audit.pgchain import PgChainLog, store_engine, verify_chain

    engine = store_engine(url)
    signer = CheckpointSigner.generate()
    out: dict[int, float] = {}
    best = 0.0

    def one(chain: str, p: int, count: int, size: int) -> tuple[float, int, float]:
        events = [_event(i) for i in range(count)]
        chunks = [events[k::p] for k in range(p)]
        with PgChainLog(engine, chain, signer=signer) as log:

            def run(chunk: list[Any], log: PgChainLog = log) -> None:
                if size == 1:
                    for e in chunk:
                        log.emit(e)
                else:
                    for i in range(0, len(chunk), size):
                        log.append_many(chunk[i : i + size])

            threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.perf_counter() - t0
            commits = max(1, log.commits)
        result = verify_chain(engine, chain, keys=None, checkpoint_every=1000)
        if not result.ok or result.count < count:
            raise RuntimeError(f"the benchmark chain does not verify: {result.reason}")
        return count / took, commits, took

    try:
        for p in producers:
            count = min(n, 1000 * p)
            rate, commits, took = one(f"bench-{p}", p, count, 1)
            out[p] = rate
            res.put(f"audit_durable_append_per_s_{p}_producers", rate, 0)
            res.put(f"audit_durable_events_per_commit_{p}_producers", count / commits, 1)
            res.put(f"audit_durable_commit_ms_{p}_producers", took / commits * 1000, 2)
            res.put(f"audit_durable_commits_per_s_{p}_producers", commits / took, 0)
            res.put(f"audit_durable_append_events_{p}_producers", count)
        if batched > 1:
            rate, commits, took = one(f"bench-batched-{batched}", 8, n, batched)
            best = max(best, rate)
            res.put(f"audit_durable_append_per_s_8_producers_batches_of_{batched}", rate, 0)
            res.put(
                f"audit_durable_events_per_commit_8_producers_batches_of_{batched}", n / commits, 1
            )
            res.put(
                f"audit_durable_commits_per_s_8_producers_batches_of_{batched}", commits / took, 0
            )
    finally:
        engine.dispose()
    res.put("audit_durable_append_events", n)
    res.put("audit_append_durable_per_s", max([best, *out.values()]), 0)
    return out


def _index_run(res: Results, label: str, n: int, queries: int) -> None:
    from bench import pg

    reason = pg.unavailable()
    if reason:
        raise RuntimeError(reason)
    with pg.throwaway_postgres() as url:
        measure_index(res, url, label, n, queries)


DURABLE_KEY = "audit_append_durable_per_s"


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.audit_bench [--runs N] [--events N]``: only the durable chain,
    ``N`` times on one throwaway server (fsync on), each run's figures and the load.
    ``--index-events N [--merge FILE]``: only the PostgreSQL index of ``N`` events.
    ``--merge FILE`` with the durable runs: the median run's figures go into FILE."""
    import argparse
    import json
    import os

    from bench import pg

    ap = argparse.ArgumentParser(prog="python -m bench.audit_bench", description=main.__doc__)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument(
        "--index-events",
        type=int,
        default=0,
        help="instead: load this many events into PostgreSQL and time the auditor's queries",
    )
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--merge", type=Path, default=None, help="merge the figures into this file")
    args = ap.parse_args(argv)
    if args.index_events:
        res = Results("full")
        res.info["machine"] = machine()
        # a smaller load is a trial (how long the load takes), kept apart from the figures
        label = "postgres_10M" if args.index_events >= LARGE_INDEX else "postgres_trial"
        res.section(
            f"audit {label}",
            [f"audit_query_p95_ms_{label}", f"audit_query_p50_ms_{label}"],
            lambda: _index_run(res, label, args.index_events, args.queries),
        )
        res.info["machine"]["loadavg_at_end"] = list(os.getloadavg())
        doc = res.write(args.merge, merge=True) if args.merge else res.document()
        print(json.dumps({k: doc.get(k) for k in sorted(res.figures)}, indent=1))
        return 0
    runs: list[tuple[float, Results]] = []
    with pg.throwaway_postgres(durable=True) as url:
        for run in range(max(1, args.runs)):
            res = Results("full")
            res.info["machine"] = machine()
            load = os.getloadavg()[0]

            def one(r: Results = res) -> None:
                measure_durable(r, url, args.events)

            res.section("audit durable chain", [DURABLE_KEY], one)
            res.info["machine"]["loadavg_at_end"] = list(os.getloadavg())
            figures: dict[str, Any] = {k: v for k, v in sorted(res.figures.items()) if "_per_" in k}
            figures["loadavg_start_end"] = [round(load, 1), round(os.getloadavg()[0], 1)]
            print(json.dumps({"run": run + 1, **figures}), flush=True)
            runs.append((float(res.figures.get(DURABLE_KEY) or 0), res))
    if args.merge:
        # the median run's figures, with every run's headline figure beside them
        runs.sort(key=lambda r: r[0])
        median = runs[len(runs) // 2][1]
        median.info["audit_durable_runs_per_s"] = [v for v, _ in runs]
        median.write(args.merge, merge=True)
        print(f"merged the median of {len(runs)} runs into {args.merge}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
