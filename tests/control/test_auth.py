"""Sign-in on the real store: passwords, TOTP once, lockout, tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest

from audit.testing import CapturingEmitter
from broker.access import totp
from broker.access.errors import (
    Conflict,
    InvalidInput,
    LockedOut,
    PermissionDenied,
    Unauthenticated,
)
from broker.access.people import NewUser
from tests.control.conftest import PASSWORD, World
from tests.support import FakeClock


def test_first_login_only_allows_totp_enrolment_then_full_login(
    world: World, clock: FakeClock
) -> None:
    s = world.s
    issued = s.auth.login("eng", PASSWORD, None)
    assert issued.totp_enrolment_required and issued.scopes == ("enroll",)
    actor = s.auth.authenticate(issued.token)
    assert actor.scopes == frozenset({"enroll"})
    uri = s.auth.totp_begin(actor)
    secret = uri.split("secret=")[1].split("&")[0]
    with pytest.raises(InvalidInput):
        s.auth.totp_confirm(actor, "000000")
    full = s.auth.totp_confirm(actor, totp.code_at(secret, clock()))
    assert full.scopes == ("*",)
    clock.advance(30)
    with pytest.raises(Unauthenticated):
        s.auth.login("eng", PASSWORD, None)  # TOTP now required
    token = s.auth.login("eng", PASSWORD, totp.code_at(secret, clock())).token
    assert s.auth.authenticate(token).username == "eng"


def test_totp_code_is_accepted_only_once(
    world: World, clock: FakeClock, emitter: CapturingEmitter
) -> None:
    secret = world.enrol_totp("appr")
    code = totp.code_at(secret, clock())
    world.s.auth.login("appr", PASSWORD, code)
    with pytest.raises(Unauthenticated):
        world.s.auth.login("appr", PASSWORD, code)
    assert emitter.of_type("user.mfa_failed")
    uid = world.users["appr"].id
    clock.advance(30)
    code2 = totp.code_at(secret, clock())
    assert world.s.auth.check_totp(uid, code2, clock()).ok
    again = world.s.auth.check_totp(uid, code2, clock())
    assert not again.ok and again.reason == "replayed"


def test_five_failures_in_fifteen_minutes_lock_the_account(
    world: World, clock: FakeClock, emitter: CapturingEmitter
) -> None:
    secret = world.enrol_totp("appr")
    for _ in range(4):
        with pytest.raises(Unauthenticated):
            world.s.auth.login("appr", "wrong-password-123", None)
        clock.advance(60)
    with pytest.raises(LockedOut):
        world.s.auth.login("appr", "wrong-password-123", None)
    locked = emitter.of_type("user.locked_out")
    assert len(locked) == 1 and locked[0].details["failures"] == 5
    with pytest.raises(LockedOut):  # even the right password and code
        world.s.auth.login("appr", PASSWORD, totp.code_at(secret, clock()))
    r = world.s.auth.check_totp(world.users["appr"].id, totp.code_at(secret, clock()), clock())
    assert not r.ok and r.reason == "locked"
    clock.advance(901)
    assert world.s.auth.login("appr", PASSWORD, totp.code_at(secret, clock())).token


def test_failures_spread_over_more_than_the_window_do_not_lock(
    world: World, clock: FakeClock
) -> None:
    world.enrol_totp("appr")
    for _ in range(6):
        with pytest.raises(Unauthenticated) as exc:
            world.s.auth.login("appr", "wrong-password-123", None)
        assert not isinstance(exc.value, LockedOut)
        clock.advance(240)


def test_ssh_totp_failures_count_towards_lockout(world: World, clock: FakeClock) -> None:
    world.enrol_totp("eng")
    uid = world.users["eng"].id
    results = [world.s.auth.check_totp(uid, "000000", clock()) for _ in range(5)]
    assert [r.locked_now for r in results] == [False] * 4 + [True]
    assert results[-1].failures == 5 and results[-1].locked_until is not None


def test_expired_revoked_and_inactive_cannot_sign_in(world: World, clock: FakeClock) -> None:
    secret = world.enrol_totp("eng")
    token = world.s.auth.login("eng", PASSWORD, totp.code_at(secret, clock())).token
    clock.advance(901)
    with pytest.raises(Unauthenticated, match="expired"):
        world.s.auth.authenticate(token)
    clock.advance(30)
    token = world.s.auth.login("eng", PASSWORD, totp.code_at(secret, clock())).token
    world.s.people.deactivate(world.admin, "eng")
    with pytest.raises(Unauthenticated):
        world.s.auth.authenticate(token)
    with pytest.raises(Unauthenticated):
        world.s.auth.login("eng", PASSWORD, totp.code_at(secret, clock()))
    with pytest.raises(Unauthenticated):
        world.s.auth.login("nobody", PASSWORD, None)


def test_account_expiry_ends_sign_in(world: World, clock: FakeClock) -> None:
    secret = world.enrol_totp("eng2")
    world.s.people.set_expiry(world.admin, "eng2", clock.now + timedelta(days=1))
    clock.advance(86400)
    with pytest.raises(Unauthenticated):
        world.s.auth.login("eng2", PASSWORD, totp.code_at(secret, clock()))


def test_api_tokens_are_scoped_hashed_and_revocable(
    world: World, clock: FakeClock, emitter: CapturingEmitter
) -> None:
    actor = world.actors["aud"]
    issued = world.s.auth.create_api_token(actor, "siem-export", ["read"], 86400)
    assert issued.token.startswith("hoshu_")
    tok_actor = world.s.auth.authenticate(issued.token)
    assert tok_actor.scopes == frozenset({"read"}) and tok_actor.token_kind == "api"
    with pytest.raises(PermissionDenied):
        world.s.auth.create_api_token(tok_actor, "again", ["read"], 60)
    with pytest.raises(InvalidInput):
        world.s.auth.create_api_token(actor, "bad", ["everything"], 60)
    assert [t.name for t in world.s.auth.list_tokens(actor)] == ["siem-export"]
    assert issued.token not in str(world.s.auth.list_tokens(actor))
    assert issued.token not in emitter.of_type("token.issued")[0].to_json()
    world.s.auth.revoke_token(actor, issued.token_id)
    with pytest.raises(Unauthenticated):
        world.s.auth.authenticate(issued.token)
    with pytest.raises(Conflict):
        world.s.auth.revoke_token(actor, issued.token_id)


def test_bootstrap_only_once_and_user_creation_follows_password_policy(world: World) -> None:
    with pytest.raises(Conflict):
        world.s.auth.bootstrap("root2", "Someone", PASSWORD)
    with pytest.raises(InvalidInput, match="known-bad"):
        world.s.people.create_user(
            world.admin, NewUser("x1", "X", "acme-labs", ["engineer"], "Password123!")
        )
    with pytest.raises(InvalidInput, match="cannot be held"):
        world.s.people.create_user(
            world.admin, NewUser("x2", "X", "acme-labs", ["approver"], PASSWORD)
        )
    with pytest.raises(PermissionDenied):
        world.s.people.create_user(
            world.actors["hadmin"], NewUser("x3", "X", "tsuki-hospital", ["approver"], PASSWORD)
        )
    u = world.s.people.create_user(
        world.actors["hadmin"], NewUser("x4", "X", "hoshi-hospital", ["approver"], PASSWORD)
    )
    assert u.org_id == world.hospital.id


def test_hospital_sees_and_recertifies_vendor_accounts_reaching_it(
    world: World, emitter: CapturingEmitter
) -> None:
    names = [u.name for u in world.s.people.vendor_accounts(world.actors["hadmin"])]
    assert names == ["eng", "eng2"]
    u = world.s.people.recertify(world.actors["hadmin"], "eng", "still on contract")
    assert u.recertified_by == world.users["hadmin"].id
    ev = [e for e in emitter.of_type("admin.change") if e.get("Operation") == "recertify"]
    assert ev and ev[0].get("ActorUsername") == "hadmin"
    with pytest.raises(PermissionDenied):
        world.s.people.deactivate(world.actors["hadmin"], "eng")


def test_admin_resets_totp_and_password_and_the_person_enrols_again(
    world: World, clock: FakeClock
) -> None:
    secret = world.enrol_totp("appr")
    world.s.people.reset_totp(world.actors["hadmin"], "appr")
    # the old device no longer gives a full sign-in ...
    old = world.s.auth.login("appr", PASSWORD, totp.code_at(secret, clock()))
    assert old.scopes == ("enroll",)
    world.s.people.set_password(world.actors["hadmin"], "appr", "a-new-long-passphrase")
    issued = world.s.auth.login("appr", "a-new-long-passphrase", None)
    assert issued.totp_enrolment_required  # ... and the person enrols again
    with pytest.raises(PermissionDenied):
        world.s.people.reset_totp(world.actors["hadmin"], "eng")


def test_one_source_address_guessing_across_names_is_throttled(
    world: World, clock: FakeClock
) -> None:
    for i in range(20):
        with pytest.raises(Unauthenticated) as exc:
            world.s.auth.login(f"guess{i}", "whatever-123", None, src_ip="198.51.100.7")
        assert not isinstance(exc.value, LockedOut)
    with pytest.raises(Unauthenticated, match="address") as exc:
        world.s.auth.login("eng", PASSWORD, None, src_ip="198.51.100.7")
    # the address is throttled, not the account: no "locked" that names could probe
    assert exc.value.code == "source_throttled" and not isinstance(exc.value, LockedOut)
    assert world.s.auth.login("eng", PASSWORD, None, src_ip="198.51.100.8").token
    clock.advance(901)
    assert world.s.auth.login("eng", PASSWORD, None, src_ip="198.51.100.7").token


def test_vendor_source_networks_limit_where_its_people_sign_in_from(world: World) -> None:
    with pytest.raises(InvalidInput):
        world.s.people.set_sources(world.admin, "acme-labs", ["not-a-net"])
    org = world.s.people.set_sources(world.admin, "acme-labs", ["203.0.113.0/24", "2001:db8::1"])
    assert org.source_cidrs == ["2001:db8::1/128", "203.0.113.0/24"]
    token = world.s.auth.login("eng", PASSWORD, None, src_ip="203.0.113.9").token
    with pytest.raises(Unauthenticated):
        world.s.auth.login("eng", PASSWORD, None, src_ip="198.51.100.1")
    with pytest.raises(Unauthenticated):  # a token carried elsewhere stops working
        world.s.auth.authenticate(token, "198.51.100.1")
    assert world.s.auth.authenticate(token, "203.0.113.10").username == "eng"
    assert world.s.auth.login("appr", PASSWORD, None, src_ip="198.51.100.1").token
