"""The store itself: migrations equal the tables, SQLite in WAL, errors translated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from broker.access.errors import Conflict
from broker.access.model import Org
from broker.store.db import Store, current_revision, make_engine, upgrade
from broker.store.tables import metadata


def test_migrated_schema_equals_the_table_definitions(store: Store) -> None:
    """Alembic's head revision produces exactly the tables the code uses."""
    upgrade(store.engine)  # again: a no-op, under the migration lock on PostgreSQL
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    assert current_revision(store.engine) == "0011"


def test_upgrade_is_idempotent_and_sqlite_runs_in_wal(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/x/hoshu.db"
    store = Store(url)
    upgrade(store.engine)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_unique_names_become_conflicts_and_times_stay_aware(store: Store) -> None:
    jst = timezone(timedelta(hours=9))
    t = datetime(2026, 3, 2, 10, 0, tzinfo=jst)
    with store.uow() as tx:
        tx.add(Org("a", "hoshi", "hospital", t))
    with pytest.raises(Conflict), store.uow() as tx:
        tx.add(Org("b", "hoshi", "hospital", t))
    with store.uow() as tx:
        org = tx.get(Org, "a")
        assert org is not None and org.created_at == t and org.created_at.tzinfo == UTC
        assert tx.get(Org, "b") is None
        assert tx.find(Org, created_at__gte=t) == [org]
        assert tx.find(Org, created_at__lt=t) == []


def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    t = datetime(2026, 3, 2, tzinfo=UTC)
    with pytest.raises(RuntimeError), store.uow() as tx:
        tx.add(Org("a", "hoshi", "hospital", t))
        raise RuntimeError("audit write failed")
    with store.uow() as tx:
        assert tx.find(Org) == []


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(Exception, match="naive"), store.uow() as tx:
        tx.add(Org("a", "hoshi", "hospital", datetime(2026, 3, 2)))


def test_make_engine_accepts_plain_postgres_urls() -> None:
    engine = make_engine("postgresql://u:p@127.0.0.1:1/db")
    assert engine.dialect.driver == "psycopg"
