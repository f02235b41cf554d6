"""What the API needs from the broker's SSH side, as Protocols.

The HTTP routes reach live sessions and the user CA through these and nothing
else, so the API imports no SSH package; :mod:`broker.assembly` passes the
front door's session registry (:class:`broker.live.sessions.SessionRegistry`)
and its CA (:class:`broker.frontdoor.ca.UserCA`), which fit them as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Protocol

from audit.emitter import Emitter


class LiveSessionView(Protocol):
    """One live session, as the routes show and check it."""

    @property
    def session_id(self) -> str: ...

    @property
    def instrument(self) -> str: ...

    @property
    def hospital_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    @property
    def recording(self) -> str: ...

    def summary(self) -> dict[str, Any]: ...


class LiveSessions(Protocol):
    """The live-session registry: list, follow and terminate."""

    def get(self, session_id: str) -> LiveSessionView | None: ...

    def list(self) -> Sequence[LiveSessionView]: ...

    def follow(self, session_id: str) -> AsyncIterator[bytes]: ...

    def terminate(self, session_id: str, *, by: str, reason: str) -> bool: ...


class ClusterSessions(Protocol):
    """Live sessions other broker replicas run (``broker.live.directory.ClusterSessions``):
    found and listed from the database, followed from their recording in the shared
    store, terminated by a request the owning replica carries out."""

    async def find(self, session_id: str) -> LiveSessionView | None: ...

    async def others(self) -> Sequence[LiveSessionView]: ...

    def follow(self, session_id: str, recording: str) -> AsyncIterator[bytes]: ...

    async def terminate(self, session_id: str, *, by: str, reason: str) -> datetime | None:
        """When the owner was asked to end it; None when it is not live."""
        ...


class CertificateIssuer(Protocol):
    """The SSH user CA.  ``issue`` raises a
    :class:`~broker.access.errors.PermissionDenied` when it refuses."""

    def issue(
        self,
        public_key_line: str,
        *,
        username: str,
        user_id: str,
        now: datetime,
        grants_end: datetime | None,
        serial: int,
        emitter: Emitter,
    ) -> str: ...


class CertificatePolicy(Protocol):
    """The part of the store's access policy the certificate route asks."""

    def engineer_for_key(self, username: str, openssh_public_key: str) -> object | None: ...

    def record_cert(
        self, user_id: str, serial: int, issued_at: datetime, valid_until: datetime
    ) -> None: ...
