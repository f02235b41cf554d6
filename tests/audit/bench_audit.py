"""Throughput of the audit log (a measurement, not a test): ``python -m tests.audit.bench_audit``.

Prints events/s for single appends from one thread, from four threads, and for
``append_many`` batches, with a signing key and checkpoints every 1000 events.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from audit import new_event
from audit.chain import ChainLog, verify
from audit.signing import CheckpointSigner


def _event(i: int) -> object:
    return new_event(
        "session.command",
        ActorUsername="eng-tanaka",
        TargetHostname="cobas-c503-1",
        TargetSessionId="s-1",
        HospitalId="h-1",
        details={"command": f"ls -l /tmp/{i}"},
    )


def main(n: int = 50_000) -> None:
    signer = CheckpointSigner.generate()
    with tempfile.TemporaryDirectory() as d:
        events = [_event(i) for i in range(n)]
        with ChainLog(Path(d) / "a.log", signer=signer) as log:
            t = time.perf_counter()
            for e in events:
                log.emit(e)  # type: ignore[arg-type]
            print(f"emit, 1 thread:   {n / (time.perf_counter() - t):,.0f} events/s")
        with ChainLog(Path(d) / "b.log", signer=signer) as log:
            chunks = [events[k::4] for k in range(4)]
            threads = [
                threading.Thread(target=lambda c=c: [log.emit(e) for e in c]) for c in chunks
            ]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            print(f"emit, 4 threads:  {n / (time.perf_counter() - t):,.0f} events/s")
        with ChainLog(Path(d) / "c.log", signer=signer) as log:
            t = time.perf_counter()
            for k in range(0, n, 100):
                log.append_many(events[k : k + 100])  # type: ignore[arg-type]
            print(f"append_many(100): {n / (time.perf_counter() - t):,.0f} events/s")
        with ChainLog(Path(d) / "d.log", signer=signer, fsync=True) as log:
            m = n // 10
            chunks = [events[k:m:8] for k in range(8)]
            threads = [
                threading.Thread(target=lambda c=c: [log.emit(e) for e in c]) for c in chunks
            ]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            print(
                f"emit+fsync, 8 threads (group commit): "
                f"{m / (time.perf_counter() - t):,.0f} events/s"
            )
        t = time.perf_counter()
        result = verify(Path(d) / "a.log")
        print(
            f"verify:           {result.count / (time.perf_counter() - t):,.0f} events/s "
            f"({result.checkpoints} checkpoints)"
        )


if __name__ == "__main__":
    main()


def index_bench(n: int = 1_000_000, queries: int = 200) -> None:
    """p50/p95 of 'engineer X between T1 and T2' over ``n`` indexed events (SQLite)."""
    import json
    import random
    import statistics
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from audit.index import AuditIndex, EventQuery, events_table

    rng = random.Random(7)
    start = datetime(2026, 7, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as d:
        index = AuditIndex.from_url(f"sqlite:///{d}/i.db")
        t = time.perf_counter()
        with index.engine.begin() as conn:
            for k in range(0, n, 20_000):
                rows = []
                for i in range(k, min(n, k + 20_000)):
                    ts = start + timedelta(seconds=i * 90 * 86400 / n)
                    rec = {
                        "EventUid": f"u{i}",
                        "TimeGenerated": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        "EventType": "session.command",
                        "ActorUsername": f"eng{rng.randrange(500)}",
                        "HospitalId": "h1",
                    }
                    rows.append({**rec, "ChainSeq": i, "record": json.dumps(rec)})
                conn.execute(insert(events_table), rows)
        print(f"loaded {n:,} in {time.perf_counter() - t:.0f}s")
        times = []
        for _ in range(queries):
            t0 = start + timedelta(days=rng.randrange(80))
            q = EventQuery(
                engineer=f"eng{rng.randrange(500)}",
                start=t0,
                end=t0 + timedelta(days=rng.randrange(1, 8)),
                limit=1000,
            )
            t = time.perf_counter()
            index.search(q)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        print(
            f"query p50 {statistics.median(times):.1f} ms, "
            f"p95 {times[int(len(times) * 0.95)]:.1f} ms"
        )
