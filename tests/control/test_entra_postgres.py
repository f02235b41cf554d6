"""Entra ID sign-in to PostgreSQL: the broker's store and the audit index connect with
the managed identity's token as the password, and keep connecting after the token
rotates.  Real PostgreSQL (scram-sha-256), real ManagedIdentityCredential, the
identity endpoint stand-in; the role's password is set to the token as Entra would
accept it."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

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
from tests.fixtures.postgres import create_database, drop_database
from tests.support import FakeClock, poll_sync
from tests.support.identity import IdentityEndpoint

pytestmark = pytest.mark.postgres

PG_RESOURCE = POSTGRES_SCOPE.removesuffix("/.default")
# The first token lives 303 s: fresh (over the 300 s refresh margin of the broker and
# of MSAL) for the first ~3 s, then due for refresh, without anyone sleeping for it.
SHORT_LIFETIME_S = 303


@dataclass
class EntraDb:
    endpoint: IdentityEndpoint
    admin: str  # libpq URL of the admin database
    role: str
    url: str  # password-less postgresql:// URL, as the deployment sets it

    def set_password(self, token: str) -> None:
        """What Entra does for a rotated token: the new one signs in, the old one not."""
        with psycopg.connect(self.admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(self.role), sql.Literal(token)))

    def settings(self, tmp_path: Path) -> BrokerSettings:
        return BrokerSettings(data_dir=tmp_path, database_url=self.url, database_auth="entra",
                              azure_client_id=self.endpoint.client_id)


@pytest.fixture
def entra_db(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[EntraDb]:
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    role = f"id-hoshu-broker-{secrets.token_hex(3)}"
    name = f"t_entra_{secrets.token_hex(4)}"
    with IdentityEndpoint(lifetime_s=SHORT_LIFETIME_S) as ep:
        for k, v in ep.env(client_id=False).items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AZURE_CLIENT_ID", raising=False)
        create_database(postgres_url, name)
        ident = sql.Identifier(role)
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                ident, sql.Literal(ep.token(PG_RESOURCE))))
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(name), ident))
        host_port = admin.split("@", 1)[1].rsplit("/", 1)[0]
        try:
            yield EntraDb(ep, admin, role, f"postgresql://{role}@{host_port}/{name}")
        finally:
            drop_database(postgres_url, name)
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


def _connects(engine: sa.Engine) -> bool:
    """A brand-new connection of ``engine`` signs in and runs a query."""
    engine.dispose()  # no pooled connection: the next one signs in afresh
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT current_user")).scalar() is not None
    except sa.exc.OperationalError:
        return False


def test_store_signs_in_with_the_token_and_keeps_signing_in_after_rotation(
        entra_db: EntraDb, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The store migrates and works with no password in its URL; a second connection
    reuses the kept token; after the identity's token rotates (old one refused by the
    server) new connections of the same engine sign in with the refreshed token; no
    token appears in any log line."""
    caplog.set_level(logging.DEBUG)
    ep = entra_db.endpoint
    first = ep.token(PG_RESOURCE)
    settings = entra_db.settings(tmp_path)
    store = Store(settings.db_url, password=database_password(settings))
    try:
        with store.engine.connect() as conn:
            who = conn.execute(sa.text("SELECT current_user")).scalar()
            assert who == entra_db.role
            assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert _connects(store.engine)
        assert ep.requests[PG_RESOURCE] == 1  # the kept token served the second sign-in

        ep.lifetime_s = 3600
        ep.rotate()
        second = ep.token(PG_RESOURCE)
        entra_db.set_password(second)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(entra_db.url.replace("@", f":{first}@", 1), connect_timeout=5)

        poll_sync(lambda: _connects(store.engine), deadline_s=20,
                  what="the store to sign in with the refreshed token")
        assert ep.requests[PG_RESOURCE] >= 2
        with store.uow() as tx:
            assert tx is not None
    finally:
        store.close()
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert first not in logged and second not in logged
    assert "database token fetched" in logged


def test_audit_index_signs_in_with_the_same_token(entra_db: EntraDb, tmp_path: Path) -> None:
    """The audit index on the broker database (the default) signs in the same way."""
    settings = entra_db.settings(tmp_path)
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
    settings = entra_db.settings(tmp_path)
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
