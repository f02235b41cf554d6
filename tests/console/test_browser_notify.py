"""In Debian's Chromium: a hospital's admin changes who is told what, and the next
notification goes to the new targets.

The broker here is the console over a fresh SQLite store whose control plane writes
through the notifier (``FanOut([events, notifier])``, as :func:`broker.assembly` wires
it), with a real SMTP server (aiosmtpd) and a webhook receiver on 127.0.0.1.  The admin
opens the notifications page, adds a shared mailbox, an https:// JSON webhook with a key
of the hospital's own and a Teams URL, and saves; neither the key nor the Teams URL is
on the page afterwards (the URL only as its host and last four characters).  The page's
screenshot, docs/images/console/admin-notifications-{ja,en}.png, is taken then.  The
admin then points the webhook at the plain-http receiver on loopback (this broker
allows http: ``notify_allow_http``, a lab's setting) and an engineer asks for access: the
shared mailbox gets the mail and the receiver gets the webhook, signed with the
hospital's new key (and not with the broker's).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from selenium import webdriver
from selenium.webdriver.common.by import By

from audit.emitter import FanOut
from audit.testing import CapturingEmitter
from broker.access.services import Services
from broker.api.app import create_app
from broker.console.notify import Notifier
from broker.settings import BrokerSettings
from broker.store.db import Store
from tests.console.conftest import Console, screenshot, serving, sign_in, wait_for
from tests.control.conftest import T0, build_world, make_context
from tests.support import FakeClock, free_port, poll_sync

pytestmark = pytest.mark.xdist_group("console-browser-notify")

BROKER_KEY = b"the-broker-s-own-webhook-key-0001"
HOSPITAL_KEY = "hoshi-lab-webhook-key-2026"
MAILBOX = "lab-office@hoshi.example.jp"
SHOWN_HOOK = "https://hooks.hoshi.example.jp/hoshu"  # what the screenshot shows
TEAMS = "https://hoshi.webhook.office.com/webhookb2/5d1c0f/IncomingWebhook/8e2aQk7W"


@dataclass
class Got:
    mails: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    hooks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(mail, EmailMessage)
        self.mails.append((list(envelope.rcpt_tos), mail))
        return "250 OK"


def _signed(key: bytes, headers: dict[str, str], body: bytes) -> bool:
    ts = headers.get("x-hoshu-timestamp", "")
    mac = hmac.new(key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("x-hoshu-signature", ""), "sha256=" + mac)


@pytest.fixture
def receivers() -> Iterator[tuple[Got, int, str]]:
    got = Got()
    port = free_port()
    controller = Controller(got, hostname="127.0.0.1", port=port)
    controller.start()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(min(int(self.headers.get("Content-Length", "0")), 1 << 20))
            got.hooks.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got, port, f"http://127.0.0.1:{server.server_address[1]}/hoshu"
    finally:
        server.shutdown()
        server.server_close()
        controller.stop()


@pytest.fixture
def notifying(tmp_path: Path, receivers: tuple[Got, int, str]) -> Iterator[Console]:
    """The console served with the notifier in its control plane's emitter."""
    _, smtp_port, _ = receivers
    key = tmp_path / "webhook.key"
    key.write_bytes(BROKER_KEY)
    settings = BrokerSettings(
        data_dir=tmp_path / "data",
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_security="none",
        smtp_from="hoshu@broker.example.jp",
        public_api_url="https://hoshu.example.jp",
        notify_poll_s=0.05,
        notify_webhook_secret_file=key,
        notify_allow_http=True,  # the receiver below is plain http on loopback (a lab)
    )
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}")
    events = CapturingEmitter()
    notifier = Notifier(settings)
    clock = FakeClock(T0)
    services = Services.build(make_context(store, FanOut([events, notifier]), clock))
    world = build_world(services, clock)
    app = create_app(settings, services=services)
    app.state.notification_store = store.engine
    notifier.bind(services, events, store.engine)
    notifier.start()
    try:
        with serving(app) as url:
            yield Console(app, url, world, events, clock)
    finally:
        notifier.stop()
        store.close()


def test_an_admin_points_notifications_at_new_targets_and_the_next_one_goes_there(
    notifying: Console, browser: webdriver.Chrome, receivers: tuple[Got, int, str]
) -> None:
    c, b = notifying, browser
    got, _, hook_url = receivers
    sign_in(b, c, "hadmin")
    b.get(f"{c.url}/console/admin/notifications")
    wait_for(b, "#notify-form")
    assert wait_for(b, "#key-state").get_attribute("data-set") == "no"
    emails = b.find_element(By.ID, "n-emails")
    emails.clear()
    emails.send_keys(MAILBOX)
    b.find_element(By.ID, "n-hook").send_keys(SHOWN_HOOK)
    b.find_element(By.ID, "n-key").send_keys(HOSPITAL_KEY)
    b.find_element(By.ID, "n-teams").send_keys(TEAMS)
    c.emitter.clear()
    b.find_element(By.ID, "save-notifications").click()
    wait_for(b, "#notice")
    assert wait_for(b, "#key-state").get_attribute("data-set") == "yes"
    assert wait_for(b, "#teams-state").get_attribute("data-set") == "yes"
    assert HOSPITAL_KEY not in b.page_source  # stored sealed, never shown again
    assert "webhookb2" not in b.page_source and "…Qk7W" in b.page_source
    assert b.find_element(By.ID, "n-key").get_attribute("value") == ""
    assert b.find_element(By.ID, "n-teams").get_attribute("value") == ""
    [change] = c.emitter.of_type("admin.change")
    assert change.get("ActorUsername") == "hadmin" and HOSPITAL_KEY not in change.to_json()
    for lang in ("ja", "en"):
        if b.find_elements(By.ID, f"lang-{lang}"):  # the page shows the other language's link
            b.find_element(By.ID, f"lang-{lang}").click()
        wait_for(b, f"html[lang={lang}]")
        screenshot(b, f"admin-notifications-{lang}")
    # now the lab's receiver (plain http, allowed on this broker); the key kept, Teams gone
    hook = b.find_element(By.ID, "n-hook")
    hook.clear()
    hook.send_keys(hook_url)
    b.find_element(By.ID, "n-clear-teams").click()  # nothing leaves 127.0.0.1 in this test
    b.find_element(By.ID, "save-notifications").click()
    wait_for(b, "#notice")
    assert wait_for(b, "#key-state").get_attribute("data-set") == "yes"
    assert wait_for(b, "#teams-state").get_attribute("data-set") == "no"

    req = c.request(["cobas-1"], "校正のため", ticket="INC-4001")
    poll_sync(lambda: bool(got.hooks) and bool(got.mails), 20, "the mail and the webhook")
    [(headers, body)] = got.hooks
    assert _signed(HOSPITAL_KEY.encode(), headers, body)  # the hospital's new key
    assert not _signed(BROKER_KEY, headers, body)
    sent = json.loads(body)
    assert sent["type"] == "request.created" and sent["facts"]["request_id"] == req.id
    assert sent["link"] == "https://hoshu.example.jp/console/inbox"
    assert "校正のため" not in body.decode()  # the reason is never sent
    [(rcpt, mail)] = got.mails
    assert MAILBOX in rcpt and "/console/inbox" in mail.get_content()
