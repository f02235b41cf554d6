"""Sign-in and credentials over HTTP: what a prober, a thief or a flood can learn or do.

- an unknown name costs the same password hash as a real one, and answers the same
- only a real account ever answers "locked"
- a new password or TOTP, or an admin, ends every token and SSH certificate issued before
- a wrong current password on /me/password counts towards the lockout
- a flood of failed sign-ins writes a bounded number of events that still add up
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import argon2
import pytest
from fastapi.testclient import TestClient

from audit.testing import CapturingEmitter
from broker.access import certs, totp
from broker.access.passwords import Hasher
from tests.control.apihelp import auth, client_for, session_token
from tests.control.conftest import PASSWORD, SQLITE_ONLY, Cli, World, openssh_public_key
from tests.support import FakeClock

NEW_PASSWORD = "a-much-better-passphrase-42"


class CountingHasher(Hasher):
    """The real hasher, counting the hashes it checks (and their parameters)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=64)
        self.checked: list[argon2.Parameters] = []

    def verify(self, hashed: str, password: str) -> bool:
        if hashed:
            self.checked.append(argon2.extract_parameters(hashed))
        return super().verify(hashed, password)


def login(
    c: TestClient, name: str, password: str, code: str | None = None
) -> tuple[int, dict[str, Any]]:
    r = c.post("/v1/auth/login", json={"username": name, "password": password, "totp_code": code})
    return r.status_code, r.json()


def test_unknown_names_cost_a_real_hash_and_answer_like_wrong_passwords(world: World) -> None:
    hasher = CountingHasher()
    world.s.ctx.hasher = hasher
    world.s.people.deactivate(world.admin, "eng2")
    c = client_for(world.s)
    answers = {}
    for name, password in (
        ("nobody-here", "whatever-123"),
        ("eng", "wrong-password-1"),
        ("eng2", PASSWORD),
    ):
        before = len(hasher.checked)
        answers[name] = login(c, name, password)
        assert len(hasher.checked) == before + 1, f"{name}: one password hash per answer"
    assert answers["nobody-here"] == answers["eng"] == answers["eng2"]
    assert answers["eng"][0] == 401
    real = argon2.extract_parameters(world.users["eng"].password_hash)
    assert all(p == real for p in hasher.checked)  # the dummy has the real parameters


def test_only_real_accounts_ever_answer_locked(world: World) -> None:
    c = client_for(world.s)
    ghost = [login(c, "ghost", "wrong-password-1")[1]["error"]["code"] for _ in range(8)]
    real = [login(c, "appr", "wrong-password-1")[1]["error"]["code"] for _ in range(8)]
    assert set(ghost) == {"unauthenticated"}
    assert real[:4] == ["unauthenticated"] * 4 and set(real[4:]) == {"locked_out"}


def test_a_locked_account_costs_a_hash_too(world: World) -> None:
    hasher = CountingHasher()
    world.s.ctx.hasher = hasher
    c = client_for(world.s)
    for _ in range(5):
        login(c, "appr", "wrong-password-1")
    before = len(hasher.checked)
    assert login(c, "appr", PASSWORD)[1]["error"]["code"] == "locked_out"
    assert len(hasher.checked) == before + 1


def _cert(world: World, name: str, serial: int) -> None:
    certs.record_cert(
        world.s.ctx, world.users[name].id, serial, world.clock(), world.clock() + timedelta(hours=8)
    )


def _cert_refusal(world: World, name: str, serial: int) -> str | None:
    with world.s.ctx.uow() as tx:
        return certs.cert_refusal(tx, world.users[name].id, serial, world.clock())


@pytest.mark.parametrize(
    "route,body,reason",
    [
        ("/v1/users/eng/password", {"password": NEW_PASSWORD}, "password reset"),
        ("/v1/users/eng/reset-totp", None, "totp reset"),
        ("/v1/users/eng/revoke-tokens", None, "revoked by an admin"),
    ],
)
def test_admin_credential_changes_end_every_old_token_and_certificate(
    world: World, emitter: CapturingEmitter, route: str, body: dict[str, Any] | None, reason: str
) -> None:
    c = client_for(world.s)
    eng = world.users["eng"]
    session = session_token(world.s, eng)
    api = c.post(
        "/v1/tokens", json={"name": "ci", "scopes": ["read"], "ttl_s": 3600}, headers=auth(session)
    ).json()["access_token"]
    _cert(world, "eng", 4242)
    assert _cert_refusal(world, "eng", 4242) is None
    assert c.get("/v1/me", headers=auth(api)).status_code == 200
    root = world.s.people.show_user(world.admin, "root")
    r = c.post(route, json=body, headers=auth(session_token(world.s, root)))
    assert r.status_code == 200, r.text
    for token in (session, api):
        assert c.get("/v1/me", headers=auth(token)).status_code == 401
    assert _cert_refusal(world, "eng", 4242) is not None  # the SSH certificate is denied
    ev = emitter.of_type("user.tokens_revoked")[-1]
    assert ev.record["Object"] == "eng" and ev.details["reason"] == reason
    assert ev.details["tokens"] == 2 and ev.details["cert_serials"] == ["4242"]
    assert session not in ev.to_json() and api not in ev.to_json()


def test_admins_revoke_only_the_tokens_of_people_they_manage(world: World) -> None:
    c = client_for(world.s)
    hadmin = auth(session_token(world.s, world.users["hadmin"]))
    appr = session_token(world.s, world.users["appr"])
    eng = session_token(world.s, world.users["eng"])
    assert c.post("/v1/users/eng/revoke-tokens", headers=hadmin).status_code in (403, 404)
    assert c.get("/v1/me", headers=auth(eng)).status_code == 200  # vendor: not theirs
    r = c.post("/v1/users/appr/revoke-tokens", headers=hadmin)
    assert r.status_code == 200 and r.json()["tokens"] == 1
    assert c.get("/v1/me", headers=auth(appr)).status_code == 401
    assert c.post("/v1/users/appr/revoke-tokens", headers=auth(eng)).status_code == 403


def test_changing_your_password_ends_your_other_tokens(world: World) -> None:
    c = client_for(world.s)
    current = session_token(world.s, world.users["appr"])
    other_device = session_token(world.s, world.users["appr"])
    _cert(world, "appr", 77)
    r = c.post(
        "/v1/me/password", json={"current": PASSWORD, "new": NEW_PASSWORD}, headers=auth(current)
    )
    assert r.status_code == 204
    assert c.get("/v1/me", headers=auth(other_device)).status_code == 401
    assert _cert_refusal(world, "appr", 77) is not None
    assert c.get("/v1/me", headers=auth(current)).status_code == 200  # the one in use
    assert login(c, "appr", NEW_PASSWORD)[0] == 200


def test_a_wrong_current_password_counts_towards_the_lockout(
    world: World, clock: FakeClock, emitter: CapturingEmitter
) -> None:
    secret = world.enrol_totp("appr")
    c = client_for(world.s)
    token = auth(session_token(world.s, world.users["appr"]))
    codes = []
    for _ in range(5):
        r = c.post(
            "/v1/me/password", json={"current": "guessing-123x", "new": NEW_PASSWORD}, headers=token
        )
        codes.append((r.status_code, r.json()["error"]["code"]))
    assert codes[:4] == [(403, "forbidden")] * 4 and codes[4] == (401, "locked_out")
    failed = emitter.of_type("user.reauth_failed")
    assert [e.details["failures"] for e in failed] == [1, 2, 3, 4, 5]
    assert "guessing-123x" not in "".join(e.to_json() for e in failed)
    assert len(emitter.of_type("user.locked_out")) == 1
    status, body = login(c, "appr", PASSWORD, totp.code_at(secret, clock()))
    assert (status, body["error"]["code"]) == (401, "locked_out")
    assert login(c, "appr", NEW_PASSWORD)[0] == 401  # and nothing was changed


def test_a_flood_of_failed_sign_ins_writes_a_bounded_number_of_events_that_add_up(
    world: World, clock: FakeClock, emitter: CapturingEmitter
) -> None:
    c = client_for(world.s)
    before = len(emitter.events)
    for _minute in range(2):
        for i in range(100):
            assert login(c, f"guess{i}", "whatever-123")[0] == 401
        clock.advance(61)
    world.s.auth.flush_floods()
    written = emitter.events[before:]
    failed = [e for e in written if e.type == "user.login"]
    floods = [e for e in written if e.type == "user.login_flood"]
    assert len(written) <= 2 * 11  # per source per minute: 10 one by one and one count
    assert len(failed) + sum(e.details["count"] for e in floods) == 200
    assert [e.details["count"] for e in floods] == [90, 90]
    assert {e.record["SrcIpAddr"] for e in failed} == {"testclient"}


@SQLITE_ONLY
def test_hoshu_admin_users_revoke_tokens(
    cli: Cli,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = world.s.people.show_user(world.admin, "root")
    monkeypatch.setenv("HOSHU_TOKEN", session_token(world.s, root))
    eng = session_token(world.s, world.users["eng"])
    _cert(world, "eng", 99)
    code, out, err = cli("admin", "users", "revoke-tokens", "eng")
    assert code == 0, err
    assert "Revoked 1 token(s) and 1 SSH certificate(s) of eng" in out
    assert client_for(world.s).get("/v1/me", headers=auth(eng)).status_code == 401
    assert _cert_refusal(world, "eng", 99) is not None


def test_a_flood_of_forged_gateway_enrolments_is_counted_not_written_one_by_one(
    world: World, clock: FakeClock, emitter: CapturingEmitter
) -> None:
    c = client_for(world.s)
    body = {"public_key": openssh_public_key(), "name": "gw-x", "version": "0.1.0"}
    for i in range(200):
        token = "garbage" if i % 2 else f"hoshu-enroll-v1.t{i}.{'A' * 43}.pin"
        assert c.post("/v1/gateways/enroll", json={**body, "token": token}).status_code == 401
    clock.advance(61)
    world.s.gateways.strangers.flush()
    refused = emitter.of_type("gateway.enrollment_refused")
    floods = emitter.of_type("gateway.enrollment_flood")
    assert len(refused) == 10 and len(floods) == 1
    assert len(refused) + floods[0].details["count"] == 200
    assert floods[0].record["SrcIpAddr"] == "testclient"
    assert not c.get(
        "/v1/gateways", headers=auth(session_token(world.s, world.users["hadmin"]))
    ).json()
