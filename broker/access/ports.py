"""What the services need from the outside world: storage, clock, ids, audit.

:class:`Tx` is one transaction over the store.  ``find`` filters by equality;
a list value means "one of"; a key ending in ``__gte`` or ``__lt`` compares.
``for_update`` locks the rows found and skips rows another transaction holds
(PostgreSQL), so several broker replicas can sweep at once.  Leaving the
``with`` block normally commits; an exception rolls everything
back, which is how a failed audit write undoes the change it describes.
"""

from __future__ import annotations

import secrets as _secrets
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from audit.emitter import Emitter
from audit.events import AuditEvent, Result, new_event
from broker.access.crypto import SecretBox
from broker.access.passwords import Hasher

E = TypeVar("E")


class Tx(Protocol):
    def add(self, obj: object) -> None: ...
    def save(self, obj: object) -> None: ...
    def get(self, kind: type[E], id: str, /, *, for_update: bool = False) -> E | None: ...
    def find(
        self,
        kind: type[E],
        /,
        *,
        order_by: str | None = None,
        limit: int | None = None,
        for_update: bool = False,
        **where: Any,
    ) -> list[E]: ...
    def one(self, kind: type[E], /, **where: Any) -> E | None: ...


UnitOfWork = Callable[[], AbstractContextManager[Tx]]


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_hex_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling: resolved from a bearer token by the auth service."""

    user_id: str
    username: str
    org_id: str
    org_kind: str
    roles: frozenset[str]
    scopes: frozenset[str] = frozenset({"*"})
    src_ip: str | None = None
    token_kind: str = "session"  # noqa: S105

    @property
    def user_type(self) -> str:
        roles = ("platform_admin", "hospital_admin", "vendor_admin", "approver", "auditor")
        for r in (*roles, "engineer"):
            if r in self.roles:
                return "admin" if r.endswith("admin") else r
        return "service"


SYSTEM = Actor("system", "hoshu", "", "platform", frozenset(), frozenset({"*"}))


@dataclass(frozen=True, slots=True)
class Config:
    access_token_ttl_s: int = 900
    enroll_token_ttl_s: int = 600
    api_token_max_ttl_s: int = 365 * 24 * 3600
    lockout_failures: int = 5
    lockout_window_s: int = 900
    lockout_s: int = 900
    source_failures: int = 20  # failed sign-ins from one address in the window
    tunnel_host: str = "127.0.0.1"
    tunnel_port: int = 2223
    broker_host_key: str = ""  # OpenSSH public key line of the tunnel host key


@dataclass
class Context:
    """Everything a service is built from; nothing global."""

    uow: UnitOfWork
    emitter: Emitter
    secrets: SecretBox
    clock: Callable[[], datetime] = utc_now
    new_id: Callable[[], str] = new_hex_id
    random_token: Callable[[int], str] = _secrets.token_urlsafe
    hasher: Hasher = field(default_factory=Hasher)
    config: Config = field(default_factory=Config)

    def now(self) -> datetime:
        return self.clock()

    def event(
        self,
        type_: str,
        actor: Actor | None,
        *,
        result: Result = Result.SUCCESS,
        details: dict[str, Any] | None = None,
        **columns: Any,
    ) -> AuditEvent:
        if actor is not None:
            columns.setdefault("ActorUserId", actor.user_id)
            columns.setdefault("ActorUsername", actor.username)
            columns.setdefault("ActorUserType", actor.user_type)
            columns.setdefault("ActorOrganization", actor.org_id or None)
            columns.setdefault("SrcIpAddr", actor.src_ip)
        columns.setdefault("DvcHostname", "broker")
        columns.setdefault("DvcRole", "broker")
        return new_event(
            type_, clock=self.clock, details=details, EventResult=result.value, **columns
        )

    def emit(
        self,
        type_: str,
        actor: Actor | None,
        *,
        result: Result = Result.SUCCESS,
        details: dict[str, Any] | None = None,
        **columns: Any,
    ) -> AuditEvent:
        """Write one event; raises when the audit log cannot take it (fail closed)."""
        return self.emitter.emit(
            self.event(type_, actor, result=result, details=details, **columns)
        )
