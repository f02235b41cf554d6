"""Shared fixtures for the audit tests: an auditor API app with people of every role."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from audit import new_event
from audit.events import AuditEvent
from audit.index import AuditIndex
from audit.recording import AsciicastWriter
from audit.testing import CapturingEmitter
from audit.workreports import ReportService
from broker.access.errors import Unauthenticated
from broker.access.ports import Actor
from broker.api import errors
from broker.api.routes.audit import build_router
from tests.audit.planned import plan_events

PEOPLE = {
    "okayama-approver": Actor("u1", "yamada", "h-okayama", "hospital", frozenset({"approver"})),
    "okayama-auditor": Actor("u2", "kato", "h-okayama", "hospital", frozenset({"auditor"})),
    "okayama-admin": Actor("u3", "admin", "h-okayama", "hospital", frozenset({"hospital_admin"})),
    "handa-approver": Actor("u4", "ito", "h-handa", "hospital", frozenset({"approver"})),
    "platform-auditor": Actor("u5", "audit", "p", "platform", frozenset({"auditor"})),
    "platform-admin": Actor("u6", "root", "p", "platform", frozenset({"platform_admin"})),
    "engineer": Actor("u7", "sato", "v-1", "vendor", frozenset({"engineer"})),
    "readonly-approver": Actor(
        "u8", "ro", "h-okayama", "hospital", frozenset({"approver"}), frozenset({"read"})
    ),
}


@pytest.fixture
def db(postgres_db_url: str) -> str:
    """A fresh PostgreSQL database for the durable audit store's tests."""
    return postgres_db_url


def _auth(request: Request) -> Actor:
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    if token not in PEOPLE:
        raise Unauthenticated("invalid token")
    return PEOPLE[token]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, CapturingEmitter]]:
    index = AuditIndex.from_url(f"sqlite:///{tmp_path / 'i.db'}")
    index.add([e.record for e in plan_events()])
    index.add([new_event("ssh.login", ActorUsername="x", HospitalId="h-handa").record])
    rec = tmp_path / "recordings"
    with AsciicastWriter(rec / "s1.cast", width=80, height=24) as w:
        w.output("$ ls\r\n")
    with auditor_api(
        index, recordings_dir=rec, sink_status=lambda: [{"sink": "fluentd", "lag_events": 0}]
    ) as served:
        yield served


@contextmanager
def auditor_api(
    index: AuditIndex, **router_options: Any
) -> Iterator[tuple[TestClient, CapturingEmitter]]:
    """The auditor API over ``index``, signed in by ``PEOPLE``'s bearer names: a client,
    and what it emitted (each event also indexed, as the log and index sink would)."""
    em = CapturingEmitter()

    class Both:
        def emit(self, event: AuditEvent) -> AuditEvent:
            index.add([event.record])
            return em.emit(event)

    app = FastAPI()
    errors.install(app)
    app.include_router(
        build_router(
            index=index,
            reports=ReportService(index, Both()),
            emitter=Both(),
            authenticate=_auth,
            **router_options,
        )
    )
    with TestClient(app) as client:
        yield client, em
