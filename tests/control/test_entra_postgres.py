"""Entra ID sign-in to PostgreSQL: the broker's store and the audit index connect with
the managed identity's token as the password, and keep connecting after the token
rotates.  Real PostgreSQL (scram-sha-256), real ManagedIdentityCredential, the
identity endpoint stand-in; the role's password is set to the token as Entra would
accept it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from audit.engines import sqlalchemy_url
from audit.index import AuditIndex
from broker.identity import (
    POSTGRES_SCOPE,
    DatabaseSignInError,
    TokenPassword,
    database_password,
)
from broker.settings import BrokerSettings
from broker.store.db import Store, make_engine
from tests.fixtures.entra import PG_RESOURCE, EntraDb
from tests.support import FakeClock, poll_sync

pytestmark = pytest.mark.postgres


def _settings(db: EntraDb, tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(
        data_dir=tmp_path,
        database_url=db.url,
        database_auth="entra",
        azure_client_id=db.endpoint.client_id,
    )


def _connects(engine: sa.Engine) -> bool:
    """A brand-new connection of ``engine`` signs in and runs a query."""
    engine.dispose()  # no pooled connection: the next one signs in afresh
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT current_user")).scalar() is not None
    except sa.exc.OperationalError:
        return False


def test_store_signs_in_with_the_token_and_keeps_signing_in_after_rotation(
    entra_db: EntraDb, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store migrates and works with no password in its URL; after the identity's
    token rotates (old one refused by the server) new connections of the same engine
    sign in with the refreshed token, kept for the next ones; no token appears in any
    log line."""
    caplog.set_level(logging.DEBUG)
    assert POSTGRES_SCOPE == PG_RESOURCE + "/.default"
    ep = entra_db.endpoint
    first = ep.token(PG_RESOURCE)
    settings = _settings(entra_db, tmp_path)
    store = Store(settings.db_url, password=database_password(settings))
    try:
        with store.engine.connect() as conn:
            who = conn.execute(sa.text("SELECT current_user")).scalar()
            assert who == entra_db.role
            assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert _connects(store.engine)

        ep.lifetime_s = 3600
        ep.rotate()
        second = ep.token(PG_RESOURCE)
        entra_db.set_password(second)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(entra_db.url.replace("@", f":{first}@", 1), connect_timeout=5)

        poll_sync(
            lambda: _connects(store.engine),
            deadline_s=20,
            what="the store to sign in with the refreshed token",
        )
        fetched = ep.requests[PG_RESOURCE]
        assert fetched >= 2
        for _ in range(5):
            assert _connects(store.engine)
        assert ep.requests[PG_RESOURCE] == fetched  # the kept new token signed them all in
    finally:
        store.close()
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert first not in logged and second not in logged
    assert "database token fetched" in logged


def test_audit_index_signs_in_with_the_same_token(entra_db: EntraDb, tmp_path: Path) -> None:
    """The audit index on the broker database (the default) signs in the same way."""
    settings = _settings(entra_db, tmp_path)
    index = AuditIndex.from_url(settings.db_url, password=database_password(settings))
    try:
        assert index.count() == 0
    finally:
        index.engine.dispose()


def test_password_urls_still_work_in_both_spellings(postgres_url: str) -> None:
    """A password in the URL still signs in, as ``postgresql://`` (the libpq spelling
    Azure and operators use) or ``postgresql+psycopg://``, for store and index alike."""
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    assert sqlalchemy_url(plain) == postgres_url
    assert sqlalchemy_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    for url in (plain, postgres_url):
        engine = make_engine(url)
        try:
            assert _connects(engine)
        finally:
            engine.dispose()
        index = AuditIndex.from_url(url)
        index.engine.dispose()
        assert index.engine.dialect.driver == "psycopg"


def test_no_token_means_no_connection(entra_db: EntraDb, tmp_path: Path) -> None:
    """Fail closed: with the identity revoked the store cannot connect, and the URL
    (which has no password) is not tried in its place."""
    entra_db.endpoint.revoke()
    settings = _settings(entra_db, tmp_path)
    with pytest.raises(DatabaseSignInError):
        Store(settings.db_url, password=database_password(settings))


def test_token_password_is_kept_then_refreshed_before_expiry() -> None:
    """The kept token is handed out until 5 minutes before it expires; a failed refresh
    keeps the old token only while it is still valid."""
    clock = FakeClock(datetime(2026, 4, 1, 9, 0, tzinfo=UTC))

    def now() -> float:
        return clock().timestamp()

    issued: list[tuple[str, float]] = [("t1", now() + 3600)]
    fail = False

    def get() -> tuple[str, float]:
        if fail:
            raise RuntimeError("endpoint down")
        return issued[-1]

    pw = TokenPassword(get, clock=now)
    assert pw() == "t1" and pw.fetches == 1
    clock.advance(3600 - 301)
    assert pw() == "t1" and pw.fetches == 1
    issued.append(("t2", now() + 3600))
    clock.advance(2)  # inside the margin: refreshed
    assert pw() == "t2" and pw.fetches == 2
    fail = True
    clock.advance(3600 - 299)
    assert pw() == "t2"  # refresh failed, t2 still valid for 299 s
    clock.advance(300)
    with pytest.raises(DatabaseSignInError):
        pw()


def test_token_sign_in_is_refused_for_sqlite(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PostgreSQL only"):
        make_engine(f"sqlite:///{tmp_path / 'x.db'}", password=lambda: "t")
