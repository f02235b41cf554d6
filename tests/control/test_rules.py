"""Pure domain rules: state tables, password policy, TOTP, windows, hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.access import passwords, rules, states, totp
from broker.access.errors import IllegalTransition, InvalidInput
from broker.access.model import AccessRequest, Instrument, Policy
from broker.access.permissions import PERMISSIONS, authorize, role_allows, scope_allows
from broker.access.ports import Actor

NOW = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "src", "dst"),
    [
        ("request", "pending", "approved"),
        ("request", "pending", "denied"),
        ("request", "pending", "expired"),
        ("request", "pending", "cancelled"),
        ("grant", "approved", "active"),
        ("grant", "active", "ended"),
        ("grant", "active", "revoked"),
        ("grant", "active", "expired"),
        ("grant", "approved", "revoked"),
    ],
)
def test_allowed_transitions(kind: str, src: str, dst: str) -> None:
    states.check(kind, src, dst)


@pytest.mark.parametrize(
    ("kind", "src", "dst"),
    [
        ("request", "approved", "pending"),
        ("request", "denied", "approved"),
        ("request", "expired", "approved"),
        ("request", "cancelled", "pending"),
        ("grant", "revoked", "active"),
        ("grant", "expired", "active"),
        ("grant", "ended", "revoked"),
        ("grant", "approved", "ended"),
        ("request", "bogus", "approved"),
    ],
)
def test_illegal_transitions_raise(kind: str, src: str, dst: str) -> None:
    with pytest.raises(IllegalTransition):
        states.check(kind, src, dst)


@pytest.mark.parametrize("pw", ["correct horse battery", "Kx9!mQ2z", "abcdefghijklmn-9"])
def test_good_passwords_pass(pw: str) -> None:
    passwords.check_policy(pw, username="tanaka")


@pytest.mark.parametrize(
    "pw",
    [
        "short",
        "abcdefgh12",
        "Password123!",
        "P@ssw0rd!",
        "abcdefghijklm",
        "tanaka-is-a-long-name",
        "x" * 2000,
    ],
)
def test_weak_passwords_are_refused(pw: str) -> None:
    with pytest.raises(InvalidInput):
        passwords.check_policy(pw, username="tanaka")


def test_known_bad_list_ships_as_package_data() -> None:
    assert "changeme" in passwords.known_bad() and len(passwords.known_bad()) > 50


def test_hasher_verifies_only_the_right_password() -> None:
    h = passwords.Hasher(time_cost=1, memory_cost=64)
    hashed = h.hash("correct horse battery")
    assert h.verify(hashed, "correct horse battery")
    assert not h.verify(hashed, "correct horse batterY")
    assert not h.verify("", "anything") and not h.verify("garbage", "x")


def test_totp_code_is_accepted_once_and_within_one_step() -> None:
    secret = totp.new_secret()
    code = totp.code_at(secret, NOW)
    step = totp.verify(secret, code, NOW, 0)
    assert step == int(NOW.timestamp()) // 30
    assert totp.verify(secret, code, NOW, step) is None  # replay
    assert totp.is_replay(secret, code, NOW, step)
    assert totp.verify(secret, code, NOW + timedelta(seconds=30), 0) == step  # clock skew
    assert totp.verify(secret, code, NOW + timedelta(seconds=90), 0) is None
    assert totp.verify(secret, "12345", NOW, 0) is None
    assert "otpauth://totp/" in totp.provisioning_uri(secret, "tanaka")


def _req(start: datetime | None) -> AccessRequest:
    return AccessRequest(
        "r", "u", "v", "h", ["i"], [22], False, "x", "", "", start, 3600, NOW, NOW, 1
    )


def test_grant_clock_starts_at_later_of_approval_and_scheduled_start() -> None:
    assert rules.grant_window(_req(None), NOW) == (NOW, NOW + timedelta(hours=1))
    later = NOW + timedelta(hours=3)
    assert rules.grant_window(_req(later), NOW)[0] == later
    earlier = NOW - timedelta(hours=1)
    assert rules.grant_window(_req(earlier), NOW)[0] == NOW


def test_approvals_required_rises_for_critical_instruments() -> None:
    p = Policy("h", "h", NOW)
    normal = Instrument("1", "h", "a", "h", NOW)
    critical = Instrument("2", "h", "b", "h", NOW, criticality="critical")
    assert rules.approvals_required(p, [normal]) == 1
    assert rules.approvals_required(p, [normal, critical]) == 2


def test_allowed_hours_in_hospital_time_including_overnight() -> None:
    p = Policy("h", "h", NOW, hours_start="09:00", hours_end="18:00")
    assert rules.within_hours(p, NOW)  # 10:00 Tokyo
    assert not rules.within_hours(p, NOW.replace(hour=10))  # 19:00 Tokyo
    night = Policy("h", "h", NOW, hours_start="22:00", hours_end="06:00")
    assert rules.within_hours(night, NOW.replace(hour=14))  # 23:00 Tokyo
    assert not rules.within_hours(night, NOW)


def test_permission_table_denies_by_default_and_honours_scopes() -> None:
    assert not role_allows(frozenset({"engineer"}), "no.such.action")
    assert role_allows(frozenset({"approver"}), "requests.approve")
    assert not role_allows(frozenset({"engineer"}), "requests.approve")
    assert scope_allows(frozenset({"read"}), "requests.list")
    assert not scope_allows(frozenset({"read"}), "requests.create")
    assert scope_allows(frozenset({"enroll"}), "totp.enroll")
    assert not scope_allows(frozenset({"enroll"}), "requests.list")
    approver = Actor(
        "u1", "hanako", "h-1", "hospital", frozenset({"approver"}), frozenset({"read"})
    )
    with pytest.raises(Exception, match="scope"):
        authorize(approver, "requests.approve")
    # the organisation kind counts: a vendor's auditor is no reader of audit trails
    assert role_allows(frozenset({"auditor"}), "audit.search", "hospital")
    assert not role_allows(frozenset({"auditor"}), "audit.search", "vendor")
    # a certificate needs a full password+TOTP session, never an API token
    assert scope_allows(frozenset({"*"}), "ssh.certificate", "session")
    assert not scope_allows(frozenset({"*"}), "ssh.certificate", "api")
    assert all(p.roles for p in PERMISSIONS.values())
