"""Requests, approvals and grants on the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from audit.errors import ChainError
from audit.testing import CapturingEmitter, FailingEmitter
from broker.access.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    PolicyViolation,
)
from broker.access.model import Grant
from broker.access.requests import NewRequest
from tests.control.conftest import World


def ask(w: World, who: str = "eng", instruments: tuple[str, ...] = ("cobas-1",), **kw: Any) -> str:
    new = NewRequest(
        list(instruments),
        kw.pop("duration_s", 3600),
        "replace reagent probe",
        ticket="INC-1",
        work_plan="1. stop 2. swap",
        **kw,
    )
    return w.s.requests.create(w.actors[who], new).id


def test_approval_by_hospital_approver_issues_grant_starting_now(
    world: World, emitter: CapturingEmitter
) -> None:
    rid = ask(world)
    view = world.s.requests.approve(world.actors["appr"], rid, "ok")
    assert view.request.status == "approved"
    assert view.grant is not None and view.grant.status == "active"
    assert view.grant.starts_at == world.clock.now
    assert view.grant.ends_at == world.clock.now + timedelta(hours=1)
    assert view.grant.ports == [22]
    assert ["request.created", "request.approved", "grant.created", "grant.activated"] == [
        t for t in emitter.types() if t.startswith(("request.", "grant."))
    ]
    approved = emitter.of_type("request.approved")[0]
    assert approved.get("ActorUsername") == "appr"


def test_requester_cannot_approve_and_other_hospital_approver_cannot(world: World) -> None:
    world.add_user("eng-appr", world.vendor, ["engineer"])
    rid = ask(world)
    with pytest.raises(PermissionDenied):
        world.s.requests.approve(world.actors["other-appr"], rid)
    with pytest.raises(PermissionDenied):
        world.s.requests.approve(world.actors["eng"], rid)
    view = world.s.requests.show(world.actors["appr"], rid)
    assert view.request.status == "pending" and view.decisions == []


def test_requester_who_is_also_approver_cannot_approve_own_request(world: World) -> None:
    # An approver role cannot be held at a vendor; prove the rule on the domain directly.
    from broker.access import rules
    from broker.access.model import Decision

    rid = ask(world)
    req = world.s.requests.show(world.actors["appr"], rid).request
    appr = world.users["appr"]
    req.requester_id = appr.id
    with pytest.raises(PermissionDenied, match="own request"):
        rules.check_can_decide(req, appr, world.hospital.id, list[Decision]())


def test_critical_instrument_needs_two_distinct_approvers(world: World) -> None:
    rid = ask(world, instruments=("las-line-a",))
    view = world.s.requests.approve(world.actors["appr"], rid)
    assert view.request.status == "pending" and view.grant is None
    with pytest.raises(PermissionDenied, match="different approver"):
        world.s.requests.approve(world.actors["appr"], rid)
    view = world.s.requests.approve(world.actors["appr2"], rid)
    assert view.request.status == "approved" and view.grant is not None
    assert {d.approver_id for d in view.decisions} == {
        world.users["appr"].id,
        world.users["appr2"].id,
    }


def test_scheduled_start_later_than_approval_starts_the_clock(world: World) -> None:
    start = world.clock.now + timedelta(hours=2)
    rid = ask(world, start_at=start, duration_s=1800)
    world.clock.advance(600)
    view = world.s.requests.approve(world.actors["appr"], rid)
    grant = view.grant
    assert grant is not None and grant.status == "approved"
    assert grant.starts_at == start and grant.ends_at == start + timedelta(minutes=30)
    world.clock.now = start
    assert world.s.grants.sweep().activated == 1
    world.clock.now = start + timedelta(minutes=30)
    assert world.s.grants.sweep().expired_grants == 1
    history = world.s.requests.show(world.actors["eng"], rid).history
    assert [(h.from_state, h.to_state) for h in history if h.subject_kind == "grant"] == [
        ("", "approved"),
        ("approved", "active"),
        ("active", "expired"),
    ]


def test_approval_after_scheduled_start_starts_at_approval(world: World) -> None:
    rid = ask(world, start_at=world.clock.now + timedelta(minutes=10))
    world.clock.advance(1200)
    grant = world.s.requests.approve(world.actors["appr"], rid).grant
    assert grant is not None and grant.starts_at == world.clock.now


def test_policy_limits_duration_hours_and_file_transfer(world: World) -> None:
    w = world
    w.s.estate.update_policy(
        w.admin,
        "hoshi-hospital",
        {"max_duration_s": 7200, "hours_start": "09:00", "hours_end": "18:00"},
    )
    with pytest.raises(PolicyViolation, match="maximum"):
        ask(w, duration_s=7201)
    with pytest.raises(PolicyViolation, match="file transfer"):
        ask(w, file_transfer=True)
    # 20:00 Tokyo = 11:00 UTC
    with pytest.raises(PolicyViolation, match="allowed hours"):
        ask(w, start_at=w.clock.now.replace(hour=11))
    assert ask(w, duration_s=7200)


def test_request_for_uncontracted_or_other_hospital_instrument_is_refused(world: World) -> None:
    with pytest.raises(PermissionDenied, match="contract"):
        ask(world, instruments=("lis-server",))
    with pytest.raises(InvalidInput, match="one hospital"):
        ask(world, instruments=("cobas-1", "tsuki-1"))
    with pytest.raises(NotFound):
        ask(world, instruments=("nope",))
    with pytest.raises(InvalidInput, match="ports"):
        ask(world, ports=[3389])


def test_pending_request_expires_and_history_stays(world: World, emitter: CapturingEmitter) -> None:
    rid = ask(world)
    world.clock.advance(7 * 86400 + 1)
    assert world.s.grants.sweep().expired_requests == 1
    with pytest.raises(Conflict):
        world.s.requests.approve(world.actors["appr"], rid)
    view = world.s.requests.show(world.actors["aud"], rid)
    assert view.request.status == "expired"
    assert view.request.reason == "replace reagent probe"
    assert emitter.of_type("request.expired")
    assert [r.id for r in world.s.requests.list_requests(world.actors["aud"])] == [rid]


def test_deny_cancel_and_illegal_transitions(world: World) -> None:
    rid = ask(world)
    world.s.requests.deny(world.actors["appr"], rid, "not today")
    with pytest.raises(Conflict):
        world.s.requests.approve(world.actors["appr2"], rid)
    with pytest.raises(Conflict):
        world.s.requests.cancel(world.actors["eng"], rid)
    rid2 = ask(world)
    with pytest.raises(NotFound):  # another engineer's request is invisible
        world.s.requests.cancel(world.actors["eng2"], rid2)
    assert world.s.requests.cancel(world.actors["eng"], rid2).request.status == "cancelled"


def test_engineer_sees_only_own_requests_and_other_hospital_sees_none(world: World) -> None:
    rid = ask(world)
    ask(world, who="eng2")
    assert [r.id for r in world.s.requests.list_requests(world.actors["eng"])] == [rid]
    assert len(world.s.requests.list_requests(world.actors["vaud"])) == 2
    assert world.s.requests.list_requests(world.actors["other-appr"]) == []
    with pytest.raises(NotFound):
        world.s.requests.show(world.actors["other-appr"], rid)


def test_revoke_ends_grant_and_is_audited_first(world: World, emitter: CapturingEmitter) -> None:
    rid = ask(world)
    grant = world.s.requests.approve(world.actors["appr"], rid).grant
    assert grant is not None
    with pytest.raises(PermissionDenied):
        world.s.grants.revoke(world.actors["other-appr"], grant.id)
    g = world.s.grants.revoke(world.actors["hadmin"], grant.id, "done early")
    assert g.status == "revoked" and g.closed_by == world.users["hadmin"].id
    with pytest.raises(Conflict):
        world.s.grants.revoke(world.actors["appr"], grant.id)
    assert emitter.of_type("grant.revoked")[0].get("ActorUsername") == "hadmin"


def test_audit_failure_leaves_state_unchanged(world: World) -> None:
    """Fail closed: if the approval or revocation cannot be audited, it did not happen."""
    rid = ask(world)
    good = world.s.ctx.emitter
    world.s.ctx.emitter = FailingEmitter()
    with pytest.raises(Exception, match="not writable"):
        world.s.requests.approve(world.actors["appr"], rid)
    world.s.ctx.emitter = good
    view = world.s.requests.show(world.actors["appr"], rid)
    assert view.request.status == "pending" and view.decisions == [] and view.grant is None
    grant = world.s.requests.approve(world.actors["appr"], rid).grant
    assert grant is not None
    world.s.ctx.emitter = FailingEmitter()
    with pytest.raises(Exception, match="not writable"):
        world.s.grants.revoke(world.actors["appr"], grant.id)
    world.s.ctx.emitter = good
    assert world.s.grants.list_grants(world.actors["appr"])[0].status == "active"


def test_emergency_access_is_flagged_alerted_and_reviewed(
    world: World, emitter: CapturingEmitter
) -> None:
    w = world
    with pytest.raises(PolicyViolation, match="emergency"):
        w.s.grants.start_emergency(w.actors["eng"], NewRequest(["cobas-1"], 1800, "down"))
    w.s.estate.update_policy(
        w.actors["hadmin"],
        "hoshi-hospital",
        {"emergency_allowed": True, "emergency_max_duration_s": 1800},
    )
    with pytest.raises(PolicyViolation):
        w.s.grants.start_emergency(w.actors["eng"], NewRequest(["cobas-1"], 3600, "down"))
    g = w.s.grants.start_emergency(w.actors["eng"], NewRequest(["cobas-1"], 1800, "down"))
    assert g.emergency and g.status == "active" and g.starts_at == w.clock.now
    types = emitter.types()
    assert "emergency.started" in types and "alert.raised" in types
    assert emitter.of_type("alert.raised")[0].get("Emergency") is True
    unreviewed = w.s.grants.list_grants(w.actors["appr"], unreviewed_emergencies=True)
    assert [x.id for x in unreviewed] == [g.id]
    for who in ("other-appr", "hadmin"):
        with pytest.raises(PermissionDenied):
            w.s.grants.review(w.actors[who], g.id, "accepted")
    r = w.s.grants.review(w.actors["appr"], g.id, "rejected", "no ticket")
    assert r.review_verdict == "rejected" and r.status == "revoked"
    assert w.s.grants.list_grants(w.actors["appr"], unreviewed_emergencies=True) == []
    with pytest.raises(Conflict):
        w.s.grants.review(w.actors["appr2"], g.id, "accepted")


def test_emergency_without_alert_gives_no_access(world: World) -> None:
    w = world
    w.s.estate.update_policy(w.admin, "hoshi-hospital", {"emergency_allowed": True})
    w.s.ctx.emitter = FailingEmitter()
    with pytest.raises(ChainError):
        w.s.grants.start_emergency(w.actors["eng"], NewRequest(["cobas-1"], 600, "down"))
    w.s.ctx.emitter = CapturingEmitter()
    assert w.s.grants.list_grants(w.actors["eng"]) == []


def test_engineer_ends_own_grant(world: World) -> None:
    rid = ask(world)
    grant = world.s.requests.approve(world.actors["appr"], rid).grant
    assert isinstance(grant, Grant)
    with pytest.raises(PermissionDenied):
        world.s.grants.end(world.actors["vaud"], grant.id)
    assert world.s.grants.end(world.actors["eng"], grant.id).status == "ended"


def test_concurrent_approvals_issue_exactly_one_grant(world: World) -> None:
    """Two approvers racing on a two-approval request: one grant, two decisions."""
    import threading

    rid = ask(world, instruments=("las-line-a",))
    errors: list[Exception] = []

    def approve(who: str) -> None:
        try:
            world.s.requests.approve(world.actors[who], rid)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=approve, args=(w,)) for w in ("appr", "appr2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    view = world.s.requests.show(world.actors["appr"], rid)
    assert view.request.status == "approved" and len(view.decisions) == 2
    assert len(world.s.grants.list_grants(world.actors["appr"])) == 1


def test_same_approver_twice_concurrently_counts_once(world: World) -> None:
    import threading

    rid = ask(world, instruments=("las-line-a",))
    results: list[str] = []

    def approve() -> None:
        try:
            world.s.requests.approve(world.actors["appr"], rid)
            results.append("ok")
        except PermissionDenied:
            results.append("refused")

    threads = [threading.Thread(target=approve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["ok", "refused"]
    view = world.s.requests.show(world.actors["appr"], rid)
    assert view.request.status == "pending" and len(view.decisions) == 1


def test_platform_auditor_reads_every_hospital_but_changes_nothing(world: World) -> None:
    from broker.access.people import NewUser
    from tests.control.conftest import PASSWORD, actor_for

    rid = ask(world)
    u = world.s.people.create_user(
        world.admin, NewUser("paud", "Platform Auditor", "platform", ["auditor"], PASSWORD)
    )
    paud = actor_for(world.s, u)
    assert [r.id for r in world.s.requests.list_requests(paud)] == [rid]
    assert world.s.requests.show(paud, rid).request.id == rid
    assert {i.name for i in world.s.estate.list_instruments(paud)} >= {"cobas-1", "tsuki-1"}
    assert len(world.s.estate.list_contracts(paud)) == 2
    assert "eng" in [x.name for x in world.s.people.list_users(paud)]
    grant = world.s.requests.approve(world.actors["appr"], rid).grant
    assert grant is not None
    with pytest.raises(PermissionDenied):
        world.s.grants.revoke(paud, grant.id)
    with pytest.raises(PermissionDenied):
        world.s.estate.update_policy(paud, "hoshi-hospital", {"max_duration_s": 600})


def test_concurrent_sweeps_expire_each_request_once(
    world: World, emitter: CapturingEmitter
) -> None:
    """Several replicas sweeping at once: one transition and one event per request."""
    import threading

    ids = [ask(world) for _ in range(3)]
    world.clock.advance(8 * 86400)
    threads = [threading.Thread(target=world.s.grants.sweep) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(emitter.of_type("request.expired")) == 3
    for rid in ids:
        history = world.s.requests.show(world.actors["aud"], rid).history
        assert [h.to_state for h in history] == ["expired"]
