"""SQL URLs and engine sign-in, one rule for every engine hoshu opens.

Both the broker's store (``broker.store.db``) and the auditors' index
(``audit.index``) build their SQLAlchemy engines with these, so a URL that works
for one works for the other:

- :func:`sqlalchemy_url`: ``postgresql://`` and ``postgres://`` (libpq style, what
  operators and Azure hand out) mean psycopg 3 (``postgresql+psycopg://``); the
  bare scheme would make SQLAlchemy look for psycopg2, which is not installed.
- :func:`create_schema`: ``CREATE TABLE``s for a set of tables, one replica at a
  time on PostgreSQL (two replicas creating the same table at once collide in the
  catalogue: one of them fails with a duplicate key in ``pg_type``).
- :func:`sign_in_with`: the password of every *new* connection comes from a
  callable (an Entra ID access token for PostgreSQL Flexible Server, see
  ``broker.identity.database_password``) instead of the URL.  A callable that
  raises fails that connection: nothing falls back to the URL's password.

This module lives in ``audit`` because ``audit`` may not import ``broker``; it
holds no secrets and logs none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

PasswordSource = Callable[[], str]


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a database URL (PostgreSQL: the psycopg 3 driver)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def sign_in_with(engine: sa.Engine, password: PasswordSource) -> None:
    """Give every new connection of ``engine`` the password ``password()`` returns."""

    @event.listens_for(engine, "do_connect")
    def _password(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["password"] = password()


def create_engine(url: str, *, password: PasswordSource | None = None, **kwargs: Any) -> sa.Engine:
    """``sqlalchemy.create_engine`` with the URL normalised and, for a PostgreSQL URL,
    the password taken from ``password`` per new connection when it is given."""
    engine = sa.create_engine(sqlalchemy_url(url), **kwargs)
    if password is not None:
        if engine.dialect.name != "postgresql":
            engine.dispose()
            raise ValueError(f"token sign-in is for PostgreSQL only, not {engine.dialect.name}")
        sign_in_with(engine, password)
    return engine


def schema_lock_key(name: str) -> int:
    """A stable advisory-lock key (a signed 64-bit integer) for the schema ``name``."""
    digest = hashlib.sha256(b"hoshu schema\n" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def create_schema(engine: sa.Engine, metadata: sa.MetaData, name: str) -> None:
    """Create the tables of ``metadata`` that are missing.  On PostgreSQL in one
    transaction holding the advisory lock of ``name``, so replicas starting together
    create them one after another; the others then find them there."""
    if engine.dialect.name != "postgresql":
        metadata.create_all(engine, checkfirst=True)
        return
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": schema_lock_key(name)})
        metadata.create_all(conn, checkfirst=True)
