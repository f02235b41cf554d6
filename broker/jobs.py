"""Singleton jobs: periodic work that runs exactly once per period across replicas.

The grants sweep (stale requests expired, grant windows opened and closed), the
audit reports of ended grants and the check for unsigned ones, and retention run
on *one* replica per period, whichever claims it first:

* time is cut into periods of the job's interval (``period = unix_time // interval``);
* a replica that wants to run period *k* takes the job's PostgreSQL advisory lock
  (``pg_try_advisory_lock``; held by its session, so a killed replica's lock goes
  with its connection), then inserts the row ``(job, k)`` into ``job_runs``, whose
  primary key admits one.  Only the replica whose insert succeeded runs the job;
  the row records who ran it, when it started and finished, and how it went;
* the lock is released when the run is over.  A run is therefore never under way
  twice at once, and each period runs at most once.  A replica that finds the lock
  held tries again soon (a quarter of the period, at most a second), within the
  same period; one that finds the period run sleeps into the next one.

Nothing is sticky: when a replica dies the next period is claimed by another.  On
SQLite (one process) the lock is a local one and the table works the same way.

Per-replica duties are *not* jobs: the audit log's time-based checkpoints (each
replica checkpoints its own chain), the sums of counted-only failed sign-ins and
of unknown gateways (held in that replica's memory).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from broker.store.tables import JOB_RUNS

log = logging.getLogger(__name__)

WAKE_S = 1.0  # a busy lock or an unreachable database is retried this often (at most)
KEEP_PERIODS = 10_000  # rows older than this many periods of a job are pruned
PRUNE_EVERY = 100  # periods between two prunes


def lock_key(job: str) -> int:
    """The job's advisory-lock key (a signed 64-bit integer, stable across replicas)."""
    digest = hashlib.sha256(b"hoshu-job\n" + job.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class Job:
    name: str
    interval_s: float
    run: Callable[[], object]
    done_period: int = -1  # the last period known to be run (here or elsewhere)
    ran: int = 0  # periods this replica ran
    local_lock: threading.Lock = field(default_factory=threading.Lock)


class Jobs:
    """This replica's side of the singleton jobs (see the module docstring)."""

    def __init__(
        self,
        engine: sa.Engine,
        replica_id: str,
        *,
        clock: Callable[[], float] = time.time,
        wake_s: float = WAKE_S,
    ) -> None:
        self.engine = engine
        self.replica_id = replica_id
        self._clock = clock
        self._wake_s = wake_s
        self._postgres = engine.dialect.name == "postgresql"
        self.jobs: dict[str, Job] = {}

    def add(self, name: str, interval_s: float, run: Callable[[], object]) -> None:
        if name in self.jobs:
            raise ValueError(f"job {name!r} is defined twice")
        if interval_s <= 0:
            raise ValueError(f"job {name!r}: the interval must be positive")
        self.jobs[name] = Job(name, interval_s, run)

    async def run(self) -> None:
        """Run every job's loop until cancelled."""
        await asyncio.gather(*(self._loop(job) for job in self.jobs.values()))

    async def _loop(self, job: Job) -> None:
        while True:
            period = int(self._clock() // job.interval_s)
            if period > job.done_period:
                try:
                    await asyncio.to_thread(self.claim_and_run, job, period)
                except Exception:  # the database is away: tried again at the next wake
                    log.exception("job %s: cannot claim period %d", job.name, period)
            if job.done_period >= period:  # this period is run: sleep into the next one
                delay = (period + 1) * job.interval_s - self._clock() + 0.01
            else:  # the lock was busy or the database away: try again soon
                delay = min(self._wake_s, job.interval_s / 4)
            await asyncio.sleep(min(max(0.01, delay), job.interval_s))

    # --- one attempt (a thread) --------------------------------------------------
    def claim_and_run(self, job: Job, period: int) -> str:
        """Try to run ``job`` for ``period``: "ran", "failed", "done" (claimed before)
        or "busy" (another run is under way: try again)."""
        if not self._postgres:
            if not job.local_lock.acquire(blocking=False):
                return "busy"
            try:
                return self._claimed_run(job, period)
            finally:
                job.local_lock.release()
        with self.engine.connect() as conn:
            key = lock_key(job.name)
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()
            if not got:
                return "busy"
            try:
                return self._claimed_run(job, period)
            finally:
                try:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
                except Exception:  # the lock must not outlive the run: drop the session
                    conn.invalidate()

    def _claimed_run(self, job: Job, period: int) -> str:
        started = datetime.now(UTC)
        taken: object = None
        try:
            with self.engine.begin() as tx:
                taken = tx.execute(
                    sa.select(JOB_RUNS.c.period).where(
                        (JOB_RUNS.c.job == job.name) & (JOB_RUNS.c.period == period)
                    )
                ).first()
                if taken is None:
                    tx.execute(
                        JOB_RUNS.insert().values(
                            job=job.name,
                            period=period,
                            replica_id=self.replica_id,
                            started_at=started,
                        )
                    )
        except IntegrityError:  # claimed at the same moment (the key admits one)
            taken = True
        if taken is not None:
            job.done_period = max(job.done_period, period)
            return "done"
        job.done_period = max(job.done_period, period)
        outcome = "ok"
        try:
            job.run()
        except Exception as exc:
            log.exception("job %s failed (period %d)", job.name, period)
            outcome = f"failed: {type(exc).__name__}"
        job.ran += 1
        with self.engine.begin() as tx:
            tx.execute(
                JOB_RUNS.update()
                .where((JOB_RUNS.c.job == job.name) & (JOB_RUNS.c.period == period))
                .values(finished_at=datetime.now(UTC), outcome=outcome)
            )
            if period % PRUNE_EVERY == 0:
                tx.execute(
                    JOB_RUNS.delete().where(
                        (JOB_RUNS.c.job == job.name) & (JOB_RUNS.c.period < period - KEEP_PERIODS)
                    )
                )
        return "ran" if outcome == "ok" else "failed"
