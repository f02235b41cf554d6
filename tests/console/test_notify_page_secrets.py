"""No secret of the notifications form is ever written back into a page.

Over HTTP (no browser), as the hospital's admin whose sign-in is older than five minutes
(a step-up is due): a wrong code typed on the form brings the step-up page, and neither
the webhook key nor the Teams URL is anywhere in its HTML (they ride along sealed, bound
to the session, the action and the path); the right code on that page makes the change
the admin first asked for.  The sealed fields are refused (403, ``admin.refused``,
nothing changed) when another session sends them, and when they are older than five
minutes.  The Teams URL, a bearer credential, is shown only as its host and last four
characters, on the page and in the API's answer; an empty field keeps it, a box removes
it.  The same holds for a person's password on the people page's step-up.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from broker.console.notify import Channels, load_channels, open_teams_url, save_channels
from broker.store.tables import NOTIFICATION_SETTINGS
from tests.console.conftest import CSRF, Console, csrf_of, signed_in, site
from tests.control.conftest import PASSWORD

HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
PAGE = "/console/admin/notifications"
FORM = f"{PAGE}/hoshi-hospital"
API = "/v1/notifications/hoshi-hospital"
KEY = "s3cret-hmac-key-of-the-lab-7781"
TEAMS = "https://hoshi.webhook.office.com/webhookb2/0c1d-4e7f@a9/IncomingWebhook/f00dTk9Q"


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with site(tmp_path_factory.mktemp("console-notify-secrets")) as console:
        yield console


@pytest.fixture(autouse=True)
def _next_step(c: Console) -> None:
    """Each test starts at a TOTP step of its own (a code is accepted once)."""
    c.clock.advance(30)


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def _stale_form(c: Console, http: TestClient, **fields: str) -> dict[str, str]:
    """The form as sent with a step-up due (the sign-in is six minutes old)."""
    c.clock.advance(6 * 60)
    page = http.get(PAGE)
    assert 'name="stepup_totp"' in page.text
    csrf = CSRF.search(page.text)
    assert csrf
    return {
        "csrf": csrf.group(1),
        "kind.request.created": "on",
        "email": "on",
        "webhook_url": "https://hooks.hoshi.example.jp/hoshu",
        "webhook_secret": KEY,
        "teams_url": TEAMS,
        **fields,
    }


def _saved(c: Console) -> Channels | None:
    return load_channels(c.app.state.notification_store, c.world.hospital.id)


def _teams(c: Console) -> str:
    """The Teams URL the stored (sealed) value opens to."""
    return open_teams_url(c.services.ctx.secrets, (_saved(c) or Channels()).teams_url)


def _raw_teams(c: Console) -> str:
    """The settings row's Teams column as the database holds it."""
    engine = c.app.state.notification_store
    with engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(NOTIFICATION_SETTINGS.c.teams_url).where(
                    NOTIFICATION_SETTINGS.c.org_id == c.world.hospital.id
                )
            ).scalar_one()
        )


def _step_up_page(c: Console, http: TestClient) -> str:
    """Send the form with a wrong code: the step-up page's HTML."""
    sent = _stale_form(c, http, stepup_totp=_wrong(c.code("hadmin")))
    r = http.post(FORM, data=sent, follow_redirects=False)
    assert r.status_code == 403 and 'id="stepup-form"' in r.text, r.text[:400]
    return str(r.text)


def test_a_wrong_code_on_the_form_never_echoes_the_key_or_the_teams_url(c: Console) -> None:
    before = _saved(c)
    http = signed_in(c, "hadmin", "en")
    text = _step_up_page(c, http)
    for secret in (KEY, TEAMS, html.escape(TEAMS), "f00dTk9Q", "webhookb2"):
        assert secret not in text
    assert 'data-key="stepup.wrong"' in text
    hidden = dict((k, html.unescape(v)) for k, v in HIDDEN.findall(text))
    assert "webhook_secret" not in hidden and "teams_url" not in hidden
    assert hidden["webhook_url"] == "https://hooks.hoshi.example.jp/hoshu"
    assert hidden["stepup_sealed"]  # the secrets, sealed
    assert _saved(c) == before  # nothing done yet
    # the right code on the step-up page: the change first asked for is made
    c.clock.advance(30)
    r = http.post(FORM, data={**hidden, "stepup_totp": c.code("hadmin")}, follow_redirects=False)
    assert r.status_code == 303, r.text[:400]
    saved = _saved(c)
    assert saved is not None and _teams(c) == TEAMS
    assert c.services.ctx.secrets.open(saved.webhook_secret) == KEY
    change = c.emitter.of_type("admin.change")[-1]
    assert KEY not in change.to_json() and "webhook.office" not in change.to_json()


def test_the_sealed_fields_of_another_session_or_too_old_are_refused(c: Console) -> None:
    http = signed_in(c, "hadmin", "en")
    hidden = dict((k, html.unescape(v)) for k, v in HIDDEN.findall(_step_up_page(c, http)))
    before = _saved(c)
    # another sign-in of the same admin (a stolen form replayed elsewhere) cannot open it
    c.clock.advance(30)  # a code was tried at this step: the sign-in needs the next
    other = signed_in(c, "hadmin", "en")
    csrf = CSRF.search(other.get("/console/account").text)
    assert csrf
    refused = len(c.emitter.of_type("admin.refused"))
    theirs = {**hidden, "csrf": csrf.group(1), "stepup_totp": c.code("hadmin")}
    r = other.post(FORM, data=theirs, follow_redirects=False)
    assert r.status_code == 403 and "fill in the form again" in r.text
    assert len(c.emitter.of_type("admin.refused")) == refused + 1
    assert c.emitter.of_type("admin.refused")[-1].get("EventResultDetails") == (
        "stepup_form_expired"
    )
    assert _saved(c) == before
    # its own session, six minutes later: too old
    c.clock.advance(6 * 60)
    r = http.post(FORM, data={**hidden, "stepup_totp": c.code("hadmin")}, follow_redirects=False)
    assert r.status_code == 403 and "fill in the form again" in r.text
    assert _saved(c) == before


def test_the_teams_url_is_shown_only_as_host_and_last_four_and_an_empty_field_keeps_it(
    c: Console,
) -> None:
    http = signed_in(c, "hadmin", "en")
    csrf = csrf_of(http, PAGE)
    form = {"csrf": csrf, "email": "on", "teams_url": TEAMS}
    assert http.post(FORM, data=form, follow_redirects=False).status_code == 303
    page = http.get(PAGE).text
    assert TEAMS not in page and "webhookb2" not in page
    assert "hoshi.webhook.office.com …Tk9Q" in page and 'data-set="yes"' in page
    issued = c.services.auth.login("hadmin", PASSWORD, c.code("hadmin"), "127.0.0.1")
    c.clock.advance(30)
    api = TestClient(c.app).get(API, headers={"Authorization": f"Bearer {issued.token}"})
    assert api.status_code == 200 and "webhookb2" not in api.text
    assert api.json()["teams_url_set"] is True
    assert api.json()["teams_url_shown"] == "hoshi.webhook.office.com …Tk9Q"
    # saved again with the field empty: kept; with the box: removed
    csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
    assert http.post(FORM, data={"csrf": csrf, "email": "on"}).status_code == 200
    assert _teams(c) == TEAMS
    gone = {"csrf": csrf, "email": "on", "clear_teams_url": "on"}
    assert http.post(FORM, data=gone, follow_redirects=False).status_code == 303
    assert (_saved(c) or Channels()).teams_url == ""
    assert c.emitter.of_type("admin.change")[-1].details["changes"]["teams_url"] == "removed"


def test_the_teams_url_is_stored_sealed_and_one_stored_in_the_clear_is_sealed_when_saved(
    c: Console,
) -> None:
    http = signed_in(c, "hadmin", "en")
    csrf = csrf_of(http, PAGE)
    form = {"csrf": csrf, "email": "on", "teams_url": TEAMS}
    assert http.post(FORM, data=form, follow_redirects=False).status_code == 303
    stored = _raw_teams(c)
    assert stored and "webhook" not in stored and "Tk9Q" not in stored
    assert _teams(c) == TEAMS
    # a URL an earlier version stored in the clear is still shown and used ...
    engine = c.app.state.notification_store
    with engine.begin() as conn:
        conn.execute(
            NOTIFICATION_SETTINGS.update()
            .where(NOTIFICATION_SETTINGS.c.org_id == c.world.hospital.id)
            .values(teams_url=TEAMS)
        )
    page = http.get(PAGE).text
    assert "hoshi.webhook.office.com …Tk9Q" in page and TEAMS not in page
    # ... and sealed the next time the settings are saved with the field empty (kept)
    csrf = CSRF.search(page).group(1)  # type: ignore[union-attr]
    assert http.post(FORM, data={"csrf": csrf, "email": "on"}).status_code == 200
    assert "webhook" not in _raw_teams(c) and _teams(c) == TEAMS


def test_a_teams_url_is_not_stored_without_a_box_to_seal_it(c: Console) -> None:
    engine = c.app.state.notification_store
    before = _raw_teams(c) if _saved(c) else None
    with pytest.raises(ValueError, match="only sealed"):
        save_channels(engine, c.world.hospital.id, Channels(teams_url=TEAMS), c.clock())
    assert (_raw_teams(c) if _saved(c) else None) == before


def test_a_new_persons_password_is_not_echoed_by_the_step_up_page_either(c: Console) -> None:
    http = signed_in(c, "hadmin", "en")
    c.clock.advance(6 * 60)  # a step-up is due
    csrf = csrf_of(http, "/console/admin/people")
    password = "Tsuki-no-Usagi-2026-lab!"
    form = {
        "csrf": csrf,
        "name": "newaud",
        "full_name": "New Auditor",
        "org": "hoshi-hospital",
        "role_auditor": "on",
        "password": password,
    }
    r = http.post("/console/admin/people", data=form, follow_redirects=False)
    assert r.status_code == 403 and 'id="stepup-form"' in r.text
    assert password not in r.text
    hidden = dict((k, html.unescape(v)) for k, v in HIDDEN.findall(r.text))
    assert "password" not in hidden and hidden["name"] == "newaud"
    c.clock.advance(30)
    done = http.post(
        "/console/admin/people",
        data={**hidden, "stepup_totp": c.code("hadmin")},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text[:400]
    c.clock.advance(30)
    assert c.services.auth.login("newaud", password, None, "127.0.0.1").token  # the password
