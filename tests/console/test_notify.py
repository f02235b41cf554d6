"""Approvers are told by mail, through a real SMTP server (aiosmtpd) on loopback.

A new request produces one mail, to each active approver of that hospital with an
address and to no one else (not the other hospital's approver, not the hospital
admin), in Japanese then English, with the console inbox link and without the
request's reason or work plan; ``notification.sent`` is written.  With the mail
server dead the request is still created at once, and after the bounded retries
``notification.failed`` records it (no credential, no message text).  Over
STARTTLS with a sign-in, the password comes from its file and is never logged.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
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
from tests.control.conftest import T0, World, build_world, make_context
from tests.fixtures.siem import tls_contexts
from tests.support import FakeClock, free_port, poll_sync


@dataclass
class Inbox:
    """What the SMTP server received: (envelope recipients, parsed message)."""

    mails: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(mail, EmailMessage)
        self.mails.append((list(envelope.rcpt_tos), mail))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def broker(tmp: Path, port: int, **delays: Any) -> tuple[World, CapturingEmitter, Notifier, Store]:
    settings = BrokerSettings(
        data_dir=tmp / "data",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_from="hoshu@broker.example.jp",
        public_api_url="https://hoshu.example.jp",
    )
    notifier = Notifier(settings, **delays)
    store = Store(f"sqlite:///{tmp / 'hoshu.db'}")
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
    }
    with services.ctx.uow() as tx:
        for name, address in addresses.items():
            user = tx.one(User, name=name)
            assert user is not None
            user.email = address
            tx.save(user)
    notifier.bind(services, events)
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
        part = mail.get_body()
        assert isinstance(part, EmailMessage)
        body = part.get_content()
        assert "https://hoshu.example.jp/console/inbox" in body
        assert request_id in body and "Approve or deny" in body
        assert body.index("承認または却下") < body.index("Approve or deny")  # Japanese first
        assert "secret-reason" not in body and "12345" not in body
        assert "plan-text" not in body and "appr@" not in str(mail)
        [sent] = events.of_type("notification.sent")
        assert sent.get("RequestId") == request_id
        assert sent.details == {"about": "request.created", "recipients": 2, "attempts": 1}
    finally:
        notifier.stop()
        store.close()


def test_an_emergency_access_mails_the_approvers_once(
    tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    """Emergency access (allowed by the hospital's policy) is one mail, about the
    emergency, linking to the grants page; not also a "request waiting" mail."""
    inbox, port = smtp
    w, events, notifier, store = broker(tmp_path, port)
    try:
        w.s.estate.update_policy(
            w.actors["hadmin"],
            "hoshi-hospital",
            {"emergency_allowed": True, "emergency_max_duration_s": 1800},
        )
        w.s.grants.start_emergency(w.actors["eng"], NewRequest(["cobas-1"], 1800, "down"))
        poll_sync(lambda: events.of_type("notification.sent"), 10, "the notification")
        [(rcpt, mail)] = inbox.mails
        assert sorted(rcpt) == ["appr2@hoshi.example.jp", "appr@hoshi.example.jp"]
        assert "緊急アクセス" in mail["Subject"]
        part = mail.get_body()
        assert isinstance(part, EmailMessage)
        assert "https://hoshu.example.jp/console/grants" in part.get_content()
        notifier.stop()  # the queue is drained: nothing else was queued
        assert [e.details["about"] for e in events.of_type("notification.sent")] == [
            "emergency.started"
        ]
    finally:
        notifier.stop()
        store.close()


def test_a_dead_mail_server_never_holds_up_a_request(tmp_path: Path) -> None:
    port = free_port()  # nothing listens
    w, events, notifier, store = broker(tmp_path, port, retry_delays=(0.05, 0.05))
    try:
        started = time.monotonic()
        request_id = _request(w)
        assert time.monotonic() - started < 1.0
        assert w.s.requests.show(w.admin, request_id).request.status == "pending"
        poll_sync(lambda: events.of_type("notification.failed"), 10, "the failure event")
        [failed] = events.of_type("notification.failed")
        assert failed.get("RequestId") == request_id and failed.get("EventResult") == "Failure"
        assert failed.details == {
            "about": "request.created",
            "recipients": 2,
            "attempts": 3,
            "reason": "ConnectionRefusedError",
        }
        assert events.of_type("notification.sent") == []
    finally:
        notifier.stop()
        store.close()


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
    notifier.bind(services, events)
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
