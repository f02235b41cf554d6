"""Console accounts at the HTTP level: TOTP enrolment with a QR code, password change,
the password an admin set, lockout, and the TOTP step-up before sensitive actions.

One seeded broker app per module (tests/console/conftest.py ``site``), called through
Starlette's TestClient; a second app over the same database stands for another
broker replica.  The clock is the site's FakeClock: "five minutes later" is a
clock step, and each TOTP code is used once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qrcode
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from broker.access import totp
from broker.access.model import Token, User
from broker.access.permissions import PERMISSIONS, role_allows
from broker.access.services import Services
from broker.access.stepup import STEP_UP_S
from broker.api.app import create_app
from broker.console.stepup import FIELD, needs_step_up
from broker.settings import BrokerSettings
from tests.console.conftest import Console, site
from tests.control.conftest import PASSWORD

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
SECRET = re.compile(r'<code id="totp-secret" class="secret">([A-Z2-7 ]+)</code>')
NEW_PASSWORD = "Another-horse-battery-7"
STALE = STEP_UP_S + 1


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-account")


@pytest.fixture(scope="module")
def c(home: Path) -> Iterator[Console]:
    with site(home) as console:
        platform = console.services.people.org_of(console.world.admin.org_id)
        assert platform is not None
        console.world.add_user("padmin", platform, ["platform_admin"])
        yield console


def client(c: Console, lang: str = "en", app: Any = None) -> TestClient:
    return TestClient(
        app or c.app, raise_server_exceptions=False, headers={"Accept-Language": lang}
    )


def new_person(c: Console, name: str, roles: list[str]) -> None:
    c.world.add_user(name, c.world.hospital, roles)


def signed_in(c: Console, name: str, *, app: Any = None, password: str = PASSWORD) -> TestClient:
    http = client(c, app=app)
    r = http.post(
        "/console/login",
        data={"username": name, "password": password, "totp": c.code(name)},
        follow_redirects=False,
    )
    c.clock.advance(30)  # each code once
    assert r.status_code == 303, r.text
    return http


def csrf_of(http: TestClient, page: str = "/console/account") -> str:
    m = CSRF.search(http.get(page).text)
    assert m, "the page carries no CSRF token"
    return m.group(1)


def is_step_up_form(r: Any) -> bool:
    return r.status_code == 403 and 'id="stepup-form"' in r.text and f'name="{FIELD}"' in r.text


def user(c: Console, name: str) -> User:
    with c.services.ctx.uow() as tx:
        found = tx.one(User, name=name)
    assert found is not None
    return found


def status_of(c: Console, request_id: str) -> str:
    return str(c.services.requests.show(c.world.admin, request_id).request.status)


# --- first sign-in: TOTP enrolment with a QR code ----------------------------------------


def test_first_sign_in_enrols_totp_with_a_qr_code_before_the_session_is_full(
    c: Console, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    new_person(c, "newappr", ["approver"])
    http = client(c)
    r = http.post(
        "/console/login",
        data={"username": "newappr", "password": PASSWORD, "totp": ""},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/account/totp"
    enrol_cookie = http.cookies.get("hoshu_session")
    assert enrol_cookie

    page = http.get("/console/account/totp")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in page.text and 'id="totp-qr"' in page.text
    assert "<script" not in page.text
    m = SECRET.search(page.text)
    assert m, "the secret is shown as text for typing in"
    secret = m.group(1).replace(" ", "")
    assert len(secret) >= 16
    # the QR code is the otpauth:// URI of that secret, every module drawn
    drawn = {(int(x), int(y)) for x, y in re.findall(r"M(\d+),(\d+)h1v1h-1z", page.text)}
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
    qr.add_data(totp.provisioning_uri(secret, "newappr"))
    qr.make(fit=True)
    dark = {(x, y) for y, row in enumerate(qr.get_matrix()) for x, on in enumerate(row) if on}
    assert drawn == dark
    # a reload shows the same secret (the authenticator may have scanned the first one)
    assert SECRET.search(http.get("/console/account/totp").text).group(1) == m.group(1)  # type: ignore[union-attr]
    # the secret is nowhere but in that page: not in a URL, a header, an event or a log
    assert secret not in page.headers.get("location", "") and secret not in str(page.url)
    assert secret not in caplog.text
    assert all(secret not in repr(e.record) for e in c.emitter.events)

    # the enrolment-only session opens nothing but enrolment
    r = http.get("/console/", follow_redirects=False)
    assert r.headers["location"] == "/console/account/totp"
    for path in ("/console/inbox", "/console/grants", "/console/account/password"):
        assert http.get(path, follow_redirects=False).status_code == 403, path
    req = c.request(["cobas-1"], "before enrolment")
    r = http.post(
        f"/console/requests/{req.id}/approve",
        data={"csrf": csrf_of(http, "/console/account/totp")},
        follow_redirects=False,
    )
    assert r.status_code == 403 and status_of(c, req.id) == "pending"

    # a wrong code: the page again, saying so; not enrolled
    csrf = csrf_of(http, "/console/account/totp")
    r = http.post("/console/account/totp", data={"csrf": csrf, "code": "000000"})
    assert r.status_code == 422 and 'data-key="totp.wrong_code"' in r.text
    assert not user(c, "newappr").totp_enrolled

    # the first good code finishes: a full session, the enrolment token given up
    before = len(c.emitter.of_type("admin.change"))
    r = http.post(
        "/console/account/totp",
        data={"csrf": csrf, "code": totp.code_at(secret, c.clock())},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/account?done=totp_enrolled"
    assert user(c, "newappr").totp_enrolled
    enrolled = [
        e.record
        for e in c.emitter.of_type("admin.change")[before:]
        if e.record.get("Operation") == "totp_enrolled"
    ]
    assert [e["Object"] for e in enrolled] == ["newappr"]
    assert http.cookies.get("hoshu_session") not in ("", None, enrol_cookie)
    assert http.get("/console/inbox").status_code == 200
    assert "is set up" in http.get("/console/account?done=totp_enrolled").text
    # the enrolment token is dead
    stale = client(c)
    stale.cookies.set("hoshu_session", enrol_cookie)
    assert stale.get("/console/account/totp", follow_redirects=False).status_code == 303
    # once enrolled, enrolling again is refused (an admin resets TOTP)
    assert http.get("/console/account/totp").status_code == 409
    c.secrets["newappr"] = secret
    c.clock.advance(30)


def test_a_reset_totp_enrols_again_at_the_next_sign_in(c: Console) -> None:
    new_person(c, "resetme", ["approver"])
    c.code("resetme")  # enrolled
    c.services.people.reset_totp(c.world.admin, "resetme")
    del c.secrets["resetme"]
    http = client(c, "ja")
    r = http.post(
        "/console/login",
        data={"username": "resetme", "password": PASSWORD, "totp": ""},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/console/account/totp"
    page = http.get("/console/account/totp")
    assert "認証アプリの設定" in page.text and 'id="totp-qr"' in page.text


# --- password -----------------------------------------------------------------------------


def test_change_password_with_the_apis_rules_ends_the_other_sessions(c: Console) -> None:
    new_person(c, "pwuser", ["approver"])
    http = signed_in(c, "pwuser")
    other = signed_in(c, "pwuser")
    csrf = csrf_of(http, "/console/account/password")

    def change(current: str, new: str, new2: str | None = None) -> Any:
        return http.post(
            "/console/account/password",
            data={"csrf": csrf, "current": current, "new": new, "new2": new2 or new},
            follow_redirects=False,
        )

    before = user(c, "pwuser").password_hash
    r = change(PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x")
    assert r.status_code == 422 and 'data-key="password.mismatch"' in r.text
    r = change(PASSWORD, "short1A")
    assert r.status_code == 422 and 'data-key="password.weak"' in r.text
    r = change(PASSWORD, "pwuser-is-my-long-password")
    assert r.status_code == 422 and "account name" in r.text
    refusals = len(c.emitter.of_type("admin.refused"))
    r = change("not-my-password", NEW_PASSWORD)
    assert r.status_code == 403 and 'data-key="password.wrong_current"' in r.text
    [failed] = c.emitter.of_type("user.reauth_failed")[-1:]
    assert failed.record["ActorUsername"] == "pwuser"
    assert len(c.emitter.of_type("admin.refused")) == refusals + 1  # as through the API
    assert user(c, "pwuser").password_hash == before

    r = change(PASSWORD, NEW_PASSWORD)
    assert (
        r.status_code == 303 and r.headers["location"] == "/console/account?done=password_changed"
    )
    changed = [
        e.record
        for e in c.emitter.of_type("admin.change")
        if e.record.get("Operation") == "password_changed"
    ]
    assert changed[-1]["Object"] == "pwuser"
    assert c.emitter.of_type("user.tokens_revoked")[-1].record["Details"]["reason"] == (
        "password changed"
    )
    # this session goes on; the other one has ended, and the sign-in page says so
    assert http.get("/console/inbox").status_code == 200
    r = other.get("/console/inbox", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login?m=unauthenticated"
    assert "Your session has ended" in other.get(r.headers["location"]).text
    # the old password no longer signs in, the new one does
    r = client(c).post(
        "/console/login",
        data={"username": "pwuser", "password": PASSWORD, "totp": c.code("pwuser")},
    )
    assert r.status_code == 401
    c.clock.advance(30)
    signed_in(c, "pwuser", password=NEW_PASSWORD)
    assert NEW_PASSWORD not in repr([e.record for e in c.emitter.events])


def test_a_password_an_admin_set_must_be_changed_first(c: Console) -> None:
    new_person(c, "setpw", ["approver"])
    c.services.people.set_password(c.world.admin, "setpw", "Admin-chosen-pass-42")
    http = signed_in(c, "setpw", password="Admin-chosen-pass-42")
    for path in ("/console/", "/console/inbox", "/console/grants"):
        r = http.get(path, follow_redirects=True)
        assert r.url.path == "/console/account/password", path
        assert 'data-key="password.must_change"' in r.text
    req = c.request(["cobas-1"], "must change first")
    r = http.post(
        f"/console/requests/{req.id}/approve",
        data={"csrf": csrf_of(http, "/console/account/password")},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "must_change" in r.headers["location"]
    assert status_of(c, req.id) == "pending"
    r = http.post(
        "/console/account/password?m=must_change",
        data={
            "csrf": csrf_of(http, "/console/account/password"),
            "current": "Admin-chosen-pass-42",
            "new": NEW_PASSWORD,
            "new2": NEW_PASSWORD,
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert not user(c, "setpw").password_change_required
    assert http.get("/console/inbox").status_code == 200


# --- step-up --------------------------------------------------------------------------------


def test_approve_after_five_minutes_asks_for_a_fresh_code_then_proceeds(c: Console) -> None:
    http = signed_in(c, "appr")
    req = c.request(["cobas-1"], "step-up approve")
    csrf = csrf_of(http, "/console/inbox")
    # within five minutes of signing in with TOTP: no second prompt
    fresh = c.request(["cobas-1"], "fresh session")
    r = http.post(
        f"/console/requests/{fresh.id}/approve", data={"csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303 and status_of(c, fresh.id) == "approved"

    c.clock.advance(STALE)
    r = http.post(
        f"/console/requests/{req.id}/approve",
        data={"csrf": csrf, "comment": "<b>ok</b> after a look"},
        follow_redirects=False,
    )
    assert is_step_up_form(r)
    assert f'action="/console/requests/{req.id}/approve"' in r.text
    assert 'value="&lt;b&gt;ok&lt;/b&gt; after a look"' in r.text  # the field, escaped
    assert "<b>ok</b>" not in r.text
    assert status_of(c, req.id) == "pending"

    # a wrong code: asked again, nothing done, counted
    failures = len(c.emitter.of_type("user.mfa_failed"))
    r = http.post(
        f"/console/requests/{req.id}/approve",
        data={"csrf": csrf, "comment": "<b>ok</b> after a look", FIELD: "000000"},
        follow_redirects=False,
    )
    assert is_step_up_form(r) and 'data-key="stepup.wrong"' in r.text
    assert len(c.emitter.of_type("user.mfa_failed")) == failures + 1
    assert status_of(c, req.id) == "pending"

    # the right code: the approval goes ahead in that same request
    r = http.post(
        f"/console/requests/{req.id}/approve",
        data={"csrf": csrf, "comment": "<b>ok</b> after a look", FIELD: c.code("appr")},
        follow_redirects=False,
    )
    c.clock.advance(30)
    assert r.status_code == 303 and status_of(c, req.id) == "approved"
    [step] = c.emitter.of_type("user.step_up")[-1:]
    assert step.record["ActorUsername"] == "appr" and step.record["Operation"] == "requests.approve"
    approved = c.emitter.of_type("request.approved")[-1].record
    assert approved["Details"]["comment"] == "<b>ok</b> after a look"
    # and it holds for five minutes: the next action is not asked again
    other = c.request(["cobas-1"], "within the step-up")
    r = http.post(f"/console/requests/{other.id}/deny", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and status_of(c, other.id) == "denied"


def _route_action(route: APIRoute) -> str | None:
    """The permission-table action a console route asks :func:`page` for."""
    names = {f"console_{a.replace('.', '_')}": a for a in PERMISSIONS}
    for dep in route.dependant.dependencies:
        name = getattr(dep.call, "__name__", "")
        if name in names:
            return names[name]
    return None


def _routes(router: Any) -> Iterator[APIRoute]:
    """Every route of ``router`` and of the routers included in it."""
    for r in router.routes:
        if isinstance(r, APIRoute):
            yield r
        elif hasattr(r, "original_router"):  # an included router (FastAPI 0.16x)
            yield from _routes(r.original_router)
        elif hasattr(r, "routes"):
            yield from _routes(r)


def _console_posts(app: Any) -> list[tuple[str, str | None]]:
    return [
        (r.path, _route_action(r))
        for r in _routes(app.router)
        if r.path.startswith("/console/") and "POST" in (r.methods or set())
    ]


def test_every_console_state_change_asks_the_table_and_the_sensitive_ones_step_up(
    c: Console,
) -> None:
    """The forgotten path: every POST route of the console, the one added last included,
    asks the table for an API action (not a page-view action), and each one whose action
    needs the ``decisions`` or ``admin`` scope shows the step-up form to a stale session
    of a person allowed the action, doing nothing."""
    posts = _console_posts(c.app)
    assert len(posts) >= 20
    unasked = [path for path, action in posts if action is None and path != "/console/login"]
    assert unasked == [], f"console POST routes that do not ask the permission table: {unasked}"
    views = [(path, a) for path, a in posts if a and a.startswith("console.")]
    assert views == [], f"state changes must ask the API's action, not a page's: {views}"
    sensitive = [(p, a) for p, a in posts if a and needs_step_up(a, "POST")]
    for must in ("requests.approve", "requests.deny", "grants.revoke", "sessions.terminate"):
        assert must in {a for _, a in sensitive}, must
    assert any(PERMISSIONS[a].scope == "admin" for _, a in sensitive)

    people = ("appr", "hadmin", "padmin")
    clients = {name: signed_in(c, name) for name in people}
    c.clock.advance(STALE)
    csrfs = {name: csrf_of(http) for name, http in clients.items()}
    tried = []
    for path, action in sensitive:
        assert action is not None
        who = next(
            (
                n
                for n in people
                if role_allows(c.world.actors[n].roles, action, c.world.actors[n].org_kind)
            ),
            None,
        )
        assert who, f"nobody seeded may {action}"
        url = re.sub(r"\{[^}]+\}", "nothing-here", path)
        events = len(c.emitter.events)
        r = clients[who].post(url, data={"csrf": csrfs[who]}, follow_redirects=False)
        assert is_step_up_form(r), (path, action, r.status_code)
        assert len(c.emitter.events) == events, f"{path} did something before the step-up"
        tried.append(action)
    assert len(tried) == len(sensitive)


def test_a_bearer_token_on_a_console_route_needs_the_step_up_too(c: Console) -> None:
    api = client(c)
    r = api.post(
        "/v1/auth/login",
        json={"username": "appr2", "password": PASSWORD, "totp_code": c.code("appr2")},
    )
    c.clock.advance(30)
    assert r.status_code == 200, r.text
    bearer = {"Authorization": f"Bearer {r.json()['access_token']}"}
    req = c.request(["cobas-1"], "bearer on the console")
    c.clock.advance(STALE)
    bare = client(c)
    r = bare.post(f"/console/requests/{req.id}/approve", headers=bearer, follow_redirects=False)
    assert is_step_up_form(r) and status_of(c, req.id) == "pending"
    r = bare.post(
        f"/console/requests/{req.id}/approve",
        headers=bearer,
        data={FIELD: c.code("appr2")},
        follow_redirects=False,
    )
    c.clock.advance(30)
    assert r.status_code == 303 and status_of(c, req.id) == "approved"


def test_a_replayed_code_does_not_step_up(c: Console) -> None:
    stale = signed_in(c, "appr")
    c.clock.advance(STALE)
    req = c.request(["cobas-1"], "replay")
    # the person signs in elsewhere with the code of this time step ...
    code = c.code("appr")
    r = client(c).post(
        "/console/login", data={"username": "appr", "password": PASSWORD, "totp": code}
    )
    assert r.status_code == 200 or r.status_code == 303
    # ... and the same code, sent again as a step-up, is refused: nothing is done
    csrf = csrf_of(stale)
    r = stale.post(
        f"/console/requests/{req.id}/approve",
        data={"csrf": csrf, FIELD: code},
        follow_redirects=False,
    )
    assert is_step_up_form(r) and 'data-key="stepup.wrong"' in r.text
    assert c.emitter.of_type("user.mfa_failed")[-1].record["EventResultDetails"] == "replayed"
    assert status_of(c, req.id) == "pending"
    c.clock.advance(30)


def test_a_step_up_holds_on_another_replica(c: Console, home: Path) -> None:
    """The step-up is on the token's row: a second broker app over the same database
    (another replica) lets the action through without asking again."""
    # another replica: its own services and app over the same database and keys
    services = Services.build(c.services.ctx)
    other_app = create_app(BrokerSettings(data_dir=home / "replica-b"), services=services)
    here = signed_in(c, "appr")
    c.clock.advance(STALE)
    there = client(c, app=other_app)
    there.cookies.set("hoshu_session", here.cookies["hoshu_session"])
    req = c.request(["cobas-1"], "two replicas")
    csrf = csrf_of(here)
    first = c.request(["cobas-1"], "step up here")
    r = here.post(
        f"/console/requests/{first.id}/approve",
        data={"csrf": csrf, FIELD: c.code("appr")},
        follow_redirects=False,
    )
    c.clock.advance(30)
    assert r.status_code == 303
    r = there.post(
        f"/console/requests/{req.id}/approve", data={"csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303 and status_of(c, req.id) == "approved"
    appr = user(c, "appr")
    with c.services.ctx.uow() as tx:
        tokens = [t for t in tx.find(Token, user_id=appr.id) if t.stepped_up_at]
    assert tokens, "the step-up is kept in the database"


def test_wrong_step_up_codes_lock_the_account_and_end_the_session(c: Console) -> None:
    new_person(c, "lockme", ["approver"])
    http = signed_in(c, "lockme")
    c.clock.advance(STALE)
    req = c.request(["cobas-1"], "lock by step-up")
    csrf = csrf_of(http)
    for _ in range(c.services.ctx.config.lockout_failures):
        r = http.post(
            f"/console/requests/{req.id}/approve",
            data={"csrf": csrf, FIELD: "000000"},
            follow_redirects=False,
        )
    assert r.status_code == 303 and r.headers["location"] == "/console/login?m=locked_out"
    assert "locked for up to 15 minutes" in client(c).get(r.headers["location"]).text
    assert c.emitter.of_type("user.locked_out")[-1].record["ActorUsername"] == "lockme"
    assert status_of(c, req.id) == "pending"
    # the session is over, even with the right code now
    r = http.post(
        f"/console/requests/{req.id}/approve",
        data={"csrf": csrf, FIELD: c.code("lockme")},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "/console/login" in r.headers["location"]
    assert status_of(c, req.id) == "pending"
