"""Against the real store: why a live session ends, and the hospital's input-recording policy."""

from __future__ import annotations

from datetime import timedelta

from audit.testing import CapturingEmitter
from broker.live.sessions import LiveSession, SessionRegistry
from broker.store.directory import StoreAccessPolicy
from tests.control.apihelp import auth, client_for, session_token
from tests.control.conftest import World, grant_for, openssh_public_key


def _watch(w: World, gid: str) -> tuple[SessionRegistry, CapturingEmitter, list[str]]:
    events = CapturingEmitter()
    reg = SessionRegistry(StoreAccessPolicy(w.s), events, w.clock)
    told: list[str] = []
    reg.add(
        LiveSession(
            "s1",
            "shell",
            w.users["eng"].id,
            "eng",
            "cobas-1",
            w.hospital.id,
            gid,
            22,
            w.clock.now,
            on_terminate=told.append,
        )
    )
    return reg, events, told


def _reasons(events: CapturingEmitter) -> list[str]:
    return [e.get("EventResultDetails") for e in events.of_type("session.terminated")]


def test_a_grant_that_runs_out_ends_its_session_as_expired_not_revoked(world: World) -> None:
    w = world
    reg, events, told = _watch(w, grant_for(w, ["cobas-1"]))
    reg.check_once()
    assert told == [] and _reasons(events) == []
    w.clock.advance(3600)  # the grant's end, before any sweep has marked it
    reg.check_once()
    assert told == ["grant_expired"]
    assert _reasons(events) == ["grant_expired"]


def test_a_grant_the_sweep_has_expired_is_still_expired(world: World) -> None:
    w = world
    gid = grant_for(w, ["cobas-1"])
    reg, events, told = _watch(w, gid)
    w.clock.advance(3601)
    w.s.grants.sweep()
    reg.check_once()
    assert told == ["grant_expired"] and _reasons(events) == ["grant_expired"]


def test_a_revoked_grant_ends_its_session_as_revoked(world: World) -> None:
    w = world
    gid = grant_for(w, ["cobas-1"])
    reg, events, told = _watch(w, gid)
    w.clock.advance(60)
    w.s.grants.revoke(w.actors["appr"], gid)
    reg.check_once()
    assert told == ["grant_revoked"] and _reasons(events) == ["grant_revoked"]


def test_a_deactivated_engineer_is_reported_as_such(world: World) -> None:
    w = world
    reg, events, told = _watch(w, grant_for(w, ["cobas-1"]))
    w.s.people.deactivate(w.admin, "eng")
    reg.check_once()
    assert told == ["engineer_inactive"] and _reasons(events) == ["engineer_inactive"]


def _gateway(w: World) -> None:
    token = w.s.gateways.issue_token(w.actors["hadmin"], "hoshi-hospital").token
    gw = w.s.gateways.enroll(token, openssh_public_key(), "gw-a", "1.0").gateway_id
    w.s.estate.update_instrument(w.admin, "cobas-1", {"gateway": gw})


def test_input_recording_is_off_unless_the_hospital_turns_it_on(
    world: World, emitter: CapturingEmitter
) -> None:
    """The hospital admin sets ``record_input`` over the API; the front door's target follows."""
    w = world
    _gateway(w)
    policy = StoreAccessPolicy(w.s)
    target = policy.instrument("cobas-1")
    assert target is not None and target.record_input is False
    c = client_for(w.s)
    hadmin = auth(session_token(w.s, w.users["hadmin"]))
    shown = c.get("/v1/policies/hoshi-hospital", headers=hadmin)
    assert shown.status_code == 200 and shown.json()["record_input"] is False
    emitter.clear()
    r = c.patch("/v1/policies/hoshi-hospital", headers=hadmin, json={"record_input": True})
    assert r.status_code == 200 and r.json()["record_input"] is True, r.text
    change = emitter.of_type("admin.change")[0]
    assert change.get("ObjectType") == "policy"
    assert change.details["changes"] == {"record_input": True}
    target = policy.instrument("cobas-1")
    assert target is not None and target.record_input is True
    # an engineer cannot change the hospital's policy
    eng = auth(session_token(w.s, w.users["eng"]))
    refused = c.patch("/v1/policies/hoshi-hospital", headers=eng, json={"record_input": False})
    assert refused.status_code in (403, 404)
    target = policy.instrument("cobas-1")
    assert target is not None and target.record_input is True


def test_grants_that_are_live_report_their_end(world: World) -> None:
    w = world
    gid = grant_for(w, ["cobas-1"])
    answer = StoreAccessPolicy(w.s).grant_end(gid, w.users["eng"].id, w.clock.now)
    assert answer.ends == w.clock.now + timedelta(hours=1) and answer.why == ""
