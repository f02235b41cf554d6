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

import json
import logging
from collections.abc import Callable, Iterator
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
log = logging.getLogger(__name__)


normalise_url = sqlalchemy_url  # the one URL rule (audit.engines)
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite transaction waits for the write lock


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
        busy_s = SQLITE_BUSY_TIMEOUT_S
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": busy_s}}
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
            cur.execute(f"PRAGMA busy_timeout={int(busy_s * 1000)}")
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


# The change feed (broker.live.changes): a committed write to one of these tables can end
# a live session, so the transaction that makes it also bumps ``change_feed.version`` and,
# on PostgreSQL, sends NOTIFY on CHANGE_CHANNEL with the version and what changed (kind,
# id; "all" when the row cannot be named).  Delivered at commit, never for a rollback.
WATCHED_TABLES: dict[str, str] = {
    "grants": "grant",
    "users": "user",
    "orgs": "all",
    "contracts": "all",
    "policies": "all",
}
CHANGE_CHANNEL = "hoshu_changes"
_CHANGES = "hoshu_changes"  # conn.info key: what this transaction changed so far
MAX_NAMED_CHANGES = 50  # more in one transaction: announced as "all"

Change = tuple[str, str]  # (kind, id): ("grant", id), ("user", id) or ("all", "")
ChangeListener = Callable[[int, list[Change]], None]


def _note_change(conn: sa.Connection, clause: Any, *_args: Any) -> None:
    """``after_execute``: remember a write to a watched table for the commit's bump."""
    if not isinstance(clause, sa.sql.dml.UpdateBase):
        return
    table = getattr(clause, "table", None)
    kind = WATCHED_TABLES.get(getattr(table, "name", ""))
    if kind is None:
        return
    ident = ""
    if kind != "all":
        try:
            params = clause.compile().params
        except Exception:
            params = {}
        ident = str(params.get("id") or params.get("id_1") or "")
    changes: set[Change] = conn.info.setdefault(_CHANGES, set())
    changes.add((kind, ident) if ident else ("all", ""))


def bump_version(conn: sa.Connection, changes: set[Change]) -> tuple[int, list[Change]]:
    """In the writing transaction: the next version, and NOTIFY (PostgreSQL) at commit."""
    named = sorted(changes)
    if len(named) > MAX_NAMED_CHANGES or ("all", "") in changes:
        named = [("all", "")]
    version = int(
        conn.execute(
            sa.text(
                "INSERT INTO change_feed (id, version) VALUES (1, 1) ON CONFLICT (id) "
                "DO UPDATE SET version = change_feed.version + 1 RETURNING version"
            )
        ).scalar_one()
    )
    if conn.dialect.name == "postgresql":
        payload = json.dumps({"v": version, "c": named}, separators=(",", ":"))
        conn.execute(sa.text("SELECT pg_notify(:ch, :p)"), {"ch": CHANGE_CHANNEL, "p": payload})
    return version, named


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
        # told after each commit that bumped the change feed (this process's writes)
        self.change_listeners: list[ChangeListener] = []
        event.listen(self.engine, "after_execute", _note_change)

    @contextmanager
    def uow(self) -> Iterator[SqlTx]:
        bumped: tuple[int, list[Change]] | None = None
        with self.engine.begin() as conn:
            conn.info.pop(_CHANGES, None)
            yield SqlTx(conn, for_update=self.is_postgres)
            changes = conn.info.pop(_CHANGES, None)
            if changes:
                bumped = bump_version(conn, changes)
        if bumped is not None:
            for listener in list(self.change_listeners):
                try:
                    listener(*bumped)
                except Exception:
                    log.exception("change listener failed")

    def close(self) -> None:
        self.engine.dispose()
