"""Broker replicas starting together on an empty PostgreSQL database each create the
audit store's and the audit index's tables: every one of them starts.

Without one creator at a time two of them insert the same table into the catalogue
and one fails (``duplicate key value violates unique constraint "pg_type_..."``),
which is a replica that does not start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, inspect

from audit.engines import create_engine
from audit.index import AuditIndex
from audit.pgchain import store_engine

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

REPLICAS = 8


def _all_at_once(start: Callable[[], Engine]) -> list[Exception]:
    """Run ``start`` in REPLICAS threads released together; the exceptions raised."""
    gate = threading.Barrier(REPLICAS)
    failures: list[Exception] = []
    engines: list[Engine] = []

    def one() -> None:
        gate.wait(timeout=30)
        try:
            engines.append(start())
        except Exception as exc:  # reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=one) for _ in range(REPLICAS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a replica is still creating tables"
    for e in engines:
        e.dispose()
    return failures


@pytest.mark.parametrize("attempt", range(3))
def test_replicas_creating_the_audit_store_together_all_start(db: str, attempt: int) -> None:
    failures = _all_at_once(lambda: store_engine(db))
    assert failures == []
    probe = create_engine(db)
    try:
        tables = set(inspect(probe).get_table_names())
    finally:
        probe.dispose()
    assert {"audit_chains", "audit_chain_events"} <= tables


@pytest.mark.parametrize("attempt", range(3))
def test_replicas_creating_the_audit_index_together_all_start(db: str, attempt: int) -> None:
    failures = _all_at_once(lambda: AuditIndex.from_url(db).engine)
    assert failures == []
    probe = create_engine(db)
    try:
        assert "audit_events" in inspect(probe).get_table_names()
        have = {ix["name"] for ix in inspect(probe).get_indexes("audit_events")}
    finally:
        probe.dispose()
    assert have, "the index's indexes were not created"
