"""Engineers get in with a registered key AND a second factor, every time.

Every test runs twice: against the harness's ``FakePolicy`` and against the real
``StoreAccessPolicy`` on SQLite (TOTP, replay and lockout by the domain), so a
fake cannot hide a bug in the real rules.
"""

from __future__ import annotations

import asyncio

import paramiko
import pytest

from audit import AuditEvent
from tests.frontdoor.harness import World, paramiko_client, run
from tests.support import poll


def _last_login_detail(w: World) -> object:
    """Why the latest sign-in ended as logged (None before any is logged)."""
    logins = w.events.of_type("ssh.login")
    return logins[-1].get("EventResultDetails") if logins else None


@pytest.fixture(params=["fake", "store"])
def policy_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_key_and_totp_run_a_command_on_the_instrument(granted: World) -> None:
    """Stock ssh: key, then the TOTP code asked by keyboard-interactive, reaches the sshd."""
    w = granted
    r = await run(w.ssh_argv(extra=(w.login(), "echo hello-from; pwd")), w.env())
    assert r.rc == 0, r.err
    assert r.out.splitlines() == [b"hello-from", str(w.data_dir).encode()]
    login = w.events.of_type("ssh.login")[-1]
    assert login.get("EventResult") == "Success"
    assert login.details["method"] == "publickey+totp"


async def test_key_alone_never_gets_in(granted: World) -> None:
    """BatchMode (no way to answer the code): refused, and the failure is logged."""
    w = granted
    r = await run(w.ssh_argv(batch=True, extra=(w.login(), "true")), w.env())
    assert r.rc == 255
    assert b"Permission denied" in r.err

    def failures() -> list[AuditEvent]:
        return [e for e in w.events.of_type("ssh.login") if e.get("EventResult") == "Failure"]

    await poll(
        lambda: any(
            e.get("EventResultDetails") == "second factor not completed" for e in failures()
        ),
        what="the refusal logged",
    )
    fail = failures()
    assert fail and fail[-1].get("EventResultDetails") == "second factor not completed"
    assert not w.events.of_type("session.started")


async def test_wrong_code_refused_and_logged(granted: World) -> None:
    w = granted
    r = await run(w.ssh_argv(extra=(w.login(), "true")), w.env(code="000000"))
    assert r.rc == 255
    assert b"wrong code" in r.err
    failed = w.events.of_type("user.mfa_failed")
    assert len(failed) == 1 and failed[0].get("EventResultDetails") == "wrong"
    assert "totp_code" not in failed[0].details


async def test_a_code_is_accepted_once(granted: World) -> None:
    """The same code a second time is refused as replayed (paramiko)."""
    w = granted
    code = w.code()
    t = await asyncio.to_thread(paramiko_client, w, None, code)
    assert t.is_authenticated()
    t.close()
    with pytest.raises(paramiko.AuthenticationException):
        await asyncio.to_thread(paramiko_client, w, None, code)
    assert w.events.of_type("user.mfa_failed")[-1].get("EventResultDetails") == "replayed"


async def test_five_failures_lock_the_account_and_raise_an_alert(granted: World) -> None:
    """One lockout is one ``user.locked_out`` (the policy's), with the source address and
    the hospital of the instrument the login named; so are the failures and the alert."""
    w = granted
    for _ in range(5):
        with pytest.raises(paramiko.AuthenticationException):
            await asyncio.to_thread(paramiko_client, w, None, "123456")
    hospital = w.policy.hospital_of(w.instrument)
    assert hospital
    locked = w.events.of_type("user.locked_out")
    assert len(locked) == 1
    assert locked[0].get("SrcIpAddr") == "127.0.0.1"
    assert locked[0].get("HospitalId") == hospital
    alert = w.events.of_type("alert.raised")
    assert len(alert) == 1 and alert[0].details["alert"] == "user.locked_out"
    assert alert[0].get("HospitalId") == hospital
    failed = w.events.of_type("user.mfa_failed")
    assert len(failed) == 5
    assert {(e.get("SrcIpAddr"), e.get("HospitalId")) for e in failed} == {("127.0.0.1", hospital)}

    def failed_logins() -> list[object]:
        return [e for e in w.events.of_type("ssh.login") if e.get("EventResult") == "Failure"]

    await poll(lambda: len(failed_logins()) == 5)  # written as each connection closes
    assert {e.get("HospitalId") for e in failed_logins()} == {hospital}  # type: ignore[attr-defined]
    # even the right code is refused while locked
    r = await run(w.ssh_argv(extra=(w.login(), "true")), w.env())
    assert r.rc == 255 and b"account locked" in r.err


async def test_unknown_user_and_unregistered_key_are_refused(granted: World) -> None:
    w = granted
    r = await run(
        w.ssh_argv(batch=True, extra=(f"mallory+{w.instrument}@127.0.0.1", "true")), w.env()
    )
    assert r.rc == 255
    w.policy.forget_key("alice")
    r2 = await run(w.ssh_argv(extra=(w.login(), "true")), w.env())
    assert r2.rc == 255

    def logged() -> list[object]:
        return [e.get("EventResultDetails") for e in w.events.of_type("ssh.login")]

    await poll(lambda: logged().count("unknown user or key") >= 2, what="both refusals logged")
    reasons = logged()
    assert reasons.count("unknown user or key") == 2
    assert not w.events.of_type("session.started")


async def test_malformed_login_name_refused(granted: World) -> None:
    w = granted
    r = await run(w.ssh_argv(extra=("alice+Bad_Name!@127.0.0.1", "true")), w.env())
    assert r.rc == 255
    await poll(lambda: _last_login_detail(w) == "malformed login name", what="the refusal logged")
    assert w.events.of_type("ssh.login")[-1].get("EventResultDetails") == "malformed login name"


async def test_no_password_method_is_offered(granted: World) -> None:
    w = granted
    t = paramiko.Transport(("127.0.0.1", w.door.port))
    await asyncio.to_thread(t.start_client, timeout=10)
    try:
        with pytest.raises(paramiko.BadAuthenticationType) as exc:
            await asyncio.to_thread(t.auth_password, "alice", "secret")
        assert exc.value.allowed_types == ["publickey"]
    finally:
        t.close()


async def test_authentication_has_a_time_limit(granted: World) -> None:
    """A client that connects and never authenticates is cut off at login_timeout."""
    w = granted
    reader, writer = await asyncio.open_connection("127.0.0.1", w.door.port)
    writer.write(b"SSH-2.0-slowloris\r\n")
    banner = await asyncio.wait_for(reader.readline(), 5)
    assert banner.startswith(b"SSH-2.0-")
    data = b"x"
    while data:  # read until the broker hangs up (2 s login timeout in these tests)
        data = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    await poll(
        lambda: str(_last_login_detail(w)).startswith("login_timeout"), what="the timeout logged"
    )
    fail = w.events.of_type("ssh.login")[-1]
    assert fail.get("EventResult") == "Failure"
    assert fail.get("EventResultDetails").startswith("login_timeout: not completed in time")


async def test_certificate_from_hoshu_login_is_both_factors(granted: World) -> None:
    """A short-lived user certificate issued after MFA gets in without a code (BatchMode)."""
    w = granted
    assert w.door.ca is not None
    cert_path = w.cert_file(serial=7)
    r = await run(
        w.ssh_argv(
            batch=True, extra=("-o", f"CertificateFile={cert_path}", w.login(), "echo cert-ok")
        ),
        w.env(),
    )
    assert r.rc == 0, r.err
    assert r.out.strip() == b"cert-ok"
    assert w.events.of_type("ssh.login")[-1].details["method"] == "certificate"
    assert w.events.of_type("ssh.cert_issued")[0].details["cert_serial"] == 7


async def test_changing_user_name_mid_login_drops_the_proven_key(granted: World) -> None:
    """Key proven as one login name, code answered as another: refused."""
    w = granted

    def attempt() -> None:
        t = paramiko.Transport(("127.0.0.1", w.door.port))
        try:
            t.start_client(timeout=10)
            key = paramiko.Ed25519Key.from_private_key_file(str(w.key_path))
            assert t.auth_publickey(f"alice+{w.instrument}", key) == ["keyboard-interactive"]
            t.auth_interactive(
                "alice+other-instrument", lambda _t, _i, prompts: [w.code() for _ in prompts]
            )
        finally:
            t.close()

    with pytest.raises(paramiko.SSHException):
        await asyncio.to_thread(attempt)
    assert not w.events.of_type("user.mfa_failed")  # never reached the code check
    assert not [e for e in w.events.of_type("ssh.login") if e.get("EventResult") == "Success"]


async def test_vendor_source_networks_are_enforced(granted: World) -> None:
    """A vendor limited to its own networks cannot log in from elsewhere."""
    w = granted
    w.policy.set_source_cidrs("alice", ("192.0.2.0/24",))
    r = await run(w.ssh_argv(extra=(w.login(), "true")), w.env())
    assert r.rc == 255
    await poll(
        lambda: _last_login_detail(w) == "source address not allowed for this vendor",
        what="the refusal logged",
    )
    assert (
        w.events.of_type("ssh.login")[-1].get("EventResultDetails")
        == "source address not allowed for this vendor"
    )
    w.policy.set_source_cidrs("alice", ("127.0.0.0/8",))
    r2 = await run(w.ssh_argv(extra=(w.login(), "echo in")), w.env())
    assert r2.rc == 0 and r2.out == b"in\n"
