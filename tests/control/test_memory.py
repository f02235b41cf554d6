"""The in-memory twin behaves like the database store for the services."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from audit.errors import ChainError
from audit.testing import CapturingEmitter, FailingEmitter
from broker.access.errors import Conflict, PermissionDenied
from broker.access.model import Org
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.store.directory import StoreAccessPolicy
from broker.store.memory import MemoryStore
from tests.control.conftest import T0, World, build_world, make_context
from tests.support import FakeClock


@pytest.fixture
def mworld() -> World:
    clock = FakeClock(T0)
    s = Services.build(make_context(MemoryStore(), CapturingEmitter(), clock))  # type: ignore[arg-type]
    return build_world(s, clock)


def test_request_approval_and_grant_lookup_in_memory(mworld: World) -> None:
    w = mworld
    req = w.s.requests.create(w.actors["eng"], NewRequest(["las-line-a"], 600, "fix"))
    assert w.s.requests.approve(w.actors["appr"], req.id).grant is None
    with pytest.raises(PermissionDenied):
        w.s.requests.approve(w.actors["appr"], req.id)
    grant = w.s.requests.approve(w.actors["appr2"], req.id).grant
    assert grant is not None
    policy = StoreAccessPolicy(w.s)
    found = policy.find_grant(w.users["eng"].id, "las-line-a", 22, w.clock.now)
    assert found is not None and found.grant_id == grant.id
    assert [h.to_state for h in w.s.requests.show(w.actors["aud"], req.id).history] == [
        "approved",
        "approved",
        "active",
    ]


def test_failed_transaction_rolls_back_in_memory(mworld: World) -> None:
    w = mworld
    req = w.s.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 600, "fix"))
    good = w.s.ctx.emitter
    w.s.ctx.emitter = FailingEmitter()
    with pytest.raises(ChainError):
        w.s.requests.approve(w.actors["appr"], req.id)
    w.s.ctx.emitter = good
    view = w.s.requests.show(w.actors["appr"], req.id)
    assert view.request.status == "pending" and view.decisions == []


def test_unique_names_and_copies_in_memory() -> None:
    store = MemoryStore()
    t = datetime(2026, 3, 2, tzinfo=UTC)
    with store.uow() as tx:
        tx.add(Org("a", "hoshi", "hospital", t))
    with pytest.raises(Conflict), store.uow() as tx:
        tx.add(Org("b", "hoshi", "hospital", t))
    with store.uow() as tx:
        org = tx.get(Org, "a")
        assert org is not None
        org.name = "changed-but-not-saved"
        assert tx.find(Org, name="hoshi")[0].name == "hoshi"
        assert tx.find(Org, created_at__gte=t, name=["hoshi", "x"]) != []
    assert store.count(Org) == 1
