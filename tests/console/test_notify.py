"""Notifications through the durable outbox, with a real SMTP server (aiosmtpd) and a
local webhook receiver (http.server) on loopback.

A new request produces one mail, to each active approver of that hospital with an
address and to no one else, in Japanese then English, with the console link and
without the request's reason or work plan; ``notification.sent`` is written.
Emergency access tells the approvers at once (and the auditors of its alert); a
decision tells the engineer.  With the mail server down the request is still
created at once and its mail waits in the outbox: started later, even after the
broker was restarted in between, the server receives it, once.  Two replicas over
one database deliver each message once.  Teams and signed JSON webhooks (HMAC
checked by the receiver).  Over STARTTLS with a sign-in, the password comes from its
file and is never logged.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from audit.emitter import FanOut
from audit.testing import CapturingEmitter
from broker.access.model import User
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.assembly import build_broker
from broker.console.notify import Notifier
from broker.settings import BrokerSettings
from broker.store.db import Store
from broker.store.tables import NOTIFICATION_OUTBOX
from tests.console.conftest import Inbox
from tests.control.conftest import T0, World, build_world, make_context
from tests.fixtures.siem import tls_contexts
from tests.support import FakeClock, free_port, poll_sync


def notify_settings(tmp: Path, port: int, **extra: Any) -> BrokerSettings:
    return BrokerSettings(
        data_dir=tmp / "data",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_from="hoshu@broker.example.jp",
        public_api_url="https://hoshu.example.jp",
        notify_poll_s=0.1,
        notify_backoff_max_s=1,
        **extra,
    )


def broker(
    tmp: Path, port: int, url: str = "", **extra: Any
) -> tuple[World, CapturingEmitter, Notifier, Store]:
    notifier = Notifier(notify_settings(tmp, port, **extra))
    store = Store(url or f"sqlite:///{tmp / 'hoshu.db'}")
    events = CapturingEmitter()
    clock = FakeClock(T0)
    services = Services.build(make_context(store, FanOut([events, notifier]), clock))
    world = build_world(services, clock)
    world.add_user("tsuki-appr", world.other_hospital, ["approver"])
    addresses = {
        "appr": "appr@hoshi.example.jp",
        "appr2": "appr2@hoshi.example.jp",
        "hadmin": "hadmin@hoshi.example.jp",
        "tsuki-appr": "appr@tsuki.example.jp",
        "eng": "eng@acme.example.com",
        "aud": "aud@hoshi.example.jp",
    }
    with services.ctx.uow() as tx:
        for name, address in addresses.items():
            user = tx.one(User, name=name)
            assert user is not None
            user.email = address
            tx.save(user)
    notifier.bind(services, events, store.engine)
    notifier.start()
    return world, events, notifier, store


def _request(w: World) -> str:
    new = NewRequest(
        ["cobas-1"],
        3600,
        "secret-reason: 検体番号 12345",
        ticket="INC-9",
        work_plan="plan-text-not-in-mail",
    )
    return w.s.requests.create(w.actors["eng"], new).id


def body_of(mail: EmailMessage) -> str:
    part = mail.get_body()
    assert isinstance(part, EmailMessage)
    content: str = part.get_content()
    return content


def test_a_new_request_mails_each_approver_of_that_hospital(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    w, events, notifier, store = broker(tmp_path, port)
    try:
        request_id = _request(w)
        poll_sync(lambda: events.of_type("notification.sent"), 10, "the notification")
        [(rcpt, mail)] = inbox.mails
        assert sorted(rcpt) == ["appr2@hoshi.example.jp", "appr@hoshi.example.jp"]
        assert mail["From"] == "hoshu@broker.example.jp"
        assert "承認待ち" in mail["Subject"] and "cobas-1" in mail["Subject"]
        body = body_of(mail)
        assert "https://hoshu.example.jp/console/inbox" in body
        assert request_id in body and "Approve or deny" in body
        assert body.index("承認または却下") < body.index("Approve or deny")  # Japanese first
        assert "secret-reason" not in body and "12345" not in body
        assert "plan-text" not in body and "appr@" not in str(mail)
        [sent] = events.of_type("notification.sent")
        assert sent.get("RequestId") == request_id
        assert sent.details == {"about": "request.created", "recipients": 2, "attempts": 1}
        assert notifier.pending() == 0
        # the sent row is kept 30 days, then deleted (its notification.sent event stays)
        assert notifier.forget_sent() == 0
        later = Notifier(
            notify_settings(tmp_path, port), wall=lambda: datetime.now(UTC) + timedelta(days=31)
        )
        later.bind(w.s, events, store.engine)
        assert later.forget_sent() == 1
    finally:
        notifier.stop()
        store.close()


def test_emergency_tells_approvers_at_once_and_auditors_of_its_alert_and_decisions_the_engineer(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    """Emergency access is one mail to the approvers, about the emergency, linking to the
    review page (not also a "request waiting" mail), and one to the hospital's auditor
    about the alert; a denied and an approved request each tell the engineer who asked."""
    inbox, port = smtp
    w, events, notifier, store = broker(tmp_path, port)
    try:
        w.s.estate.update_policy(
            w.actors["hadmin"],
            "hoshi-hospital",
            {"emergency_allowed": True, "emergency_max_duration_s": 1800},
        )
        w.s.grants.start_emergency(w.actors["eng"], NewRequest(["cobas-1"], 1800, "down"))
        poll_sync(lambda: len(inbox.mails) >= 2, 10, "the notifications")
        by_rcpt = {tuple(sorted(r)): m for r, m in inbox.mails}
        mail = by_rcpt[("appr2@hoshi.example.jp", "appr@hoshi.example.jp")]
        assert "緊急アクセス" in mail["Subject"]
        assert "https://hoshu.example.jp/console/emergencies" in body_of(mail)
        alert = by_rcpt[("aud@hoshi.example.jp",)]
        assert "emergency_access" in alert["Subject"] and "down" not in body_of(alert)
        assert "https://hoshu.example.jp/console/audit" in body_of(alert)
        inbox.mails.clear()
        denied = _request(w)
        w.s.requests.deny(w.actors["appr"], denied, "not today <b>")
        approved = _request(w)
        w.s.requests.approve(w.actors["appr"], approved, "")
        poll_sync(
            lambda: len([r for r, _ in inbox.mails if r == ["eng@acme.example.com"]]) >= 2,
            10,
            "the engineer's mails",
        )
        mine = [m for r, m in inbox.mails if r == ["eng@acme.example.com"]]
        texts = [body_of(m) for m in mine]
        assert any(denied in t and "denied" in t for t in texts)
        assert any(approved in t and "approved" in t for t in texts)
        assert all("/console/my/requests" in t and "not today" not in t for t in texts)
        notifier.stop()
        abouts = [e.details["about"] for e in events.of_type("notification.sent")]
        assert abouts.count("emergency.started") == 1 and "alert.raised" in abouts
        assert abouts.count("request.created") == 2  # the two ordinary requests only
    finally:
        notifier.stop()
        store.close()


def test_a_mail_server_outage_delays_mail_across_a_restart_and_never_drops_it(
    tmp_path: Path,
) -> None:
    """The mail server is down: the request is created at once, its mail waits in the
    outbox (``notification.failed`` after the third attempt, retries go on); the broker
    restarts; the server comes up; the mail arrives, once."""
    port = free_port()  # nothing listens yet
    w, events, notifier, store = broker(tmp_path, port)
    controller: Controller | None = None
    try:
        started = time.monotonic()
        request_id = _request(w)
        assert time.monotonic() - started < 1.0
        assert w.s.requests.show(w.admin, request_id).request.status == "pending"
        poll_sync(lambda: events.of_type("notification.failed"), 20, "the failure event")
        [failed] = events.of_type("notification.failed")
        assert failed.get("RequestId") == request_id and failed.get("EventResult") == "Failure"
        assert failed.details == {
            "about": "request.created",
            "recipients": 2,
            "attempts": 3,
            "reason": "ConnectionRefusedError",
        }
        notifier.stop()  # the broker stops with the mail undelivered
        assert events.of_type("notification.sent") == []
        # the broker comes back (a new notifier over the same database) ...
        again = Notifier(notify_settings(tmp_path, port))
        again.bind(w.s, events, store.engine)
        assert again.pending() == 1
        again.start()
        notifier = again
        # ... and then the mail server
        inbox = Inbox()
        controller = Controller(inbox, hostname="127.0.0.1", port=port)
        controller.start()
        poll_sync(lambda: inbox.mails, 20, "the delayed mail")
        [(rcpt, mail)] = inbox.mails
        assert sorted(rcpt) == ["appr2@hoshi.example.jp", "appr@hoshi.example.jp"]
        assert request_id in body_of(mail)
        poll_sync(lambda: events.of_type("notification.sent"), 10, "notification.sent")
        [sent] = events.of_type("notification.sent")
        assert sent.details["attempts"] >= 4 and notifier.pending() == 0
        notifier.deliver_due()  # no second copy: the row is marked sent
        assert len(inbox.mails) == 1
    finally:
        notifier.stop()
        store.close()
        if controller is not None:
            controller.stop()


def test_settings_without_a_from_address_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HOSHU_SMTP_FROM"):
        Notifier(BrokerSettings(data_dir=tmp_path, smtp_host="127.0.0.1"))


def test_starttls_with_sign_in_from_a_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """STARTTLS against a server whose certificate the system trusts (SSL_CERT_FILE),
    then AUTH with the password read from its file; the password is never logged."""
    server_tls, _client = tls_contexts(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "tls" / "siem.crt"))
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        _server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any
    ) -> AuthResult:
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret-relay-pw")

    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    controller.start()
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret-relay-pw\n")
    settings = BrokerSettings(
        data_dir=tmp_path / "data",
        smtp_host="localhost",
        smtp_port=port,
        smtp_from="hoshu@broker.example.jp",
        smtp_user="hoshu-relay",
        smtp_password_file=secret,
    )
    assert settings.smtp_security == "starttls"
    notifier = Notifier(settings)
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}")
    events = CapturingEmitter()
    clock = FakeClock(T0)
    services = Services.build(make_context(store, FanOut([events, notifier]), clock))
    w = build_world(services, clock)
    with services.ctx.uow() as tx:
        user = tx.one(User, name="appr")
        assert user is not None
        user.email = "appr@hoshi.example.jp"
        tx.save(user)
    notifier.bind(services, events, store.engine)
    notifier.start()
    caplog.set_level("DEBUG")
    try:
        _request(w)
        poll_sync(
            lambda: events.of_type("notification.sent") or events.of_type("notification.failed"),
            10,
            "the notification",
        )
        assert events.of_type("notification.sent"), events.of_type("notification.failed")
        assert logins == [(b"hoshu-relay", b"s3cret-relay-pw")]
        assert [r for r, _m in inbox.mails] == [["appr@hoshi.example.jp"]]
        assert "s3cret" not in caplog.text
        assert all("s3cret" not in str(e.record) for e in events.events)
    finally:
        notifier.stop()
        store.close()
        controller.stop()


def test_the_assembled_broker_mails_approvers(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    """``hoshu serve``'s broker with HOSHU_SMTP_* set: a request made through its own
    services reaches the approver's mailbox, and the audit log records it."""
    inbox, port = smtp
    settings = BrokerSettings(
        data_dir=tmp_path / "data",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_from="hoshu@broker.example.jp",
    )
    rt = build_broker(settings)
    try:
        s = rt.control.services
        w = build_world(s, FakeClock(T0))
        with s.ctx.uow() as tx:
            user = tx.one(User, name="appr")
            assert user is not None
            user.email = "appr@hoshi.example.jp"
            tx.save(user)
        request_id = _request(w)
        poll_sync(lambda: inbox.mails, 10, "the mail")
        assert [r for r, _m in inbox.mails] == [["appr@hoshi.example.jp"]]
        part = inbox.mails[0][1].get_body()
        assert isinstance(part, EmailMessage)
        assert "http://127.0.0.1:8440/console/inbox" in part.get_content()
        poll_sync(
            lambda: "notification.sent" in settings.audit_log_path.read_text(),
            10,
            "notification.sent in the audit log",
        )
    finally:

        async def close() -> None:
            for closer in reversed(rt.closers):
                result = closer()
                if inspect.isawaitable(result):
                    await result

        asyncio.run(close())
    kinds = [
        json.loads(line).get("EventType")
        for line in settings.audit_log_path.read_text().splitlines()
        if line.strip()
    ]
    assert "request.created" in kinds and "notification.sent" in kinds
    assert request_id


def test_an_engineer_is_told_once_that_a_grant_is_about_to_end(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    w, events, first, store = broker(tmp_path, port)
    first.stop()  # this test's messages come from the replica below only
    replica = Notifier(notify_settings(tmp_path, port), grant_scan_s=0.0)
    replica.bind(w.s, events, store.engine)
    try:
        request_id = _request(w)
        view = w.s.requests.approve(w.actors["appr"], request_id, "")
        assert view.grant is not None
        w.clock.advance(3600 - 600)  # ten minutes left (HOSHU_NOTIFY_GRANT_ENDING_S: 900)
        replica.start()
        poll_sync(lambda: inbox.mails, 10, "the grant-ending mail")
        [(rcpt, mail)] = inbox.mails
        assert rcpt == ["eng@acme.example.com"] and "終了が近づいて" in mail["Subject"]
        body = body_of(mail)
        assert view.grant.id in body and "10 min" in body
        assert "https://hoshu.example.jp/console/my/requests" in body
        for _ in range(3):  # later scans find the message written already
            replica._grants_ending()
            replica.deliver_due()
        assert len(inbox.mails) == 1 and replica.pending() == 0
    finally:
        replica.stop()
        store.close()


def _close(rt: Any) -> None:
    async def close() -> None:
        for closer in reversed(rt.closers):
            result = closer()
            if inspect.isawaitable(result):
                await result

    asyncio.run(close())


@pytest.mark.slow
def test_the_assembled_broker_restarted_during_a_mail_outage_sends_the_mail_once(
    tmp_path: Path,
) -> None:
    """``hoshu serve``'s broker: the relay is down when the request comes; the broker
    stops and starts again (same database); the relay comes up; one mail arrives."""
    port = free_port()
    settings = BrokerSettings(
        data_dir=tmp_path / "data",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_from="hoshu@broker.example.jp",
        notify_poll_s=0.1,
        notify_backoff_max_s=1,
    )
    rt = build_broker(settings)
    try:
        s = rt.control.services
        w = build_world(s, FakeClock(T0))
        with s.ctx.uow() as tx:
            user = tx.one(User, name="appr")
            assert user is not None
            user.email = "appr@hoshi.example.jp"
            tx.save(user)
        request_id = _request(w)
        poll_sync(
            lambda: "ConnectionRefusedError" in json.dumps(outbox_rows(rt)),
            10,
            "a failed attempt recorded in the outbox",
        )
    finally:
        _close(rt)
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    rt = build_broker(settings)
    try:
        controller.start()
        poll_sync(lambda: inbox.mails, 15, "the mail after the restart")
        poll_sync(lambda: all(r["sent_at"] for r in outbox_rows(rt)), 10, "the row marked sent")
        [(rcpt, mail)] = inbox.mails
        assert rcpt == ["appr@hoshi.example.jp"] and request_id in body_of(mail)
    finally:
        _close(rt)
        controller.stop()
    assert len(inbox.mails) == 1


def outbox_rows(rt: Any) -> list[dict[str, Any]]:
    with rt.control.store.engine.connect() as conn:
        return [
            {k: str(v) if v is not None else None for k, v in r._mapping.items()}
            for r in conn.execute(NOTIFICATION_OUTBOX.select())
        ]
