"""The notifications page and ``/v1/notifications``: only the hospital's own admin (or a
platform admin) reads or changes who is told what.

Over HTTP (no browser): the hospital's admin sees the page and saves it with CSRF; the
change is the API's ``admin.change`` with no URL, address or key in it; the webhook key
is stored sealed, never shown again (not on the page, not in the API's answer), and an
empty key field keeps it.  The forgotten paths, each refused with ``admin.refused`` and
nothing changed: another hospital's admin, an approver, an engineer and an auditor (page,
form and API), a bearer token of another hospital's admin, a read-only token of the
hospital's own admin, a form without its CSRF token and one from a foreign Origin; bad
input (a plain-http URL, a short key, an unknown kind) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.access.model import User
from broker.console.notify import load_channels
from tests.console.conftest import (
    CSRF,
    Console,
    bearer,
    beyond_lang_links,
    csrf_of,
    signed_in,
    site,
)
from tests.control.apihelp import session_token

PAGE = "/console/admin/notifications"
FORM = f"{PAGE}/hoshi-hospital"
API = "/v1/notifications/hoshi-hospital"
KEY = "k3y-for-the-lab-hook-0001"


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with site(tmp_path_factory.mktemp("console-notify")) as console:
        console.world.add_user("tsuki-admin", console.world.other_hospital, ["hospital_admin"])
        console.world.add_user("aud2", console.world.hospital, ["auditor"])
        yield console


def _form(csrf: str, **more: str) -> dict[str, str]:
    return {
        "csrf": csrf,
        "kind.request.created": "on",
        "kind.session.started": "on",
        "email": "on",
        "emails": "lab-office@hoshi.example.jp",
        "webhook_url": "https://hooks.hoshi.example.jp/hoshu",
        **more,
    }


def _settings(c: Console) -> object:
    return load_channels(c.app.state.notification_store, c.world.hospital.id)


def _refusals(c: Console) -> int:
    return len(c.emitter.of_type("admin.refused"))


def test_the_hospital_admin_sets_what_is_told_and_the_key_is_never_shown(c: Console) -> None:
    http = signed_in(c, "hadmin", "en")
    page = http.get(PAGE)
    assert page.status_code == 200 and "Your approvers are told of" in page.text
    csrf = CSRF.search(page.text)
    assert csrf
    c.emitter.clear()
    r = http.post(FORM, data=_form(csrf.group(1), webhook_secret=KEY), follow_redirects=False)
    assert r.status_code == 303, r.text
    chosen = load_channels(c.app.state.notification_store, c.world.hospital.id)
    assert chosen is not None
    assert chosen.kinds == ("request.created", "session.started")
    assert chosen.emails == ("lab-office@hoshi.example.jp",)
    assert chosen.webhook_secret and KEY not in chosen.webhook_secret  # sealed
    assert c.services.ctx.secrets.open(chosen.webhook_secret) == KEY
    [change] = c.emitter.of_type("admin.change")
    assert change.get("ObjectType") == "notification_settings"
    text = change.to_json()
    assert "hooks.hoshi" not in text and KEY not in text and "lab-office" not in text
    assert change.details["changes"]["webhook_key"] == "set"
    shown = http.get(PAGE)
    assert KEY not in shown.text and 'data-set="yes"' in shown.text
    assert "have been saved" in http.get(r.headers["location"]).text
    api = TestClient(c.app, raise_server_exceptions=False).get(API, headers=bearer(c, "hadmin"))
    assert api.status_code == 200, api.text
    assert api.json()["webhook_secret_set"] is True and KEY not in api.text
    assert api.json()["kinds"] == ["request.created", "session.started"]
    # saved again with the key field empty: the stored key stays
    again = _form(CSRF.search(shown.text).group(1))  # type: ignore[union-attr]
    assert http.post(FORM, data=again, follow_redirects=False).status_code == 303
    kept = load_channels(c.app.state.notification_store, c.world.hospital.id)
    assert kept is not None and kept.webhook_secret == chosen.webhook_secret


@pytest.mark.parametrize("who", ["tsuki-admin", "appr", "eng", "aud2"])
def test_no_one_else_reads_or_changes_the_hospitals_notifications(c: Console, who: str) -> None:
    before = _settings(c)
    http = signed_in(c, who, "en")
    n = _refusals(c)
    page = http.get(PAGE)
    if who == "tsuki-admin":  # their own hospital's page, never hoshi's
        assert page.status_code == 200 and "hoshi-hospital" not in page.text
        asked = http.get(f"{PAGE}?org=hoshi-hospital").text
        assert beyond_lang_links(asked).count("hoshi-hospital") == 0
        csrf = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    else:
        assert page.status_code == 403
        csrf = csrf_of(http, "/console/account")
    r = http.post(FORM, data=_form(csrf, webhook_url="https://evil.example/x"))
    assert r.status_code in (403, 404), (who, r.status_code)
    api = TestClient(c.app, raise_server_exceptions=False)
    token = bearer(c, who)
    assert api.get(API, headers=token).status_code in (403, 404)
    body = {"webhook_url": "https://evil.example/x", "webhook_secret": "x" * 20}
    assert api.put(API, json=body, headers=token).status_code in (403, 404)
    assert _refusals(c) >= n + 3, who
    assert _settings(c) == before  # nothing changed


def test_a_form_without_csrf_from_another_origin_or_with_bad_input_changes_nothing(
    c: Console,
) -> None:
    before = _settings(c)
    http = signed_in(c, "hadmin", "en")
    csrf = csrf_of(http, PAGE)
    evil = "https://evil.example/x"
    assert http.post(FORM, data=_form("", webhook_url=evil)).status_code == 403
    foreign = http.post(
        FORM, data=_form(csrf, webhook_url=evil), headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    plain = http.post(FORM, data=_form(csrf, webhook_url="http://hooks.hoshi.example.jp/x"))
    assert plain.status_code == 422 and "https://" in plain.text
    short = http.post(FORM, data=_form(csrf, webhook_secret="short"))
    assert short.status_code == 422
    assert _settings(c) == before


def test_a_read_only_token_of_the_hospitals_own_admin_cannot_change_them(c: Console) -> None:
    """A token without the admin scope (an API token for reading) shows but never sets."""
    before = _settings(c)
    with c.services.ctx.uow() as tx:
        user = tx.one(User, name="hadmin")
    assert user is not None
    read_only = {"Authorization": f"Bearer {session_token(c.services, user, ['read'])}"}
    api = TestClient(c.app, raise_server_exceptions=False)
    assert api.get(API, headers=read_only).status_code == 200
    n = _refusals(c)
    body = {"webhook_url": "https://evil.example/x", "webhook_secret": "y" * 20}
    assert api.put(API, json=body, headers=read_only).status_code == 403
    assert _refusals(c) == n + 1
    assert _settings(c) == before


def test_a_platform_admin_sets_a_hospitals_key_over_the_api_and_it_never_comes_back(
    c: Console,
) -> None:
    platform = c.services.people.org_of(c.world.admin.org_id)
    assert platform is not None
    c.world.add_user("padmin", platform, ["platform_admin"])
    api = TestClient(c.app, raise_server_exceptions=False)
    token = bearer(c, "padmin")
    path = "/v1/notifications/tsuki-hospital"
    key = "tsuki-hook-key-0123456789"
    bad = api.put(path, json={"kinds": ["request.created", "patient.data"]}, headers=token)
    assert bad.status_code == 422
    body = {"webhook_url": "https://hooks.tsuki.example.jp/h", "webhook_secret": key}
    r = api.put(path, json={**body, "kinds": ["emergency.started"]}, headers=token)
    assert r.status_code == 200, r.text
    shown = api.get(path, headers=token)
    assert shown.json()["webhook_secret_set"] is True and shown.json()["kinds"] == [
        "emergency.started"
    ]
    assert key not in r.text and key not in shown.text
    cleared = api.put(path, json={"clear_webhook_secret": True}, headers=token)
    assert cleared.json()["webhook_secret_set"] is False


def test_when_a_step_up_is_due_the_form_asks_the_code_itself_and_the_key_goes_once(
    c: Console,
) -> None:
    http = signed_in(c, "hadmin", "en")
    c.clock.advance(6 * 60)  # the sign-in's confirmation is older than five minutes
    page = http.get(PAGE)
    assert 'name="stepup_totp"' in page.text
    csrf = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    key = "a-second-key-for-the-hook-42"
    sent = _form(csrf, webhook_secret=key, stepup_totp=c.code("hadmin"))
    r = http.post(FORM, data=sent, follow_redirects=False)
    c.clock.advance(30)  # that code is used: the next sign-in gets the next one
    assert r.status_code == 303, r.text  # saved at once: no step-up page carrying the key
    chosen = load_channels(c.app.state.notification_store, c.world.hospital.id)
    assert chosen is not None and c.services.ctx.secrets.open(chosen.webhook_secret) == key
    assert 'name="stepup_totp"' not in http.get(PAGE).text  # fresh again


def test_plain_http_webhooks_are_refused_unless_the_broker_allows_them(
    c: Console, tmp_path: Path
) -> None:
    """https:// only: plain http://, loopback included, is 422 on the page and the API and
    changes nothing; a broker started with HOSHU_NOTIFY_ALLOW_HTTP (a lab) takes it."""
    before = _settings(c)
    http = signed_in(c, "hadmin", "en")
    csrf = csrf_of(http, PAGE)
    loopback = "http://127.0.0.1:8080/hoshu"
    assert http.post(FORM, data=_form(csrf, webhook_url=loopback)).status_code == 422
    api = TestClient(c.app, raise_server_exceptions=False)
    assert (
        api.put(API, json={"webhook_url": loopback}, headers=bearer(c, "hadmin")).status_code == 422
    )
    assert _settings(c) == before
    with site(tmp_path, notify_allow_http=True) as lab:
        token = bearer(lab, "hadmin")
        r = TestClient(lab.app).put(API, json={"webhook_url": loopback}, headers=token)
        assert r.status_code == 200 and r.json()["webhook_url"] == loopback
