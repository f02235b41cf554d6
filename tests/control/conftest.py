"""Fixtures of the control-plane tests: a fake clock, both databases, a seeded world.

Store and service tests run on SQLite and, when the shared throwaway
PostgreSQL fixture is available, on PostgreSQL too (``db_url`` is parametrized).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import secrets
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pytest
import sqlalchemy as sa
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.testing import CapturingEmitter
from broker.access import totp
from broker.access.crypto import SecretBox
from broker.access.model import Instrument, Org, User
from broker.access.passwords import Hasher
from broker.access.people import NewUser
from broker.access.ports import Actor, Config, Context
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.api.app import create_app
from broker.cli.main import main
from broker.settings import BrokerSettings
from broker.store.db import Store, make_engine, upgrade
from broker.store.tables import metadata
from tests.support import FakeClock, poll_sync

HAVE_POSTGRES = importlib.util.find_spec("tests.fixtures.postgres") is not None
BACKENDS = ["sqlite", "postgresql"] if HAVE_POSTGRES else ["sqlite"]
PASSWORD = "correct-horse-battery-9"


def openssh_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


BROKER_KEY = openssh_public_key()
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 10:00 in Tokyo


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_control_url(request: pytest.FixtureRequest) -> Iterator[str]:
    from tests.fixtures.postgres import create_database, drop_database

    admin = request.getfixturevalue("postgres_url")
    name = f"control_{secrets.token_hex(4)}"
    url = create_database(admin, name)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    drop_database(admin, name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database: a SQLite file, or the shared PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "hoshu.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_control_url")
    engine = make_engine(url)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {names}"))
    engine.dispose()
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def emitter() -> CapturingEmitter:
    return CapturingEmitter()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url, migrate=False)
    yield s
    s.close()


def make_context(store: Store, emitter: Any, clock: FakeClock, **config: Any) -> Context:
    return Context(
        uow=store.uow,
        emitter=emitter,
        secrets=SecretBox.generate(),
        clock=clock,
        hasher=Hasher(time_cost=1, memory_cost=64),
        config=Config(broker_host_key=BROKER_KEY, **config),
    )


@pytest.fixture
def services(store: Store, emitter: CapturingEmitter, clock: FakeClock) -> Services:
    return Services.build(make_context(store, emitter, clock))


def actor_for(services: Services, user: User) -> Actor:
    org = services.people.org_of(user.org_id)
    assert org is not None
    return Actor(user.id, user.name, user.org_id, org.kind, frozenset(user.roles))


@dataclass
class World:
    """A hospital with instruments, a vendor with a contract, one person per role."""

    s: Services
    clock: FakeClock
    admin: Actor
    hospital: Org
    other_hospital: Org
    vendor: Org
    users: dict[str, User] = field(default_factory=dict)
    actors: dict[str, Actor] = field(default_factory=dict)
    instruments: dict[str, Instrument] = field(default_factory=dict)

    def add_user(self, name: str, org: Org, roles: list[str]) -> Actor:
        u = self.s.people.create_user(
            self.admin, NewUser(name, f"Person {name}", org.name, roles, PASSWORD)
        )
        self.users[name] = u
        self.actors[name] = actor_for(self.s, u)
        return self.actors[name]

    def enrol_totp(self, name: str) -> str:
        """Enrol TOTP for a user; returns the secret."""
        actor = self.actors[name]
        uri = self.s.auth.totp_begin(actor)
        secret = uri.split("secret=")[1].split("&")[0]
        self.s.auth.totp_confirm(actor, totp.code_at(secret, self.clock()))
        self.clock.advance(30)
        return secret


def build_world(s: Services, clock: FakeClock) -> World:
    admin_user, _ = s.auth.bootstrap("root", "Platform Admin", PASSWORD)
    admin = actor_for(s, admin_user)
    hospital = s.people.create_org(admin, "hoshi-hospital", "hospital")
    other = s.people.create_org(admin, "tsuki-hospital", "hospital")
    vendor = s.people.create_org(admin, "acme-labs", "vendor")
    w = World(s, clock, admin, hospital, other, vendor)
    for name, ports, crit in (
        ("cobas-1", [22, 8080], "normal"),
        ("las-line-a", [22], "critical"),
        ("lis-server", [22, 443], "normal"),
    ):
        w.instruments[name] = s.estate.create_instrument(
            admin,
            hospital.name,
            {
                "name": name,
                "host": f"10.0.0.{len(w.instruments) + 10}",
                "ports": ports,
                "criticality": crit,
                "department": "chemistry",
                "model": "c503",
                "vendor": "acme",
            },
        )
    w.instruments["tsuki-1"] = s.estate.create_instrument(
        admin, other.name, {"name": "tsuki-1", "host": "10.1.0.10", "ports": [22]}
    )
    s.estate.create_contract(admin, vendor.name, hospital.name, ["cobas-1", "las-line-a"])
    s.estate.create_contract(admin, vendor.name, other.name, ["*"])
    w.add_user("eng", vendor, ["engineer"])
    w.add_user("eng2", vendor, ["engineer"])
    w.add_user("appr", hospital, ["approver"])
    w.add_user("appr2", hospital, ["approver"])
    w.add_user("hadmin", hospital, ["hospital_admin"])
    w.add_user("aud", hospital, ["auditor"])
    w.add_user("vaud", vendor, ["auditor"])
    w.add_user("other-appr", other, ["approver"])
    return w


@pytest.fixture
def world(services: Services, clock: FakeClock) -> World:
    return build_world(services, clock)


def enrol_gateway(w: World, name: str = "gw-1") -> tuple[str, str]:
    """A gateway of hoshi-hospital enrolled with a fresh key: its id and the key."""
    token = w.s.gateways.issue_token(w.actors["hadmin"], "hoshi-hospital").token
    key = openssh_public_key()
    res = w.s.gateways.enroll(token, key, name, "1.0")
    return res.gateway_id, key


def grant_for(w: World, instruments: list[str], ports: list[int] | None = None) -> str:
    """An approved grant for ``eng`` on ``instruments`` (a second approver where the
    policy asks for two): its id."""
    req = w.s.requests.create(
        w.actors["eng"], NewRequest(instruments, 3600, "fix", ports=ports or [])
    )
    grant = w.s.requests.approve(w.actors["appr"], req.id).grant
    if grant is None:
        grant = w.s.requests.approve(w.actors["appr2"], req.id).grant
    assert grant is not None
    return grant.id


# the test runs on SQLite only (it starts a server of its own on the store)
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def live_api(services: Services) -> Iterator[str]:
    """The control plane's API served by uvicorn on a loopback port; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(BrokerSettings(), services=services)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    poll_sync(lambda: server.started, 10, "the API server to start", interval_s=0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


class Cli(Protocol):
    """The ``hoshu`` command run in-process: its exit code, stdout and stderr."""

    def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]: ...


@pytest.fixture
def cli(
    live_api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    """The ``hoshu`` command against ``live_api``, with a config folder of its own."""
    monkeypatch.setenv("HOSHU_API", live_api)
    monkeypatch.setenv("HOSHU_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("HOSHU_TOKEN", raising=False)

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
