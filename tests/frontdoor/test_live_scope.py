"""Live sessions and SSH certificates ask the permission table, token scope included.

The real control plane (``StoreAccessPolicy`` on SQLite, real sign-in, real
tokens) answers the front door and the API; an engineer holds a recorded
shell through paramiko.  A password-only token (before TOTP enrolment), a
read-only API token and another hospital's approver are refused on follow and
terminate: 403, a ``*.refused`` event naming them, and the shell keeps
running.  A certificate without a full MFA sign-in, or without a grant, is
refused with an ``ssh.cert_refused`` event and no certificate.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import paramiko
import pytest
from fastapi import FastAPI

from broker.access.people import NewUser
from broker.api.app import create_app
from broker.api.routes.certs import build_cert_router
from broker.api.routes.sessions import build_sessions_router
from broker.assembly import store_grants_end
from broker.settings import BrokerSettings
from tests.control.apihelp import auth, session_token
from tests.control.conftest import PASSWORD
from tests.frontdoor.harness import World, open_shell, paramiko_client, shell_ready
from tests.support import poll


@pytest.fixture
def policy_kind() -> str:
    return "store"


def _app(w: World) -> FastAPI:
    s = w.policy.s
    return create_app(
        BrokerSettings(data_dir=w.tmp / "api"),
        services=s,
        extra_routers=[
            build_sessions_router(lambda: w.door.sessions, w.events),
            build_cert_router(
                lambda: w.door.ca, w.policy, store_grants_end(s), w.events, s.ctx.now
            ),
        ],
    )


def _person(w: World, name: str, org: str, role: str) -> Any:
    return w.policy.s.people.create_user(
        w.policy.actors["root"], NewUser(name, f"Person {name}", org, [role], PASSWORD)
    )


def _refusals(w: World, kind: str, who: str) -> list[Any]:
    return [e for e in w.events.of_type(kind) if e.get("ActorUsername") == who]


async def _tokens(w: World, http: httpx.AsyncClient) -> dict[str, str]:
    s = w.policy.s
    _person(w, "newappr", "hoshi-hospital", "approver")  # no TOTP yet
    r = await http.post("/v1/auth/login", json={"username": "newappr", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["scopes"] == ["enroll"], r.text
    users = {u.name: u for u in s.people.list_users(w.policy.actors["root"])}
    full = session_token(s, users["appr"])
    ro = await http.post(
        "/v1/tokens", json={"name": "ro-bot", "scopes": ["read"]}, headers=auth(full)
    )
    assert ro.status_code == 201, ro.text
    _person(w, "tsuki-appr", "tsuki-hospital", "approver")
    users = {u.name: u for u in s.people.list_users(w.policy.actors["root"])}
    return {
        "enrol-only": r.json()["access_token"],
        "read-only": ro.json()["access_token"],
        "other-hospital": session_token(s, users["tsuki-appr"]),
        "approver": full,
    }


async def _running(chan: paramiko.Channel, marker: str) -> None:
    """The engineer's shell still answers."""
    chan.send(f"echo alive-{marker}-$((6*7))\n".encode())
    out = await asyncio.to_thread(shell_ready, chan)
    assert f"alive-{marker}-42".encode() in out, out


async def test_scoped_tokens_and_other_hospitals_cannot_follow_or_terminate(granted: World) -> None:
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    transport = httpx.ASGITransport(app=_app(w))
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as http:
        tokens = await _tokens(w, http)
        (live,) = w.door.sessions.list()
        sid = live.session_id
        for who, token in (
            ("enrol-only", tokens["enrol-only"]),
            ("read-only", tokens["read-only"]),
            ("other-hospital", tokens["other-hospital"]),
        ):
            r = await http.post(f"/v1/sessions/{sid}/terminate", headers=auth(token))
            assert r.status_code == 403, (who, r.text)
            if who != "other-hospital":  # another hospital's session is not theirs to see
                r = await http.get(f"/v1/sessions/{sid}/stream", headers=auth(token))
                assert r.status_code == 403, (who, r.text)
            await _running(chan, who)
        assert [s.session_id for s in w.door.sessions.list()] == [sid]
        assert not w.events.of_type("session.terminated")
        assert not w.events.of_type("recording.viewed")
        for name in ("newappr", "appr"):  # appr: the read-only token is hers
            (follow,) = _refusals(w, "recording.refused", name)
            (stop,) = _refusals(w, "admin.refused", name)
            assert follow.get("Operation") == "sessions.follow"
            assert stop.get("Operation") == "sessions.terminate"
            assert stop.get("TargetSessionId") == sid
            assert "scope" in stop.details["reason"]
        (other,) = _refusals(w, "admin.refused", "tsuki-appr")
        assert other.get("TargetSessionId") == sid and other.get("HospitalId") == live.hospital_id
        assert "hospital" in other.details["reason"]

        # the hospital's own approver, signed in fully, follows and ends it
        follow_task = asyncio.ensure_future(
            http.get(f"/v1/sessions/{sid}/stream", headers=auth(tokens["approver"]))
        )
        await poll(lambda: bool(w.events.of_type("recording.viewed")))
        await poll(lambda: bool(w.door.sessions.list()[0].followers))
        r = await http.post(f"/v1/sessions/{sid}/terminate", headers=auth(tokens["approver"]))
        assert r.status_code == 200 and r.json()["terminated"] is True
        await asyncio.wait_for(follow_task, 10)
    await poll(chan.exit_status_ready, deadline_s=5)
    t.close()
    assert w.events.of_type("session.terminated")[0].details["by"] == "appr"


async def test_certificate_refusals_are_events_and_issue_nothing(world: World) -> None:
    w = world
    s = w.policy.s
    _person(w, "bob", "roche", "engineer")  # password only, no TOTP yet
    users = {u.name: u for u in s.people.list_users(w.policy.actors["root"])}
    body = {"public_key": w.public_line}
    transport = httpx.ASGITransport(app=_app(w))
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as http:
        login = await http.post("/v1/auth/login", json={"username": "bob", "password": PASSWORD})
        enrol_only = login.json()["access_token"]
        r = await http.post("/v1/ssh/certificate", json=body, headers=auth(enrol_only))
        assert r.status_code == 403 and r.json()["error"]["code"] == "mfa_required", r.text
        full = session_token(s, users["alice"])
        api = await http.post(
            "/v1/tokens",
            json={"name": "bot", "scopes": ["read", "requests", "decisions", "admin"]},
            headers=auth(full),
        )
        r = await http.post(
            "/v1/ssh/certificate", json=body, headers=auth(api.json()["access_token"])
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "mfa_required", r.text
        # fully signed in, her own key, but no grant: refused too
        r = await http.post("/v1/ssh/certificate", json=body, headers=auth(full))
        assert r.status_code == 403 and r.json()["error"]["code"] == "no_grant", r.text
    assert not w.events.of_type("ssh.cert_issued")
    (bob,) = _refusals(w, "ssh.cert_refused", "bob")
    assert bob.get("Operation") == "ssh.certificate" and "TOTP" in bob.details["reason"]
    alice = _refusals(w, "ssh.cert_refused", "alice")
    assert [e.get("EventResultDetails") for e in alice] == ["mfa_required", "no_grant"]
    assert all(e.get("EventResult") == "Failure" for e in [*alice, bob])
