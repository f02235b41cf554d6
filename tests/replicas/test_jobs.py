"""Singleton jobs across three real ``hoshu serve`` replicas on one PostgreSQL.

With a one-second period, the grants sweep, the audit reports and retention each run
exactly once per period (the ``job_runs`` table, as an operator would read it), never
two runs of one job at once, spread over the replicas; when the replica that ran the
latest period is killed with SIGKILL, the next periods are run by the others.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hoshu_demo.demo import _tool, free_port
from tests.support import poll_sync

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]
JOBS = ("grants.sweep", "audit.reports", "audit.retention")


def rows(url: str) -> list[Any]:
    """Every claimed period (none while the first replica has not migrated yet)."""
    engine = sa.create_engine(url)
    try:
        if not sa.inspect(engine).has_table("job_runs"):
            return []
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT job, period, replica_id, started_at, finished_at, outcome "
                        "FROM job_runs ORDER BY job, period"
                    )
                )
            )
    finally:
        engine.dispose()


@pytest.fixture
def replicas(
    tmp_path: Path, postgres_module_url: str
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}
    try:
        for name in ("r1", "r2", "r3"):
            env = {
                **base,
                "HOSHU_DATA_DIR": str(tmp_path / name),
                "HOSHU_DATABASE_URL": postgres_module_url,
                "HOSHU_REPLICA_ID": name,
                "HOSHU_API_PORT": str(free_port(0)),
                "HOSHU_SSH_PORT": str(free_port(0)),
                "HOSHU_TUNNEL_PORT": str(free_port(0)),
                "HOSHU_SWEEP_INTERVAL_S": "1",
                "HOSHU_JOBS_INTERVAL_S": "1",
            }
            log = open(tmp_path / f"{name}.log", "wb")
            procs[name] = subprocess.Popen(
                [_tool("hoshu"), "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def by_job(all_rows: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {j: [] for j in JOBS}
    for r in all_rows:
        out.setdefault(r.job, []).append(r)
    return out


def check_once_each(all_rows: list[Any]) -> None:
    """Each job: at most one row per period (the key), runs that never overlap."""
    for job, runs in by_job(all_rows).items():
        periods = [r.period for r in runs]
        assert len(periods) == len(set(periods)), f"{job} ran a period twice"
        done = [r for r in runs if r.finished_at is not None]
        for a, b in itertools.pairwise(done):
            assert a.finished_at <= b.started_at, f"{job}: two runs at once ({a}, {b})"


def test_jobs_run_once_per_period_across_replicas_and_move_when_one_dies(
    replicas: dict[str, subprocess.Popen[bytes]], postgres_module_url: str
) -> None:
    url = postgres_module_url

    def every_job_by_two_replicas() -> bool:
        got = rows(url)
        return all(len({r.replica_id for r in by_job(got)[j]}) >= 2 for j in JOBS)

    poll_sync(every_job_by_two_replicas, 120, what="jobs run by several replicas", interval_s=0.5)
    before = rows(url)
    check_once_each(before)
    # contiguous once the replicas run: no period of the last ten was skipped or doubled
    for job, runs in by_job(before).items():
        last = [r.period for r in runs][-10:]
        assert last == list(range(last[0], last[0] + len(last))), f"{job} skipped a period"
    holder = by_job(before)["grants.sweep"][-1].replica_id
    killed_at_period = by_job(before)["grants.sweep"][-1].period
    os.killpg(replicas[holder].pid, signal.SIGKILL)
    replicas[holder].wait(timeout=10)

    def moved() -> list[Any] | None:
        runs = [r for r in by_job(rows(url))["grants.sweep"] if r.period > killed_at_period + 1]
        return runs if len(runs) >= 5 else None

    later = poll_sync(moved, 60, what="the sweep run by the survivors", interval_s=0.5)
    assert later is not None
    assert holder not in {r.replica_id for r in later}
    assert [r.period for r in later] == list(range(later[0].period, later[0].period + len(later)))
    after = rows(url)
    check_once_each(after)
    counts = {j: len(v) for j, v in by_job(after).items()}
    spread = {j: sorted({r.replica_id for r in v}) for j, v in by_job(after).items()}
    print(f"FIGURE singleton job runs (1 s period, 3 replicas then 2): {counts}, by {spread}")
    assert all(r.outcome == "ok" for r in after if r.finished_at is not None)
