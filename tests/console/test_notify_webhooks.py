# ruff: noqa: F811  (pytest fixtures imported from other modules are parameters here)
"""Webhook channels and several replicas, through the durable outbox.

A local webhook receiver (``http.server`` on 127.0.0.1) checks the HMAC-SHA256
signature of the generic JSON webhook as docs/admin.md tells a receiver to, and
takes the Microsoft Teams MessageCard; the first call fails (503) and the message
comes again.  A forged signature is what the receiver would refuse.  Two notifiers
(two replicas) over one database, SQLite and PostgreSQL, deliver each message once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from broker.console.notify import Channels, Notifier, check_webhook_url, save_channels
from broker.settings import BrokerSettings
from broker.store.db import Store
from broker.store.tables import NOTIFICATION_OUTBOX as OUTBOX
from broker.store.tables import NOTIFICATION_SETTINGS
from tests.console.conftest import Inbox, site
from tests.control.conftest import (  # noqa: F401 (fixtures)
    PASSWORD,
    T0,
    build_world,
    db_url,
    make_context,
    pg_control_url,
    sqlite_template,
)
from tests.support import FakeClock, poll_sync

SECRET = b"a-webhook-signing-key-of-32-bytes!"


@dataclass
class Receiver:
    """What the webhook receiver got: (path, headers, body, signature valid)."""

    calls: list[tuple[str, dict[str, str], bytes, bool]] = field(default_factory=list)
    fail_first: int = 0
    url: str = ""


def verify(secret: bytes, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check (docs/admin.md): HMAC-SHA256 over "<timestamp>.<body>"."""
    ts = headers.get("x-hoshu-timestamp", "")
    sent = headers.get("x-hoshu-signature", "")
    expected = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = ts.isdigit() and abs(datetime.now(UTC).timestamp() - int(ts)) < 300
    return fresh and hmac.compare_digest(sent, expected)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = min(int(self.headers.get("Content-Length", "0")), 1 << 20)
            body = self.rfile.read(size)
            headers = {k.lower(): v for k, v in self.headers.items()}
            got.calls.append((self.path, headers, body, verify(SECRET, headers, body)))
            failing = len(got.calls) <= got.fail_first
            self.send_response(503 if failing else 204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    got.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()


def replica(tmp: Path, url: str, store: Store | None, port: int, events: CapturingEmitter) -> Any:
    tmp.mkdir(parents=True, exist_ok=True)
    secret = tmp / "webhook.key"
    secret.write_bytes(SECRET + b"\n")
    settings = BrokerSettings(
        data_dir=tmp / "data",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_from="hoshu@broker.example.jp",
        public_api_url="https://hoshu.example.jp",
        notify_poll_s=0.05,
        notify_backoff_max_s=1,
        notify_webhook_secret_file=secret,
        notify_allow_http=True,  # the receivers here are plain http on loopback
    )
    return Notifier(settings), store or Store(url)


def test_teams_and_signed_json_webhooks_are_delivered_and_retried(
    tmp_path: Path, receiver: Receiver, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    events = CapturingEmitter()
    notifier, store = replica(tmp_path, f"sqlite:///{tmp_path / 'hoshu.db'}", None, port, events)
    clock = FakeClock(T0)
    services = Services.build(make_context(store, FanOut([events, notifier]), clock))
    w = build_world(services, clock)
    save_channels(
        store.engine,
        w.hospital.id,
        Channels(
            email=False,
            teams_url=receiver.url + "/teams",
            webhook_url=receiver.url + "/hook",
        ),
        clock(),
        allow_http=True,
        box=services.ctx.secrets,
    )
    receiver.fail_first = 1  # the first call (whichever) is refused: it comes again
    notifier.bind(services, events, store.engine)
    notifier.start()
    try:
        req = services.requests.create(
            w.actors["eng"], NewRequest(["cobas-1"], 3600, "patient 4711 <secret>")
        )
        poll_sync(lambda: len(events.of_type("notification.sent")) >= 2, 15, "both webhooks")
        paths = [p for p, *_ in receiver.calls]
        assert sorted(set(paths)) == ["/hook", "/teams"] and len(paths) == 3
        [(_, headers, body, valid)] = [c for c in receiver.calls if c[0] == "/hook"][-1:]
        assert valid and headers["content-type"].startswith("application/json")
        payload = json.loads(body)
        assert payload["type"] == "request.created"
        assert payload["link"] == "https://hoshu.example.jp/console/inbox"
        assert payload["facts"]["request_id"] == req.id
        assert "4711" not in body.decode() and "secret" not in body.decode()
        # a body changed on the way, or another key, does not verify
        assert not verify(SECRET, headers, body.replace(b"cobas-1", b"cobas-2"))
        assert not verify(b"another-key-another-key-another!", headers, body)
        [(_, _, card_body, _)] = [c for c in receiver.calls if c[0] == "/teams"][-1:]
        card = json.loads(card_body)
        assert card["@type"] == "MessageCard" and "cobas-1" in card["title"]
        assert card["potentialAction"][0]["targets"][0]["uri"].endswith("/console/inbox")
        assert inbox.mails == []  # the hospital chose webhooks only
        assert notifier.pending() == 0
        # the Teams URL (a credential) is in neither table in the clear, only sealed
        with store.engine.connect() as conn:
            stored = [
                *conn.execute(sa.select(NOTIFICATION_SETTINGS.c.teams_url)).scalars(),
                *(str(t) for t in conn.execute(sa.select(OUTBOX.c.target)).scalars()),
            ]
        assert stored and not [v for v in stored if "/teams" in v]
    finally:
        notifier.stop()
        store.close()


def test_webhook_urls_must_be_https_unless_the_broker_allows_http(tmp_path: Path) -> None:
    """https:// only; plain http:// (even to loopback) only with HOSHU_NOTIFY_ALLOW_HTTP."""
    assert check_webhook_url("https://example.webhook.office.com/webhookb2/x")
    assert check_webhook_url("http://127.0.0.1:8080/hook", allow_http=True)
    for bad in (
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://hooks.example.jp/x",
        "ftp://127.0.0.1/x",
        "https://u:p@h.example/x",
    ):
        with pytest.raises(ValueError):
            check_webhook_url(bad)
    with pytest.raises(ValueError):
        check_webhook_url("ftp://127.0.0.1/x", allow_http=True)
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}")
    try:
        with pytest.raises(ValueError):
            save_channels(store.engine, "org", Channels(webhook_url="http://x.example/h"), T0)
        with pytest.raises(ValueError):
            save_channels(store.engine, "org", Channels(emails=("a@b.jp, c@d.jp",)), T0)
    finally:
        store.close()


def test_two_replicas_deliver_each_message_once(
    tmp_path: Path,
    db_url: str,
    smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    events = CapturingEmitter()
    one, store = replica(tmp_path / "a", db_url, None, port, events)
    two, _ = replica(tmp_path / "b", db_url, store, port, events)
    clock = FakeClock(T0)
    # both replicas see every event here (one control plane): the outbox makes it one row
    services = Services.build(make_context(store, FanOut([events, one, two]), clock))
    w = build_world(services, clock)
    with services.ctx.uow() as tx:
        user = tx.one(User, name="appr")
        assert user is not None
        user.email = "appr@hoshi.example.jp"
        tx.save(user)
    for n in (one, two):
        n.bind(services, events, store.engine)
        n.start()
    try:
        ids = [
            services.requests.create(
                w.actors["eng"], NewRequest(["cobas-1"], 3600, f"check {i}")
            ).id
            for i in range(8)
        ]
        poll_sync(lambda: len(inbox.mails) >= 8, 20, "eight mails")
        poll_sync(lambda: one.pending() == 0, 10, "the outbox drained")
        bodies = [m.get_body().get_content() for _, m in inbox.mails]  # type: ignore[union-attr]
        assert len(inbox.mails) == 8
        assert sorted(next(i for i in ids if i in b) for b in bodies) == sorted(ids)
        assert len(events.of_type("notification.sent")) == 8
    finally:
        one.stop()
        two.stop()
        store.close()


def test_only_the_organisations_admin_sets_its_channels_through_the_api(tmp_path: Path) -> None:
    with site(tmp_path) as c:
        store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}")
        c.app.state.notification_store = store.engine
        platform = c.services.people.org_of(c.world.admin.org_id)
        assert platform is not None
        c.world.add_user("padmin", platform, ["platform_admin"])
        c.world.add_user("tsuki-admin", c.world.other_hospital, ["hospital_admin"])
        http = TestClient(c.app, raise_server_exceptions=False)

        def as_(who: str) -> dict[str, str]:
            issued = c.services.auth.login(who, PASSWORD, c.code(who), "127.0.0.1")
            c.clock.advance(30)
            return {"Authorization": f"Bearer {issued.token}"}

        body = {"email": True, "emails": ["lab@hoshi.example.jp"], "teams_url": ""}
        body["webhook_url"] = "https://hooks.hoshi.example.jp/hoshu"
        path = "/v1/notifications/hoshi-hospital"
        for who in ("tsuki-admin", "appr", "eng", "aud"):
            before = len(c.emitter.of_type("admin.refused"))
            r = http.put(path, json=body, headers=as_(who))
            assert r.status_code == 403, (who, r.status_code)
            assert len(c.emitter.of_type("admin.refused")) == before + 1, who
        assert http.get(path, headers=as_("hadmin")).json()["set"] is False
        bad = {**body, "webhook_url": "http://hooks.hoshi.example.jp/plain"}
        assert http.put(path, json=bad, headers=as_("hadmin")).status_code == 422
        r = http.put(path, json=body, headers=as_("hadmin"))
        assert r.status_code == 200 and r.json()["set"] is True
        shown = http.get(path, headers=as_("hadmin")).json()
        assert shown["emails"] == ["lab@hoshi.example.jp"]
        assert shown["webhook_url"] == body["webhook_url"]
        change = c.emitter.of_type("admin.change")[-1]
        assert change.get("ObjectType") == "notification_settings"
        assert "hooks.hoshi" not in change.to_json()  # the URL is not in the event
        r = http.put("/v1/notifications/tsuki-hospital", json=body, headers=as_("padmin"))
        assert r.status_code == 200
        store.close()
