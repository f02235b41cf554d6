"""Engines, transactions and migrations for SQLite (WAL) and PostgreSQL.

``Store(url)`` opens the database; ``store.uow()`` is one transaction (the
:class:`broker.access.ports.UnitOfWork` the services use); ``upgrade(url)``
runs the Alembic migrations (on startup and by ``hoshu db upgrade``).

On SQLite every transaction starts with ``BEGIN IMMEDIATE`` so concurrent
writers queue on the lock instead of failing; on PostgreSQL rows that decide
a state change are read ``FOR UPDATE``.

URLs: ``postgresql://`` and ``postgresql+psycopg://`` are the same (psycopg 3;
``audit.engines.sqlalchemy_url``, the rule the audit index uses too).  With
``password=`` (a callable: ``broker.identity.database_password``, an Entra ID
token for ``database_auth = "entra"``) every new PostgreSQL connection signs in
with what it returns instead of a password in the URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from audit.engines import PasswordSource, sqlalchemy_url
from audit.engines import create_engine as create_sql_engine
from broker.store.repo import SqlTx

MIGRATIONS = Path(__file__).parent / "migrations"


normalise_url = sqlalchemy_url  # the one URL rule (audit.engines)


def make_engine(url: str, *, password: PasswordSource | None = None) -> sa.Engine:
    """The engine for ``url``; ``password``: where each new PostgreSQL connection's
    password comes from (refused for SQLite, which has none)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        if password is not None:
            raise ValueError("token sign-in is for PostgreSQL only, not SQLite")
        memory = url in ("sqlite://", "sqlite:///:memory:")
        if not memory:
            Path(sa.make_url(url).database or "").parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if memory:
            kwargs["poolclass"] = StaticPool
        engine = sa.create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_sql_engine(
        url, password=password, pool_pre_ping=True, pool_size=10, max_overflow=10
    )


def alembic_config(engine: sa.Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return cfg


MIGRATION_LOCK = 0x686F736875  # "hoshu": one migrating replica at a time on PostgreSQL


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent; replicas starting together queue)."""
    cfg = alembic_config(engine)
    with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        finally:
            if postgres:
                conn.rollback()
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                conn.commit()


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Store:
    """One database: its engine and a transaction factory."""

    def __init__(
        self, url: str, *, migrate: bool = True, password: PasswordSource | None = None
    ) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, password=password)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        if migrate:
            upgrade(self.engine)

    @contextmanager
    def uow(self) -> Iterator[SqlTx]:
        with self.engine.begin() as conn:
            yield SqlTx(conn, for_update=self.is_postgres)

    def close(self) -> None:
        self.engine.dispose()
