"""What a hospital chooses to be told of decides what goes into the outbox.

Until the hospital chooses: a request waiting and a work report to sign (its grant
ended) are told; a session's start is not.  Once it chooses only session starts, a new
request writes nothing and a session's start writes a message linking to its live page,
naming the instrument and the engineer and never the command typed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit import new_event
from audit.emitter import FanOut
from audit.testing import CapturingEmitter
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.console.notify import Channels, Notifier, save_channels
from broker.settings import BrokerSettings
from broker.store.db import Store
from broker.store.tables import NOTIFICATION_OUTBOX
from tests.control.conftest import T0, World, build_world, make_context
from tests.support import FakeClock

HOOK = "https://hooks.hoshi.example.jp/hoshu"  # written to the outbox, never called here


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[World, Notifier, Store]]:
    settings = BrokerSettings(
        data_dir=tmp_path / "data",
        smtp_host="127.0.0.1",  # never reached: nothing is delivered here
        smtp_security="none",
        smtp_from="hoshu@broker.example.jp",
        public_api_url="https://hoshu.example.jp",
    )
    notifier = Notifier(settings)
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}")
    clock = FakeClock(T0)
    services = Services.build(make_context(store, FanOut([CapturingEmitter(), notifier]), clock))
    world = build_world(services, clock)
    notifier.bind(services, CapturingEmitter(), store.engine)
    try:
        yield world, notifier, store
    finally:
        store.close()


def _outbox(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(NOTIFICATION_OUTBOX)).mappings().all()
    return [dict(r) for r in rows]


def _session_started(w: World) -> None:
    w.s.ctx.emitter.emit(
        new_event(
            "session.started",
            HospitalId=w.hospital.id,
            TargetHostname="cobas-1",
            TargetSessionId="sess-77",
            ActorUsername="eng",
            details={"kind": "shell", "command": "cat /etc/shadow"},
        )
    )


def _grant_ended(w: World, grant_id: str) -> None:
    w.s.ctx.emitter.emit(
        new_event("grant.expired", GrantId=grant_id, HospitalId=w.hospital.id, ObjectType="grant")
    )


def test_by_default_requests_and_reports_are_told_and_session_starts_are_not(
    lab: tuple[World, Notifier, Store],
) -> None:
    w, notifier, store = lab
    save_channels(store.engine, w.hospital.id, Channels(webhook_url=HOOK), T0)  # the default kinds
    w.s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 3600, "calibration"))
    _session_started(w)
    _grant_ended(w, "g-1")
    notifier.write_incoming()
    kinds = sorted(r["kind"] for r in _outbox(store))
    assert kinds == ["report.due", "request.created"]
    [due] = [r for r in _outbox(store) if r["kind"] == "report.due"]
    assert due["payload"]["link"] == "https://hoshu.example.jp/console/reports/g-1"
    assert due["org_id"] == w.hospital.id


def test_a_hospital_told_only_of_session_starts_gets_those_and_nothing_else(
    lab: tuple[World, Notifier, Store],
) -> None:
    w, notifier, store = lab
    save_channels(
        store.engine, w.hospital.id, Channels(webhook_url=HOOK, kinds=("session.started",)), T0
    )
    w.s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 3600, "calibration"))
    _grant_ended(w, "g-2")
    _session_started(w)
    notifier.write_incoming()
    [row] = _outbox(store)
    assert row["kind"] == "session.started"
    assert row["payload"]["link"] == "https://hoshu.example.jp/console/sessions/sess-77"
    assert "cobas-1" in row["payload"]["en"] and "eng" in row["payload"]["en"]
    assert "shadow" not in str(row["payload"])  # the command typed is never sent
