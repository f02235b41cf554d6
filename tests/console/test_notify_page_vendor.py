"""A vendor's own admin sets, on the notifications page, who of the vendor is told of
decisions and of grants about to end; no one else may.

Over HTTP (no browser): the vendor admin of acme-labs finds the page from the console's
navigation, sees the vendor's wording (what its people are told of, no hospital kinds)
and saves a support desk address, a Teams URL and a webhook; the change is the API's
``admin.change`` with no address, URL or key in it.  The forgotten paths, each refused
with 403, ``admin.refused`` and nothing changed (console form, API read and API write):
another vendor's admin, the hospital's admin and an engineer of the vendor itself.
Then an approval's mail goes to the engineer who asked and to the vendor's desk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from audit.emitter import FanOut
from audit.testing import CapturingEmitter
from broker.access.model import User
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.console.notify import Channels, Notifier, load_channels, save_channels
from broker.settings import BrokerSettings
from broker.store.db import Store
from broker.store.tables import NOTIFICATION_OUTBOX
from tests.console.conftest import (
    CSRF,
    Console,
    bearer,
    beyond_lang_links,
    csrf_of,
    signed_in,
    site,
)
from tests.control.conftest import T0, build_world, make_context
from tests.support import FakeClock

PAGE = "/console/admin/notifications"
FORM = f"{PAGE}/acme-labs"
API = "/v1/notifications/acme-labs"
DESK = "support-desk@acme.example.jp"


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with site(tmp_path_factory.mktemp("console-notify-vendor")) as console:
        w = console.world
        w.add_user("vadmin", w.vendor, ["vendor_admin"])
        platform = w.s.people.org_of(w.admin.org_id)
        assert platform is not None
        beta = w.s.people.create_org(w.admin, "beta-labs", "vendor")
        w.add_user("beta-admin", beta, ["vendor_admin"])
        yield console


@pytest.fixture(autouse=True)
def _next_step(c: Console) -> None:
    """Each test starts at a TOTP step of its own (a code is accepted once)."""
    c.clock.advance(30)


def _saved(c: Console) -> Channels | None:
    return load_channels(c.app.state.notification_store, c.world.vendor.id)


def _form(csrf: str, **more: str) -> dict[str, str]:
    return {
        "csrf": csrf,
        "email": "on",
        "emails": DESK,
        "teams_url": "https://acme.webhook.office.com/webhookb2/acme/IncomingWebhook/zz99",
        "webhook_url": "https://hooks.acme.example.jp/hoshu",
        **more,
    }


def test_the_vendors_admin_sets_who_of_the_vendor_is_told(c: Console) -> None:
    http = signed_in(c, "vadmin", "en")
    home = http.get("/console/").text
    assert 'href="/console/admin/notifications"' in home
    page = http.get(PAGE)
    assert page.status_code == 200, page.text[:300]
    assert "<h2>acme-labs</h2>" in page.text and "Your people are told of" in page.text
    assert "A request denied" in page.text and "Your approvers are told of" not in page.text
    assert "hoshi-hospital" not in page.text and 'id="admin-nav"' not in page.text
    csrf = CSRF.search(page.text)
    assert csrf
    c.emitter.clear()
    r = http.post(FORM, data=_form(csrf.group(1)), follow_redirects=False)
    assert r.status_code == 303, r.text[:400]
    saved = _saved(c)
    assert saved is not None and saved.emails == (DESK,)
    assert saved.webhook_url == "https://hooks.acme.example.jp/hoshu"
    [change] = c.emitter.of_type("admin.change")
    assert change.get("ObjectType") == "notification_settings"
    assert change.get("Object") == c.world.vendor.id
    assert DESK not in change.to_json() and "webhook.office" not in change.to_json()
    shown = http.get(PAGE).text
    assert DESK in shown and "webhookb2" not in shown and "acme.webhook.office.com …zz99" in shown
    api = TestClient(c.app).get(API, headers=bearer(c, "vadmin"))
    assert api.status_code == 200 and api.json()["emails"] == [DESK]
    # the vendor admin's own organisation only: a hospital's settings are refused
    assert (
        TestClient(c.app)
        .get("/v1/notifications/hoshi-hospital", headers=bearer(c, "vadmin"))
        .status_code
        == 403
    )


@pytest.mark.parametrize("who", ["beta-admin", "hadmin", "eng"])
def test_only_that_vendors_admin_reads_or_changes_its_notifications(c: Console, who: str) -> None:
    before = _saved(c)
    http = signed_in(c, who, "en")
    refusals = len(c.emitter.of_type("admin.refused"))
    page = http.get(f"{PAGE}?org=acme-labs")
    if page.status_code == 200:  # their own organisation's page, never acme's
        assert "acme-labs" not in beyond_lang_links(page.text)
    else:
        assert page.status_code == 403
    csrf = csrf_of(http, "/console/account")
    evil = _form(csrf, emails="attacker@evil.example", webhook_url="https://evil.example/x")
    r = http.post(FORM, data=evil, follow_redirects=False)
    assert r.status_code == 403, (who, r.status_code, r.text[:300])
    api = TestClient(c.app, raise_server_exceptions=False)
    token = bearer(c, who)
    assert api.get(API, headers=token).status_code == 403
    body = {"emails": ["attacker@evil.example"], "webhook_url": "https://evil.example/x"}
    assert api.put(API, json=body, headers=token).status_code == 403
    assert len(c.emitter.of_type("admin.refused")) >= refusals + 3, who
    assert _saved(c) == before  # nothing changed


def test_an_approval_is_mailed_to_the_engineer_and_the_vendors_desk(tmp_path: Path) -> None:
    """The decision's message goes to the engineer who asked and to the vendor's further
    addresses (its support desk), once per channel; the hospital's desk is not told."""
    settings = BrokerSettings(
        data_dir=tmp_path / "data",
        smtp_host="127.0.0.1",  # never reached: the outbox is what is looked at
        smtp_security="none",
        smtp_from="hoshu@broker.example.jp",
        public_api_url="https://hoshu.example.jp",
    )
    notifier = Notifier(settings)
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}")
    clock = FakeClock(T0)
    services = Services.build(make_context(store, FanOut([CapturingEmitter(), notifier]), clock))
    w = build_world(services, clock)
    notifier.bind(services, CapturingEmitter(), store.engine)
    try:
        with services.ctx.uow() as tx:
            eng = tx.one(User, name="eng")
            assert eng is not None
            eng.email = "eng@acme.example.jp"
            tx.save(eng)
        save_channels(store.engine, w.vendor.id, Channels(emails=(DESK,)), T0)
        save_channels(store.engine, w.hospital.id, Channels(emails=("lab@hoshi.example.jp",)), T0)
        req = services.requests.create(w.actors["eng"], NewRequest(["cobas-1"], 600, "校正"))
        notifier.write_incoming()
        services.requests.approve(w.actors["appr"], req.id)
        notifier.write_incoming()
        with store.engine.connect() as conn:
            rows: list[Any] = list(
                conn.execute(
                    sa.select(NOTIFICATION_OUTBOX).where(
                        NOTIFICATION_OUTBOX.c.kind == "grant.created"
                    )
                ).mappings()
            )
        [row] = rows
        assert row["channel"] == "email" and row["org_id"] == w.vendor.id
        assert sorted(row["target"]) == ["eng@acme.example.jp", DESK]
        assert "lab@hoshi.example.jp" not in row["target"]
    finally:
        store.close()
