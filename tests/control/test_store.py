"""The store itself: migrations equal the tables, SQLite in WAL, errors translated."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from broker.access.errors import Conflict
from broker.access.model import Instrument, Org
from broker.store.db import Store, current_revision, make_engine, upgrade
from broker.store.tables import TABLES, metadata


def test_migrated_schema_equals_the_table_definitions(store: Store) -> None:
    """Alembic's head revision produces exactly the tables the code uses."""
    upgrade(store.engine)  # again: a no-op, under the migration lock on PostgreSQL
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    assert current_revision(store.engine) == "0013"


def test_instruments_stored_before_the_keyboard_layout_existed_are_typed_on_en_us(
    tmp_path: object,
) -> None:
    """Migration 0012: an instrument of a store at 0011 gets the en-US keyboard, as
    hoshu typed on it before."""
    store = Store(f"sqlite:///{tmp_path}/k/hoshu.db")
    upgrade(store.engine, "0011")
    t = datetime(2026, 12, 1, tzinfo=UTC)
    row = {
        f.name: getattr(Instrument("i1", "h1", "an-pc-1", "10.0.0.5", t, protocol="rdp"), f.name)
        for f in dataclasses.fields(Instrument)
        if f.name != "keyboard_layout"
    }
    with store.engine.begin() as conn:
        conn.execute(sa.insert(TABLES[Instrument]).values(row))
    upgrade(store.engine)
    with store.uow() as tx:
        inst = tx.get(Instrument, "i1")
        assert inst is not None and inst.protocol == "rdp" and inst.keyboard_layout == "en-US"
    store.close()


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
