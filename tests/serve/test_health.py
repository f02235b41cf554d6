"""Liveness (/healthz) and readiness (/readyz) as a load balancer sees them.

The database probe runs against a real PostgreSQL that is made to refuse new
connections and then let back in; the other checks are probes the runtime adds."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from broker.api.app import create_app
from broker.api.routes.health import Readiness, cached, readiness_of
from broker.api.routes.health import router as health_router
from broker.assembly import build_broker
from broker.settings import BrokerSettings


@pytest.fixture
def pg_app(postgres_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, str, str]]:
    from tests.fixtures.postgres import create_database, drop_database

    name = "health_" + tmp_path.name.replace("-", "_").lower()[-40:]
    url = create_database(postgres_url, name)
    app = create_app(BrokerSettings(data_dir=tmp_path / "data", database_url=url))
    try:
        yield TestClient(app), postgres_url, name
    finally:
        app.state.control_plane.close()
        _allow_connections(postgres_url, name, True)
        drop_database(postgres_url, name)


def _allow_connections(admin_url: str, name: str, allow: bool) -> None:
    with psycopg.connect(
        admin_url.replace("postgresql+psycopg://", "postgresql://", 1),
        autocommit=True,
        connect_timeout=5,
    ) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allow else "false"}')
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


@pytest.mark.postgres
def test_readyz_names_the_database_while_it_refuses_connections(
    pg_app: tuple[TestClient, str, str],
) -> None:
    """Ready on a reachable database; 503 naming ``database`` while PostgreSQL turns
    the broker away (liveness still 200: the process is fine); ready again after."""
    client, admin, name = pg_app
    ok = client.get("/readyz")
    assert ok.status_code == 200
    assert ok.json() == {"status": "ready", "failed": [], "checks": {"database": "ok"}}

    _allow_connections(admin, name, False)
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["failed"] == ["database"]
    assert down.json()["checks"] == {"database": "failed"}
    assert client.get("/healthz").status_code == 200

    _allow_connections(admin, name, True)
    assert client.get("/readyz").status_code == 200


def test_added_probes_are_asked_and_a_failure_names_only_itself(tmp_path: Path) -> None:
    """A runtime adds probes (sync or async); a raising, a False-returning and a hung
    probe each fail by name, the others stay ok, and the answer carries no error text."""
    app = create_app(BrokerSettings(data_dir=tmp_path / "data"))
    release = threading.Event()
    try:
        ready = readiness_of(app)
        ready.timeout_s = 0.5

        async def recording_store() -> bool:
            await asyncio.sleep(0)
            return True

        def key_store() -> None:
            raise RuntimeError("vault https://secret-host.example/ token=abc123 unreachable")

        ready.add("key_store", key_store)
        ready.add("recording_store", recording_store)
        ready.add("audit_chain", lambda: False)
        ready.add("peer", lambda: release.wait(30))
        with pytest.raises(ValueError, match="exists already"):
            ready.add("database", lambda: None)

        r = TestClient(app).get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["failed"] == ["key_store", "audit_chain", "peer"]
        assert body["checks"] == {
            "database": "ok",
            "key_store": "failed",
            "recording_store": "ok",
            "audit_chain": "failed",
            "peer": "timed out",
        }
        assert "secret-host" not in r.text and "abc123" not in r.text
    finally:
        release.set()
        app.state.control_plane.close()


def test_healthz_needs_no_sign_in_and_says_nothing_more(tmp_path: Path) -> None:
    """No token, and the answer is the status alone (no version, settings or keys)."""
    app = create_app(BrokerSettings(data_dir=tmp_path / "data"))
    try:
        r = TestClient(app).get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    finally:
        app.state.control_plane.close()


async def test_a_draining_broker_is_not_ready() -> None:
    """While draining, /readyz is 503 ``draining`` even with every probe passing."""
    ready = Readiness()
    ready.add("database", lambda: None)
    assert await ready.run() == {"database": "ok"}
    ready.draining = True
    app = FastAPI()
    app.state.readiness = ready
    app.include_router(health_router)
    r = TestClient(app).get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "draining"


def test_a_passing_check_is_kept_for_its_ttl_and_a_failure_never() -> None:
    """Remote stores are not asked on every probe: a pass holds ``ttl_s``; a failure
    is asked again next time."""
    now = [0.0]
    answers = [None, False, None]
    calls: list[int] = []

    def check() -> bool | None:
        calls.append(1)
        return answers[len(calls) - 1] if len(calls) <= len(answers) else None

    probe = cached(check, 30.0, clock=lambda: now[0])
    assert probe() is True and len(calls) == 1
    now[0] = 29.0
    assert probe() is True and len(calls) == 1  # kept
    now[0] = 31.0
    assert probe() is False and len(calls) == 2  # asked again, failed
    assert probe() is True and len(calls) == 3  # a failure is not kept


async def test_the_assembled_broker_asks_its_database_key_store_and_recording_store(
    tmp_path: Path,
) -> None:
    rt = build_broker(BrokerSettings(data_dir=tmp_path / "data"))
    try:
        assert await rt.readiness.run() == {
            "database": "ok",
            "change_feed": "ok",
            "key_store": "ok",
            "recording_store": "ok",
        }
    finally:
        for close in reversed(rt.closers):
            result = close()
            if inspect.isawaitable(result):
                await result
