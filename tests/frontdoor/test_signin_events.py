"""SSH sign-in: what the hospital's auditor sees, slow sign-ins, certificates that ended.

The tests run against the harness's ``FakePolicy`` and the real
``StoreAccessPolicy`` on SQLite, except where the real domain is the point
(sign-out, the hospital auditor's audit search): those run on the store only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from audit.events import AuditEvent
from audit.index import AuditIndex
from audit.testing import CapturingEmitter
from audit.workreports import ReportService
from broker.access.ports import Actor
from broker.api import errors
from broker.api.routes.audit import build_router
from tests.frontdoor.harness import World, paramiko_client, run
from tests.support import poll


@pytest.fixture(params=["fake", "store"])
def policy_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _lock_out(w: World) -> None:
    for _ in range(5):
        with pytest.raises(paramiko.AuthenticationException):
            await asyncio.to_thread(paramiko_client, w, None, "123456")


STORE_ONLY = pytest.mark.parametrize("policy_kind", ["store"])  # the fake has no domain


def _audit_api(
    events: list[AuditEvent], tmp: Path, people: dict[str, Actor]
) -> Iterator[TestClient]:
    """The API's audit search over these events, as these people (their real roles)."""
    index = AuditIndex.from_url(f"sqlite:///{tmp}/audit-index.db")
    index.add([e.record for e in events])
    em = CapturingEmitter()

    def authenticate(request: Request) -> Actor:
        from broker.access.errors import Unauthenticated

        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in people:
            raise Unauthenticated("invalid token")
        return people[token]

    app = FastAPI()
    errors.install(app)
    app.include_router(
        build_router(
            index=index,
            reports=ReportService(index, em),
            recordings_dir=tmp / "recordings",
            emitter=em,
            authenticate=authenticate,
        )
    )
    with TestClient(app) as client:
        yield client


@STORE_ONLY
async def test_the_hospitals_auditor_sees_a_vendor_engineers_lockout(granted: World) -> None:
    """Wrong codes over SSH for ``alice+<instrument>``: the lockout carries the instrument's
    hospital, so that hospital's auditor finds it in the audit search; another doesn't."""
    w = granted
    await _lock_out(w)
    await poll(
        lambda: (
            len([e for e in w.events.of_type("ssh.login") if e.get("EventResult") == "Failure"])
            == 5
        )
    )
    people = {"aud": w.policy.actors["aud"], "other": w.policy.actors["other-aud"]}
    for client in _audit_api(list(w.events.events), w.tmp, people):
        seen = client.get(
            "/v1/audit/events?type=user.locked_out", headers={"Authorization": "Bearer aud"}
        )
        assert seen.status_code == 200, seen.text
        rows = seen.json()["events"]
        assert len(rows) == 1 and rows[0]["ActorUsername"] == "alice"
        assert rows[0]["SrcIpAddr"] == "127.0.0.1"
        alerts = client.get(
            "/v1/audit/events?type=alert.raised", headers={"Authorization": "Bearer aud"}
        ).json()["events"]
        assert [a["Details"]["alert"] for a in alerts] == ["user.locked_out"]
        failed = client.get(
            "/v1/audit/events?type=user.mfa_failed", headers={"Authorization": "Bearer aud"}
        ).json()["events"]
        assert len(failed) == 5
        other = client.get(
            "/v1/audit/events?type=user.locked_out", headers={"Authorization": "Bearer other"}
        ).json()["events"]
        assert other == []


async def test_a_slow_sign_in_is_told_why_and_logged(granted: World) -> None:
    """Stock ssh whose code arrives after the limit (2 s here): the client prints hoshu's
    reason, and ``ssh.login`` says ``login_timeout``."""
    w = granted
    slow = w.tmp / "slow-askpass"
    slow.write_text("#!/bin/sh\nsleep 4\nprintf '%s\\n' \"$HOSHU_TEST_CODE\"\n")
    slow.chmod(0o755)
    env = w.env()
    env["SSH_ASKPASS"] = str(slow)
    r = await run(w.ssh_argv(extra=(w.login(), "echo never")), env)
    assert r.rc == 255 and b"never" not in r.out
    assert b"hoshu: sign-in took longer than 2 s" in r.err, r.err
    await poll(
        lambda: any(
            str(e.get("EventResultDetails")).startswith("login_timeout")
            for e in w.events.of_type("ssh.login")
        )
    )
    fail = [
        e
        for e in w.events.of_type("ssh.login")
        if str(e.get("EventResultDetails")).startswith("login_timeout")
    ]
    assert len(fail) == 1 and fail[0].get("EventResult") == "Failure"
    assert fail[0].get("HospitalId") == w.policy.hospital_of(w.instrument)
    assert not w.events.of_type("session.started")


async def test_paramiko_stalled_at_the_code_prompt_is_disconnected_with_the_reason(
    granted: World,
) -> None:
    """paramiko sits at the code prompt: at 2 s the broker writes ``login_timeout`` and
    disconnects with the reason, which paramiko receives (its transport log)."""
    w = granted
    got: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    def timed_out() -> bool:
        return any(
            str(e.get("EventResultDetails")).startswith("login_timeout")
            for e in w.events.of_type("ssh.login")
        )

    def stall() -> float:
        t = paramiko.Transport(("127.0.0.1", w.door.port))
        start = time.monotonic()
        try:
            t.start_client(timeout=10)
            key = paramiko.Ed25519Key.from_private_key_file(str(w.key_path))
            login = w.login().split("@")[0]
            assert t.auth_publickey(login, key) == ["keyboard-interactive"]

            def handler(_t: str, _i: str, prompts: list[tuple[str, bool]]) -> list[str]:
                while not timed_out() and time.monotonic() - start < 10:
                    time.sleep(0.05)  # the person is still looking for the phone
                return [w.code() for _ in prompts]

            with pytest.raises((paramiko.SSHException, EOFError)):
                t.auth_interactive(login, handler)
            return time.monotonic() - start
        finally:
            t.close()

    grab = Grab(logging.INFO)
    plog = logging.getLogger("paramiko.transport")
    old_level = plog.level
    plog.setLevel(logging.INFO)
    plog.addHandler(grab)
    try:
        took = await asyncio.to_thread(stall)
    finally:
        plog.removeHandler(grab)
        plog.setLevel(old_level)
    assert 1.5 < took < 9
    assert any("hoshu: sign-in took longer than 2 s" in m for m in got), got
    assert not [e for e in w.events.of_type("ssh.login") if e.get("EventResult") == "Success"]


@STORE_ONLY
async def test_a_certificate_ends_with_the_sign_in_it_came_from(granted: World) -> None:
    """Real OpenSSH with a hoshu certificate gets in; after ``logout`` the same certificate
    is refused with a clear message and an ``ssh.login`` failure naming its serial."""
    w = granted
    cert = w.cert_file(serial=4242)
    argv = w.ssh_argv(batch=True, extra=("-o", f"CertificateFile={cert}", w.login()))
    r = await run([*argv, "echo cert-ok"], w.env())
    assert r.rc == 0 and r.out == b"cert-ok\n", r.err
    s = w.policy.s
    issued = s.auth.login("alice", "correct-horse-battery-9", w.code())
    actor = s.auth.authenticate(issued.token)
    s.auth.logout(actor, issued.token)
    r2 = await run([*argv, "echo cert-ok"], w.env())
    assert r2.rc == 255 and r2.out == b""
    assert b"hoshu: certificate refused: certificate revoked" in r2.err, r2.err
    refused = [
        e
        for e in w.events.of_type("ssh.login")
        if str(e.get("EventResultDetails")).startswith("certificate refused")
    ]
    assert len(refused) == 1 and refused[0].details["cert_serial"] == 4242
    assert refused[0].get("EventResult") == "Failure"


async def test_a_locked_account_cannot_use_its_certificate(granted: World) -> None:
    w = granted
    cert = w.cert_file(serial=77)
    argv = w.ssh_argv(batch=True, extra=("-o", f"CertificateFile={cert}", w.login()))
    await _lock_out(w)
    r = await run([*argv, "echo cert-ok"], w.env())
    assert r.rc == 255 and r.out == b""
    assert b"hoshu: certificate refused: account locked until" in r.err, r.err
    await poll(
        lambda: any(
            str(e.get("EventResultDetails")).startswith("certificate refused: account locked")
            for e in w.events.of_type("ssh.login")
        )
    )


async def test_a_certificate_never_issued_by_this_broker_is_refused(granted: World) -> None:
    """Signed by the CA but not recorded (a stolen CA key, a restored backup): refused."""
    w = granted
    assert w.door.ca is not None
    line = w.door.ca.issue(
        w.public_line,
        username="alice",
        user_id=w.engineer.user_id,
        now=w.clock.now,
        grants_end=None,
        serial=999,
        emitter=w.events,
    )
    path = w.tmp / "unrecorded-cert.pub"
    path.write_text(line + "\n")
    r = await run(
        w.ssh_argv(batch=True, extra=("-o", f"CertificateFile={path}", w.login(), "true")), w.env()
    )
    assert r.rc == 255 and b"certificate unknown to this broker" in r.err, r.err
