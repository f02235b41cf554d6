"""Approvers told by mail: a request for their hospital is waiting, an emergency started.

:class:`Notifier` is shaped like an audit emitter and sits beside the audit log
(``FanOut([audit_log, notifier])``, :mod:`broker.assembly`): it sees each event
the control plane writes *after* the log has taken it, and reacts to two types,
``request.created`` and ``emergency.started``.  Its ``emit`` never raises and
never waits: it puts a small job on a bounded queue, and one worker thread sends
the mail.  So a slow or dead mail server never holds up a request.

Delivery: to every active approver of the event's hospital with an e-mail
address, and to no one else; one message, recipients in Bcc-style envelope
only (each sees only the From and their own To line).  SMTP over STARTTLS
(default, certificate checked), implicit TLS (``ssl``) or plain (``none``, for a
relay on loopback), with a timeout on every connection; user and password are
optional, the password read from ``smtp_password_file`` at send time and never
logged.  A failed send is retried a bounded number of times (``retry_delays``);
then ``notification.failed`` is written (type, recipients, attempts, reason:
the error's class, never its text, which may echo a credential).  A sent mail is
``notification.sent``.  A full queue drops the job and writes
``notification.failed`` with reason ``queue_full``.  Jobs still queued when the
broker stops are lost (known limit: the outbox is in memory).

Content: the console link (``<public URL>/console/inbox``, or ``/console/grants``
for an emergency), the instruments, the engineer's login and the request id;
never the reason, the work plan or anything else the catalog marks sensitive,
and no secret.  Japanese first, then English (accounts carry no language yet).
"""

from __future__ import annotations

import logging
import queue
import smtplib
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from audit import new_event
from audit.emitter import Emitter
from audit.events import AuditEvent
from broker.access.model import Role, User
from broker.access.services import Services
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

WATCHED = frozenset({"request.created", "emergency.started"})
QUEUE_SIZE = 1000
RETRY_DELAYS: tuple[float, ...] = (2.0, 10.0, 60.0)  # then notification.failed
MAX_INSTRUMENTS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Job:
    kind: str  # the event type
    hospital_id: str
    request_id: str
    engineer: str
    instruments: tuple[str, ...]


class Notifier:
    """Mail to a hospital's approvers, from a bounded in-memory queue (see the module)."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        if not settings.smtp_host:
            raise ValueError("HOSHU_SMTP_HOST is not set: no mail can be sent")
        if "@" not in settings.smtp_from:
            raise ValueError("HOSHU_SMTP_FROM must be the mail address notifications come from")
        if settings.smtp_password_file is not None and not settings.smtp_user:
            raise ValueError("HOSHU_SMTP_PASSWORD_FILE needs HOSHU_SMTP_USER")
        self._settings = settings
        self._base = settings.api_url.rstrip("/")
        self._delays = tuple(retry_delays)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._services: Services | None = None
        self._audit: Emitter | None = None
        self._thread: threading.Thread | None = None

    # --- the emitter side: called by the control plane, must not block or raise ---

    def emit(self, event: AuditEvent) -> AuditEvent:
        # an emergency access writes request.created too: its mail is the emergency one
        if event.type in WATCHED and not (
            event.type == "request.created" and event.get("Emergency") is True
        ):
            try:
                self._queue.put_nowait(_job(event))
            except queue.Full:
                self._record("notification.failed", _job(event), [], 0, "queue_full")
            except Exception:  # never let a notification fail the action
                log.exception("cannot queue a notification for %s", event.type)
        return event

    # --- life cycle --------------------------------------------------------------

    def bind(self, services: Services, audit: Emitter) -> None:
        """Where recipients come from and where ``notification.*`` events go."""
        self._services = services
        self._audit = audit

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hoshu-notify", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout_s)
            self._thread = None

    def pending(self) -> int:
        return self._queue.qsize()

    # --- the worker ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            job = self._queue.get()
            if job is None:
                return
            try:
                self._deliver(job)
            except Exception:
                log.exception("notification worker")

    def _deliver(self, job: Job) -> None:
        recipients = self.recipients(job.hospital_id)
        if not recipients:
            return
        message = self.message(job, recipients)
        attempts = 0
        reason = ""
        for delay in (0.0, *self._delays):
            if delay and self._stopping.wait(delay):
                break
            attempts += 1
            try:
                self._send(message, recipients)
            except (OSError, smtplib.SMTPException) as exc:
                reason = type(exc).__name__
                log.warning(
                    "notification mail for %s not sent (attempt %d): %s",
                    job.request_id,
                    attempts,
                    reason,
                )
                continue
            self._record("notification.sent", job, recipients, attempts, "")
            return
        self._record("notification.failed", job, recipients, attempts, reason or "stopped")

    def recipients(self, hospital_id: str) -> list[str]:
        """Mail addresses of the hospital's active, unexpired approvers."""
        services = self._services
        if services is None or not hospital_id:
            return []
        now = services.ctx.now()
        with services.ctx.uow() as tx:
            users: list[User] = tx.find(User, org_id=hospital_id)
        return sorted(
            {
                u.email
                for u in users
                if Role.APPROVER in u.roles
                and u.active
                and "@" in u.email
                and (u.expires_at is None or u.expires_at > now)
            }
        )

    def message(self, job: Job, recipients: Sequence[str]) -> EmailMessage:
        instruments = ", ".join(job.instruments[:MAX_INSTRUMENTS_SHOWN])
        if job.kind == "emergency.started":
            link = f"{self._base}/console/grants"
            subject = (
                f"[hoshu] 緊急アクセスが開始されました / Emergency access started: {instruments}"
            )
            ja = (
                f"{job.engineer} さんが承認なしの緊急アクセスを開始しました。\n"
                f"機器: {instruments}\n事後の確認をお願いします: {link}\n"
            )
            en = (
                f"{job.engineer} started emergency access without prior approval.\n"
                f"Instruments: {instruments}\nPlease review it: {link}\n"
            )
        else:
            link = f"{self._base}/console/inbox"
            subject = f"[hoshu] 承認待ちの申請があります / Access request waiting: {instruments}"
            ja = (
                f"{job.engineer} さんから保守アクセスの申請が届いています。\n"
                f"機器: {instruments}\n申請 ID: {job.request_id}\n"
                f"承認または却下してください: {link}\n"
            )
            en = (
                f"{job.engineer} asks for maintenance access.\n"
                f"Instruments: {instruments}\nRequest: {job.request_id}\n"
                f"Approve or deny it: {link}\n"
            )
        msg = EmailMessage()
        msg["Subject"] = subject
        msg["From"] = self._settings.smtp_from
        msg["To"] = "undisclosed-recipients:;"
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self._settings.smtp_from.split("@")[-1])
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(f"{ja}\n-- \n{en}\nhoshu\n", charset="utf-8")
        return msg

    def _send(self, message: EmailMessage, recipients: Sequence[str]) -> None:
        s = self._settings
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

    def _record(
        self, type_: str, job: Job, recipients: Sequence[str], attempts: int, reason: str
    ) -> None:
        audit = self._audit
        if audit is None:
            log.error("%s for %s (no audit log bound)", type_, job.request_id)
            return
        clock: Callable[[], Any] | None = self._services.ctx.now if self._services else None
        details: dict[str, Any] = {
            "about": job.kind,
            "recipients": len(recipients),
            "attempts": attempts,
        }
        if reason:
            details["reason"] = reason
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        try:
            audit.emit(
                new_event(
                    type_,
                    details=details,
                    HospitalId=job.hospital_id or None,
                    RequestId=job.request_id or None,
                    ObjectType="request",
                    Object=job.request_id or None,
                    EventResult="Success" if type_ == "notification.sent" else "Failure",
                    **kwargs,
                )
            )
        except Exception:
            log.exception("cannot write %s", type_)


def _job(event: AuditEvent) -> Job:
    raw = event.details.get("instruments") or ()
    instruments = tuple(str(i) for i in raw) if isinstance(raw, list | tuple) else (str(raw),)
    return Job(
        event.type,
        str(event.get("HospitalId") or ""),
        str(event.get("RequestId") or event.get("GrantId") or ""),
        str(event.get("ActorUsername") or ""),
        instruments,
    )
