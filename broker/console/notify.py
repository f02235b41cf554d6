"""Notifications through a durable outbox: mail, Microsoft Teams and signed JSON webhooks.

:class:`Notifier` is shaped like an audit emitter and sits beside the audit log
(``FanOut([audit_log, notifier])``, :mod:`broker.assembly`): it sees each event the
control plane writes *after* the log has taken it.  Its ``emit`` never raises and
never waits: it hands the event to the notifier's worker thread, which at once
writes the messages it calls for into the database's ``notification_outbox``
(one row per channel; ``dedupe`` makes them once per event, channel and
recipients) and then delivers due rows.  So a slow or dead mail server never holds
up a request, and a message waits in the database, across restarts, until it is
delivered: a mail-server outage delays mail and never drops it.

Who is told what (recipients are taken when the event happens):

- ``request.created``: the hospital's approvers, link ``/console/inbox``;
- ``emergency.started``: the hospital's approvers at once, ``/console/emergencies``;
- ``session.started``: the hospital's approvers, ``/console/sessions/<id>``, only when
  the hospital chose it;
- ``grant.expired`` / ``grant.revoked``: ``report.due``, a work report to sign, the
  hospital's approvers, ``/console/reports/<grant>``;
- ``request.denied`` and ``grant.created`` (the decision): the engineer who asked,
  ``/console/my/requests``;
- a grant about to end (``notify_grant_ending_s`` before its end): its engineer;
- ``alert.raised``: the hospital's auditors, ``/console/audit``.

Channels are the organisation's (``notification_settings``, set by its admin through
``PUT /v1/notifications/{hospital}`` or the console's notifications page; without a row:
mail only, the default kinds; a hospital's ``kinds`` say which of :data:`CHOOSABLE` its
approvers are told of): mail to the people
whose role it is (active, unexpired, with an address) and to further addresses;
a Microsoft Teams incoming webhook (a MessageCard); a generic JSON webhook signed
with HMAC-SHA256 under the organisation's own key (stored sealed) or else
``notify_webhook_secret_file``: headers
``X-Hoshu-Timestamp`` (Unix seconds) and ``X-Hoshu-Signature``
(``sha256=<hex of HMAC(key, timestamp + "." + body)>``).

Delivery: every replica runs a worker; a due row is claimed with a conditional
update (``claimed_until`` in the past or empty → this replica's, for a lease), so
one replica sends each message.  A failed attempt schedules the next with an
exponential backoff capped at ``notify_backoff_max_s``; after
:data:`FAILED_AFTER` attempts ``notification.failed`` is written once (reason: the
error's class, never its text) and the row keeps being retried.  A sent message
is ``notification.sent``.  At least once: a replica that dies between sending and
marking the row sent sends it again after the lease.

Mail is SMTP over STARTTLS (default, certificate checked), implicit TLS (``ssl``)
or plain (``none``, a relay on loopback), with a timeout; the password is read from
``smtp_password_file`` at send time.  Content: the console link, the instruments,
the engineer's login and the request or grant id; never the reason, the work
plan, a comment or anything else the catalog marks sensitive, and no secret.
Japanese first, then English.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import ssl
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from audit import new_event
from audit.emitter import Emitter
from audit.events import AuditEvent
from broker.access.crypto import SecretBox
from broker.access.model import AccessRequest, Grant, GrantStatus, Role, User
from broker.access.services import Services
from broker.settings import BrokerSettings
from broker.store.tables import NOTIFICATION_OUTBOX as OUTBOX
from broker.store.tables import NOTIFICATION_SETTINGS

log = logging.getLogger(__name__)

WATCHED = frozenset(
    {
        "request.created",
        "emergency.started",
        "request.denied",
        "grant.created",
        "alert.raised",
        "session.started",
        "grant.expired",
        "grant.revoked",
    }
)
# what a hospital chooses to be told of (its approvers; ``kinds`` in its settings) and
# what it is told of until it chooses: a request waiting, an emergency, a work report
# to sign (its grant ended); each session's start only when asked for
CHOOSABLE = ("request.created", "emergency.started", "session.started", "report.due")
DEFAULT_KINDS = ("request.created", "emergency.started", "report.due")
INCOMING_MAX = 10_000  # events waiting to be written to the outbox (milliseconds' worth)
FAILED_AFTER = 3  # attempts before notification.failed is written (retries go on)
LEASE_S = 120.0  # a claimed row is this replica's for so long
BATCH = 20
FIRST_BACKOFF_S = 2.0
MAX_INSTRUMENTS_SHOWN = 20
MAX_RESPONSE = 64 * 1024  # what is read of a webhook's answer
GRANT_SCAN_S = 30.0
CHANNELS = ("email", "teams", "webhook")
SENT_KEPT = timedelta(days=30)  # sent rows are deleted after this (their events stay)


@dataclass(frozen=True, slots=True)
class Channels:
    """An organisation's notification channels (``notification_settings``)."""

    email: bool = True
    emails: tuple[str, ...] = ()
    teams_url: str = ""  # as stored: sealed (see seal_teams_url); a URL only when typed in
    webhook_url: str = ""
    kinds: tuple[str, ...] = DEFAULT_KINDS  # of CHOOSABLE: what the hospital is told of
    webhook_secret: str = ""  # the webhook's HMAC key, sealed (never shown); '' the broker's

    def tells(self, kind: str) -> bool:
        """Messages of ``kind`` go out (kinds not in CHOOSABLE always do)."""
        return kind not in CHOOSABLE or kind in self.kinds


@dataclass(frozen=True, slots=True)
class Message:
    """One notification, before it is written to the outbox once per channel."""

    key: str  # what it is once for: the event's uid, or "grant-ending:<grant>"
    kind: str
    org_id: str
    role: str  # the role told ("" with user_ids)
    user_ids: tuple[str, ...]
    link: str
    subject: str
    ja: str
    en: str
    facts: dict[str, Any] = field(default_factory=dict)


def load_channels(engine: sa.Engine, org_id: str) -> Channels | None:
    """The organisation's channels as set, or None (then: mail only)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(NOTIFICATION_SETTINGS).where(NOTIFICATION_SETTINGS.c.org_id == org_id)
        ).first()
    if row is None:
        return None
    kinds = DEFAULT_KINDS if row.kinds is None else tuple(str(k) for k in row.kinds)
    return Channels(
        bool(row.email),
        tuple(row.emails or ()),
        row.teams_url,
        row.webhook_url,
        kinds,
        row.webhook_secret or "",
    )


def _typed_url(value: str) -> bool:
    """A URL as typed in (or stored before Teams URLs were sealed), not a sealed one."""
    return value.startswith(("https://", "http://"))


def seal_teams_url(box: SecretBox | None, value: str, *, allow_http: bool = False) -> str:
    """What is stored of a Teams URL: sealed with the control plane's secret box, like
    the webhook key (whoever holds the URL posts to the channel).  A value already
    sealed (the stored URL kept) is returned as it is; a typed URL is checked first."""
    if not value or not _typed_url(value):
        return value
    check_webhook_url(value, allow_http=allow_http)
    if box is None:
        raise ValueError("a Teams URL is stored only sealed, and no secret box is at hand")
    return box.seal(value)


def open_teams_url(box: SecretBox | None, stored: str) -> str:
    """The Teams URL a stored value stands for ('' none).  A URL stored in the clear by
    an earlier version is taken as it is, and sealed the next time the settings are
    saved."""
    if not stored or _typed_url(stored):
        return stored
    if box is None:
        raise ValueError("the Teams URL is sealed, and no secret box is at hand to open it")
    return box.open(stored)


def save_channels(
    engine: sa.Engine,
    org_id: str,
    channels: Channels,
    now: datetime,
    *,
    allow_http: bool = False,
    box: SecretBox | None = None,
) -> None:
    """Set the organisation's channels (URLs and addresses checked first; ``allow_http``:
    the broker's ``notify_allow_http``).  A typed Teams URL is sealed with ``box``
    (:func:`seal_teams_url`); without a box it is refused."""
    if channels.webhook_url:
        check_webhook_url(channels.webhook_url, allow_http=allow_http)
    teams = seal_teams_url(box, channels.teams_url, allow_http=allow_http)
    unknown = set(channels.kinds) - set(CHOOSABLE)
    if unknown:
        raise ValueError(f"not a notification kind: {', '.join(sorted(unknown))[:80]}")
    for address in channels.emails:
        if "@" not in address or len(address) > 254 or any(c in address for c in " ,;<>\r\n"):
            raise ValueError(f"not a mail address: {address[:60]!r}")
    values = {
        "email": channels.email,
        "emails": list(channels.emails),
        "teams_url": teams,
        "webhook_url": channels.webhook_url,
        "kinds": [k for k in CHOOSABLE if k in channels.kinds],
        "webhook_secret": channels.webhook_secret,
        "updated_at": now,
    }
    with engine.begin() as conn:
        done = conn.execute(
            NOTIFICATION_SETTINGS.update()
            .where(NOTIFICATION_SETTINGS.c.org_id == org_id)
            .values(**values)
        ).rowcount
        if not done:
            conn.execute(NOTIFICATION_SETTINGS.insert().values(org_id=org_id, **values))


def check_webhook_url(url: str, *, allow_http: bool = False) -> str:
    """An https:// URL with a host and no credentials in it.  Plain http:// only when the
    broker allows it (``HOSHU_NOTIFY_ALLOW_HTTP``, for tests and labs: a Teams URL and
    the message would cross the network in the clear), and never in production."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.username or parts.password or not host:
        raise ValueError("a webhook URL needs a host and carries no user or password")
    if parts.scheme == "https" or (parts.scheme == "http" and allow_http):
        return url
    raise ValueError("a webhook URL must be https://")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Hoshu-Signature`` of a webhook body sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a webhook that redirects is an error, never followed


_OPENER = urllib.request.build_opener(_NoRedirect)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Notifier:
    """Notifications from the audit events, through the durable outbox (see the module)."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        replica_id: str = "",
        wall: Callable[[], datetime] = _utc_now,
        lease_s: float = LEASE_S,
        grant_scan_s: float = GRANT_SCAN_S,
    ) -> None:
        if settings.smtp_host and "@" not in settings.smtp_from:
            raise ValueError("HOSHU_SMTP_FROM must be the mail address notifications come from")
        if settings.smtp_password_file is not None and not settings.smtp_user:
            raise ValueError("HOSHU_SMTP_PASSWORD_FILE needs HOSHU_SMTP_USER")
        self._settings = settings
        self._base = settings.api_url.rstrip("/")
        self._replica = replica_id or uuid.uuid4().hex[:16]
        self._wall = wall
        self._lease = timedelta(seconds=lease_s)
        self._incoming: deque[AuditEvent] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._services: Services | None = None
        self._audit: Emitter | None = None
        self._engine: sa.Engine | None = None
        self._thread: threading.Thread | None = None
        self._grant_scan_s = grant_scan_s
        self._grants_scanned = -grant_scan_s

    # --- the emitter side: called by the control plane, must not block or raise ---

    def emit(self, event: AuditEvent) -> AuditEvent:
        if event.type in WATCHED:
            with self._lock:
                full = len(self._incoming) >= INCOMING_MAX
                if not full:
                    self._incoming.append(event)
            if full:
                log.error("notification hand-off full: %s not written", event.type)
            self._wake.set()
        return event

    # --- life cycle --------------------------------------------------------------

    def bind(self, services: Services, audit: Emitter, engine: sa.Engine) -> None:
        """Recipients from ``services``, ``notification.*`` events into ``audit``, the
        outbox in ``engine``'s database."""
        self._services = services
        self._audit = audit
        self._engine = engine

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="hoshu-notify", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop delivering; events handed over so far are written to the outbox first."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.write_incoming()

    def pending(self) -> int:
        """Messages not yet delivered (the hand-off and the outbox's unsent rows)."""
        with self._lock:
            waiting = len(self._incoming)
        if self._engine is None:
            return waiting
        with self._engine.connect() as conn:
            unsent = conn.execute(
                sa.select(sa.func.count()).select_from(OUTBOX).where(OUTBOX.c.sent_at.is_(None))
            ).scalar_one()
        return waiting + int(unsent)

    # --- the worker ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.write_incoming()
                self._grants_ending()
                self.deliver_due()
                self.forget_sent()
            except Exception:
                log.exception("notification worker")
            self._wake.wait(self._settings.notify_poll_s)
            self._wake.clear()

    def write_incoming(self) -> int:
        """Write the messages of the events handed over so far into the outbox."""
        written = 0
        while True:
            with self._lock:
                if not self._incoming:
                    return written
                event = self._incoming[0]
            try:
                for message in self.messages_for(event):
                    written += self._enqueue(message)
            except Exception:
                log.exception("cannot write the notification of %s", event.type)
                if self._stopping.is_set():
                    return written
                time.sleep(0.5)  # the database is away: keep the event, try again
                continue
            with self._lock:
                self._incoming.popleft()

    # --- who is told what --------------------------------------------------------

    def messages_for(self, event: AuditEvent) -> list[Message]:
        kind = event.type
        hospital = str(event.get("HospitalId") or "")
        uid = str(event.get("EventUid") or "")
        raw = event.details.get("instruments") or ()
        instruments = [str(i) for i in raw] if isinstance(raw, list | tuple) else [str(raw)]
        shown = ", ".join(instruments[:MAX_INSTRUMENTS_SHOWN])
        engineer = str(event.get("ActorUsername") or "")
        request_id = str(event.get("RequestId") or "")
        grant_id = str(event.get("GrantId") or "")
        facts = {"instruments": instruments[:MAX_INSTRUMENTS_SHOWN], "request_id": request_id}
        if kind == "request.created":
            if event.get("Emergency") is True:
                return []  # an emergency writes request.created too: its message is the other
            return [
                Message(
                    uid,
                    kind,
                    hospital,
                    Role.APPROVER.value,
                    (),
                    "/console/inbox",
                    f"[hoshu] 承認待ちの申請があります / Access request waiting: {shown}",
                    f"{engineer} さんから保守アクセスの申請が届いています。\n"
                    f"機器: {shown}\n申請 ID: {request_id}\n承認または却下してください。",
                    f"{engineer} asks for maintenance access.\n"
                    f"Instruments: {shown}\nRequest: {request_id}\nApprove or deny it.",
                    {**facts, "engineer": engineer},
                )
            ]
        if kind == "emergency.started":
            return [
                Message(
                    uid,
                    kind,
                    hospital,
                    Role.APPROVER.value,
                    (),
                    "/console/emergencies",
                    f"[hoshu] 緊急アクセスが開始されました / Emergency access started: {shown}",
                    f"{engineer} さんが承認なしの緊急アクセスを開始しました。\n"
                    f"機器: {shown}\n事後の確認をお願いします。",
                    f"{engineer} started emergency access without prior approval.\n"
                    f"Instruments: {shown}\nPlease review it.",
                    {**facts, "engineer": engineer, "grant_id": grant_id},
                )
            ]
        if kind == "alert.raised":
            alert = str(event.details.get("alert") or "alert")
            return [
                Message(
                    uid,
                    kind,
                    hospital,
                    Role.AUDITOR.value,
                    (),
                    "/console/audit",
                    f"[hoshu] アラート / Alert: {alert}",
                    f"アラートが発生しました: {alert}\n機器: {shown or '-'}\n"
                    "監査画面で確認してください。",
                    f"An alert was raised: {alert}\nInstruments: {shown or '-'}\n"
                    "Please look into it in the audit pages.",
                    {**facts, "alert": alert},
                )
            ]
        if kind == "session.started":
            target = str(event.get("TargetHostname") or "")
            session_id = str(event.get("TargetSessionId") or "")
            return [
                Message(
                    uid,
                    kind,
                    hospital,
                    Role.APPROVER.value,
                    (),
                    f"/console/sessions/{session_id}" if session_id else "/console/sessions",
                    f"[hoshu] 保守セッションが開始されました / Session started: {target}",
                    f"{engineer} さんが {target} への保守セッションを開始しました。\n"
                    f"セッション ID: {session_id}\nライブで確認できます。",
                    f"{engineer} started a maintenance session on {target}.\n"
                    f"Session: {session_id}\nYou can watch it live.",
                    {"instruments": [target], "engineer": engineer, "session_id": session_id},
                )
            ]
        if kind in ("grant.expired", "grant.revoked"):
            if not grant_id or not hospital:
                return []
            return [
                Message(
                    f"report-due:{grant_id}",
                    "report.due",
                    hospital,
                    Role.APPROVER.value,
                    (),
                    f"/console/reports/{grant_id}",
                    "[hoshu] 作業報告書の確認と署名をお願いします / A work report is waiting for "
                    "your sign-off",
                    f"許可 {grant_id} の作業が終わりました。\n"
                    "作業計画と実際の操作を確認し、作業報告書に署名してください。",
                    f"The work under grant {grant_id} has ended.\n"
                    "Check the plan against what was done and sign the work report.",
                    {"grant_id": grant_id},
                )
            ]
        if kind in ("request.denied", "grant.created"):
            if kind == "grant.created" and event.get("Emergency") is True:
                return []
            asker = self._requester(request_id)
            if asker is None:
                return []
            denied = kind == "request.denied"
            word_ja, word_en = ("却下", "denied") if denied else ("承認", "approved")
            return [
                Message(
                    uid,
                    kind,
                    asker.org_id,
                    "",
                    (asker.id,),
                    "/console/my/requests",
                    f"[hoshu] 申請が{word_ja}されました / Your request was {word_en}",
                    f"申請 {request_id} は{word_ja}されました。",
                    f"Your request {request_id} was {word_en}.",
                    {"request_id": request_id, "grant_id": grant_id, "decision": word_en},
                )
            ]
        return []

    def _requester(self, request_id: str) -> User | None:
        services = self._services
        if services is None or not request_id:
            return None
        with services.ctx.uow() as tx:
            req = tx.get(AccessRequest, request_id)
            return tx.get(User, req.requester_id) if req is not None else None

    def _grants_ending(self) -> None:
        """Tell the engineers whose grant ends within ``notify_grant_ending_s``, once."""
        ahead = self._settings.notify_grant_ending_s
        services = self._services
        if (
            not ahead
            or services is None
            or time.monotonic() - self._grants_scanned < self._grant_scan_s
        ):
            return
        self._grants_scanned = time.monotonic()
        now = services.ctx.now()
        with services.ctx.uow() as tx:
            grants: list[Grant] = tx.find(Grant, status=GrantStatus.ACTIVE.value)
            soon = [g for g in grants if now < g.ends_at <= now + timedelta(seconds=ahead)]
            users = {u.id: u for u in tx.find(User, id=[g.user_id for g in soon])} if soon else {}
        for g in soon:
            user = users.get(g.user_id)
            if user is None:
                continue
            minutes = max(1, int((g.ends_at - now).total_seconds() // 60))
            shown = ", ".join(g.instruments[:MAX_INSTRUMENTS_SHOWN])
            self._enqueue(
                Message(
                    f"grant-ending:{g.id}",
                    "grant.ending",
                    user.org_id,
                    "",
                    (user.id,),
                    "/console/my/requests",
                    f"[hoshu] 許可の終了が近づいています / Your access ends soon: {shown}",
                    f"許可 {g.id}（機器: {shown}）はあと約 {minutes} 分で終了します。",
                    f"Your grant {g.id} (instruments: {shown}) ends in about {minutes} min.",
                    {"grant_id": g.id, "instruments": g.instruments[:MAX_INSTRUMENTS_SHOWN]},
                )
            )

    def channels(self, org_id: str) -> Channels:
        if self._engine is None or not org_id:
            return Channels()
        return load_channels(self._engine, org_id) or Channels()

    def recipients(self, org_id: str, role: str, user_ids: Sequence[str] = ()) -> list[str]:
        """Mail addresses of the organisation's active, unexpired people with ``role``
        (or of ``user_ids``)."""
        services = self._services
        if services is None or not org_id:
            return []
        now = services.ctx.now()
        with services.ctx.uow() as tx:
            users: list[User] = (
                tx.find(User, id=list(user_ids)) if user_ids else tx.find(User, org_id=org_id)
            )
        return sorted(
            {
                u.email
                for u in users
                if (bool(user_ids) or role in u.roles)
                and u.active
                and "@" in u.email
                and (u.expires_at is None or u.expires_at > now)
            }
        )

    def _enqueue(self, m: Message) -> int:
        engine = self._engine
        if engine is None:
            return 0
        chosen = self.channels(m.org_id)
        if not chosen.tells(m.kind):
            return 0  # the organisation chose not to be told of this
        targets: list[tuple[str, Any]] = []
        if chosen.email and self._settings.smtp_host:
            # further addresses get every message of the organisation: a hospital's
            # shared mailbox, a vendor's support desk (a copy of its engineers' messages)
            mails = set(self.recipients(m.org_id, m.role, m.user_ids)) | set(chosen.emails)
            if mails:
                targets.append(("email", sorted(mails)))
        if chosen.teams_url:  # as stored (sealed): opened only to send
            targets.append(("teams", chosen.teams_url))
        if chosen.webhook_url:
            targets.append(("webhook", chosen.webhook_url))
        payload = {
            "type": m.kind,
            "subject": m.subject,
            "ja": m.ja,
            "en": m.en,
            "link": self._base + m.link,
            "org_id": m.org_id,
            "facts": m.facts,
        }
        now = self._wall()
        written = 0
        for channel, target in targets:
            digest = hashlib.sha256(json.dumps(target).encode()).hexdigest()[:16]
            row = {
                "id": uuid.uuid4().hex,
                "dedupe": f"{m.key}:{channel}:{digest}"[:200],
                "kind": m.kind,
                "org_id": m.org_id,
                "channel": channel,
                "target": target,
                "payload": payload,
                "created_at": now,
                "next_attempt_at": now,
                "attempts": 0,
            }
            try:
                with engine.begin() as conn:
                    conn.execute(OUTBOX.insert().values(**row))
                written += 1
            except sa.exc.IntegrityError:
                pass  # written already (another replica, or before a restart)
        return written

    def forget_sent(self) -> int:
        """Delete the rows sent more than :data:`SENT_KEPT` ago."""
        if self._engine is None:
            return 0
        with self._engine.begin() as conn:
            gone = conn.execute(
                OUTBOX.delete().where(OUTBOX.c.sent_at < self._wall() - SENT_KEPT)
            ).rowcount
        return int(gone or 0)

    # --- delivery ------------------------------------------------------------------

    def deliver_due(self) -> int:
        """Claim the due rows one by one (a conditional update) and send them."""
        engine = self._engine
        if engine is None:
            return 0
        now = self._wall()
        free = sa.or_(OUTBOX.c.claimed_until.is_(None), OUTBOX.c.claimed_until < now)
        with engine.connect() as conn:
            due = [
                r.id
                for r in conn.execute(
                    sa.select(OUTBOX.c.id)
                    .where(OUTBOX.c.sent_at.is_(None), OUTBOX.c.next_attempt_at <= now, free)
                    .order_by(OUTBOX.c.next_attempt_at)
                    .limit(BATCH)
                )
            ]
        sent = 0
        for row_id in due:
            if self._stopping.is_set() and self._thread is not None:
                break
            with engine.begin() as conn:
                claimed = conn.execute(
                    OUTBOX.update()
                    .where(OUTBOX.c.id == row_id, OUTBOX.c.sent_at.is_(None), free)
                    .values(claimed_by=self._replica, claimed_until=now + self._lease)
                ).rowcount
                row = (
                    conn.execute(sa.select(OUTBOX).where(OUTBOX.c.id == row_id)).first()
                    if claimed == 1
                    else None
                )
            if row is not None:
                sent += self._attempt(engine, row)
        return sent

    def _attempt(self, engine: sa.Engine, row: Any) -> int:
        attempts = int(row.attempts) + 1
        mine = sa.and_(OUTBOX.c.id == row.id, OUTBOX.c.claimed_by == self._replica)
        try:
            self._send(row.channel, row.target, row.payload)
        except Exception as exc:  # every failure is retried: the row stays
            reason = type(exc).__name__
            wait = min(self._settings.notify_backoff_max_s, FIRST_BACKOFF_S * 2 ** (attempts - 1))
            log.warning(
                "notification %s over %s not delivered (attempt %d, next in %.0f s): %s",
                row.kind,
                row.channel,
                attempts,
                wait,
                reason,
            )
            with engine.begin() as conn:
                conn.execute(
                    OUTBOX.update()
                    .where(mine)
                    .values(
                        attempts=attempts,
                        next_attempt_at=self._wall() + timedelta(seconds=wait),
                        claimed_by=None,
                        claimed_until=None,
                        last_error=reason,
                    )
                )
            if attempts == FAILED_AFTER:
                self._record("notification.failed", row, attempts, reason)
            return 0
        with engine.begin() as conn:
            conn.execute(
                OUTBOX.update()
                .where(mine)
                .values(attempts=attempts, sent_at=self._wall(), claimed_until=None)
            )
        self._record("notification.sent", row, attempts, "")
        return 1

    def _send(self, channel: str, target: Any, payload: dict[str, Any]) -> None:
        if channel == "email":
            self._send_mail([str(t) for t in target], payload)
        elif channel == "teams":
            box = self._services.ctx.secrets if self._services is not None else None
            self._post(open_teams_url(box, str(target)), teams_card(payload), {})
        elif channel == "webhook":
            secret = self._webhook_secret(str(payload.get("org_id") or ""))
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
            ts = str(int(time.time()))
            self._post(
                str(target),
                body,
                {"X-Hoshu-Timestamp": ts, "X-Hoshu-Signature": sign(secret, ts, body)},
            )
        else:
            raise ValueError(f"unknown channel {channel!r}")

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        check_webhook_url(url, allow_http=self._settings.notify_allow_http)
        request = urllib.request.Request(  # noqa: S310 (https, or http when allowed: checked)
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8", **headers},
        )
        with _OPENER.open(request, timeout=self._settings.notify_timeout_s) as response:
            response.read(MAX_RESPONSE)
            if not 200 <= response.status < 300:
                raise OSError(f"webhook answered {response.status}")

    def _webhook_secret(self, org_id: str = "") -> bytes:
        """The organisation's own key (set in the console or the API, kept sealed), else
        the broker's ``notify_webhook_secret_file``."""
        sealed = self.channels(org_id).webhook_secret if org_id else ""
        if sealed and self._services is not None:
            return self._services.ctx.secrets.open(sealed).encode("utf-8")
        path = self._settings.notify_webhook_secret_file
        if path is None:
            raise ValueError("HOSHU_NOTIFY_WEBHOOK_SECRET_FILE is not set: webhooks are not signed")
        secret = path.read_bytes().strip()
        if len(secret) < 16:
            raise ValueError("the webhook signing key is shorter than 16 bytes")
        return secret

    def message(self, payload: dict[str, Any]) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = payload["subject"]
        msg["From"] = self._settings.smtp_from
        msg["To"] = "undisclosed-recipients:;"
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self._settings.smtp_from.split("@")[-1])
        msg["Auto-Submitted"] = "auto-generated"
        link = payload["link"]
        msg.set_content(
            f"{payload['ja']}\n{link}\n\n-- \n{payload['en']}\n{link}\n\nhoshu\n", charset="utf-8"
        )
        return msg

    def _send_mail(self, recipients: Sequence[str], payload: dict[str, Any]) -> None:
        s = self._settings
        if not s.smtp_host:
            raise ValueError("HOSHU_SMTP_HOST is not set: no mail can be sent")
        message = self.message(payload)
        timeout = s.smtp_timeout_s
        smtp: smtplib.SMTP
        if s.smtp_security == "ssl":
            smtp = smtplib.SMTP_SSL(
                s.smtp_host, s.smtp_port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=timeout)
        with smtp:
            if s.smtp_security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_user:
                smtp.login(s.smtp_user, self._password())
            smtp.send_message(message, to_addrs=list(recipients))

    def _password(self) -> str:
        path = self._settings.smtp_password_file
        if path is None:
            return ""
        return path.read_text(encoding="utf-8").strip()

    def _record(self, type_: str, row: Any, attempts: int, reason: str) -> None:
        audit = self._audit
        if audit is None:
            log.error("%s for %s (no audit log bound)", type_, row.kind)
            return
        payload = row.payload or {}
        facts = payload.get("facts") or {}
        target = row.target
        details: dict[str, Any] = {
            "about": row.kind,
            "recipients": len(target) if isinstance(target, list) else 1,
            "attempts": attempts,
        }
        if reason:
            details["reason"] = reason
        clock: dict[str, Any] = (
            {"clock": self._services.ctx.now} if self._services is not None else {}
        )
        request_id = facts.get("request_id") or None
        hospital = row.org_id if row.kind not in ("request.denied", "grant.created") else None
        try:
            audit.emit(
                new_event(
                    type_,
                    details=details,
                    HospitalId=hospital or None,
                    RequestId=request_id,
                    GrantId=facts.get("grant_id") or None,
                    ObjectType="notification",
                    Object=row.id,
                    EventMessage=f"notification {row.kind} over {row.channel}",
                    EventResult="Success" if type_ == "notification.sent" else "Failure",
                    **clock,
                )
            )
        except Exception:
            log.exception("cannot write %s", type_)


def teams_card(payload: dict[str, Any]) -> bytes:
    """A Microsoft Teams incoming-webhook MessageCard with a button to the console page."""
    card = {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": payload["subject"],
        "themeColor": "0B5C8A",
        "title": payload["subject"],
        "text": (payload["ja"] + "\n\n" + payload["en"]).replace("\n", "  \n"),
        "potentialAction": [
            {
                "@type": "OpenUri",
                "name": "hoshu コンソールを開く / Open in the hoshu console",
                "targets": [{"os": "default", "uri": payload["link"]}],
            }
        ],
    }
    return json.dumps(card, ensure_ascii=False).encode("utf-8")
