"""Singleton jobs on the real databases: one run per period, never two at once.

Two :class:`broker.jobs.Jobs` stand for two replicas on one PostgreSQL (their own
engines and connections); SQLite is one process, one ``Jobs``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from broker.jobs import Job, Jobs
from broker.store.db import Store, make_engine
from tests.support import poll_sync

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def engines(store: Store, db_url: str) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    other = make_engine(db_url) if store.is_postgres else store.engine
    yield store.engine, other
    if other is not store.engine:
        other.dispose()


def test_a_period_runs_once_and_a_run_under_way_is_never_doubled(
    store: Store, engines: tuple[sa.Engine, sa.Engine]
) -> None:
    first, second = engines
    a, b = Jobs(first, "a"), Jobs(second, "b")
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def slow() -> None:
        runs.append("run")
        started.set()
        release.wait(20)

    job_a, job_b = Job("report", 60, slow), Job("report", 60, slow)
    outcome: list[str] = []
    t = threading.Thread(target=lambda: outcome.append(a.claim_and_run(job_a, 7)))
    t.start()
    try:
        poll_sync(started.is_set, 10, what="a's run to start")
        # b asks for the same period while a runs, and for the next one
        assert b.claim_and_run(job_b, 7) in ("busy", "done")
        if store.is_postgres:  # another replica: the lock is held, nothing runs twice at once
            assert b.claim_and_run(job_b, 8) == "busy"
        assert runs == ["run"]
    finally:
        release.set()
        t.join(20)
    assert outcome == ["ran"]
    assert b.claim_and_run(job_b, 7) == "done"  # the period is taken for good
    assert a.claim_and_run(job_a, 7) == "done"
    assert b.claim_and_run(job_b, 8) == "ran"
    with first.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT period, replica_id, outcome FROM job_runs ORDER BY period")
        ).all()
    assert [tuple(r) for r in rows] == [(7, "a", "ok"), (8, "b", "ok")]


def test_a_failing_job_is_recorded_and_its_period_not_run_again(store: Store) -> None:
    jobs = Jobs(store.engine, "a")

    def broken() -> None:
        raise OSError("disk gone")

    job = Job("retention", 60, broken)
    assert jobs.claim_and_run(job, 3) == "failed"
    assert jobs.claim_and_run(job, 3) == "done"
    with store.engine.connect() as conn:
        [outcome] = conn.execute(sa.text("SELECT outcome FROM job_runs")).scalars().all()
    assert outcome == "failed: OSError"


def test_a_job_name_is_defined_once(store: Store) -> None:
    jobs = Jobs(store.engine, "a")
    jobs.add("grants.sweep", 15, lambda: None)
    with pytest.raises(ValueError, match="twice"):
        jobs.add("grants.sweep", 15, lambda: None)
    with pytest.raises(ValueError, match="positive"):
        jobs.add("other", 0, lambda: None)
