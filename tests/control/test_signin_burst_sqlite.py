"""A burst of sign-ins on SQLite: each one waits for the database or is told to retry.

On SQLite every transaction takes the one database write lock (``BEGIN IMMEDIATE``)
and a sign-in holds it across its password check, so a burst of sign-ins queues on
that lock; the ones still queued when SQLite's busy timeout runs out must get a 503
with ``Retry-After`` (try again shortly), never a 500.  The busy timeout is shortened
and each password check slowed so the queue outlasts it within a second or two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import broker.store.db as db
from broker.access.passwords import Hasher
from broker.access.people import NewUser
from broker.access.ports import Actor
from broker.api.app import create_app
from broker.settings import BrokerSettings

PASSWORD = "correct horse battery staple 42"
N = 60
CHECK_S = 0.03  # each password check: 60 in one queue take ~2 s, past the busy timeout


class SlowHasher(Hasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=64)

    def verify(self, hashed: str, password: str) -> bool:
        time.sleep(CHECK_S)  # the cost of a real argon2id check, compressed
        return super().verify(hashed, password)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0.25)
    app = create_app(
        BrokerSettings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/h.db")
    )
    s = app.state.services
    s.ctx.hasher = Hasher(time_cost=1, memory_cost=64)
    root, _ = s.auth.bootstrap("root", "Platform Admin", PASSWORD)
    admin = Actor(root.id, root.name, root.org_id, "platform", frozenset(root.roles))
    vendor = s.people.create_org(admin, "acme-labs", "vendor")
    for i in range(N):
        s.people.create_user(
            admin, NewUser(f"eng{i}", f"Engineer {i}", vendor.name, ["engineer"], PASSWORD)
        )
    s.ctx.hasher = SlowHasher()
    try:
        with TestClient(app) as c:
            yield c
    finally:
        app.state.control_plane.close()


def test_a_burst_of_sign_ins_on_sqlite_gets_tokens_or_a_retry_never_a_500(
    client: TestClient,
) -> None:
    start = threading.Barrier(N, timeout=30)

    def sign_in(i: int) -> httpx.Response:
        start.wait()
        r: httpx.Response = client.post(
            "/v1/auth/login", json={"username": f"eng{i}", "password": PASSWORD}
        )
        return r

    with ThreadPoolExecutor(N) as pool:
        answers = list(pool.map(sign_in, range(N), timeout=90))
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses  # the queue moves: the first ones in get their tokens
    busy = [r for r in answers if r.status_code == 503]
    assert busy, "the burst never outlasted the busy timeout: the test proves nothing"
    for r in busy:
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "database_busy"
    # told to retry, they get in once the burst is over
    for i, r in enumerate(answers):
        if r.status_code == 503:
            again = client.post(
                "/v1/auth/login", json={"username": f"eng{i}", "password": PASSWORD}
            )
            assert again.status_code == 200, again.text
