"""What the front door's parts share, as types: its options and two Protocols.

:class:`Door` is the listener's shared state as a connection and its channels
use it (:class:`broker.frontdoor.door.FrontDoor` provides it);
:class:`ChannelContext` is one engineer connection as a forward or an SFTP
session uses it (:class:`broker.frontdoor.channels.Channels` provides it).
With these, the modules of the front door import one another in one direction
only: ``door`` → ``server`` → ``channels`` → ``forward``/``sftp`` →
``sftp_changes`` → ``context``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from broker.access.door import AccessPolicy, Engineer, GrantView, InstrumentTarget
from broker.frontdoor.auth import LoginName
from broker.frontdoor.ca import UserCA
from broker.frontdoor.relay import InstrumentLink
from broker.frontdoor.spool import SpoolBudget
from broker.live.changes import DbCalls
from broker.live.holds import SharedHolds
from broker.live.recorder import Opener
from broker.live.sessions import LiveSession, SessionRegistry
from broker.tunnel.connector import InstrumentConnector


@dataclass(frozen=True, slots=True)
class FrontDoorOptions:
    """Limits and switches of the front door (defaults are the secure ones)."""

    max_channels: int = 16  # open channels per engineer connection
    max_pending_per_source: int = 20  # connections still authenticating, per source address
    login_timeout_s: float = 120.0  # as OpenSSH's LoginGraceTime; the client is told why
    failures_written_per_minute: int = 10  # per source; the rest of its minute: one sum
    watch_interval_s: float = 0.25  # grant checks: sessions end < 1 s after a grant does
    scan_command: tuple[str, ...] = ()  # argv; the file path is appended; exit 0 = clean
    scan_timeout_s: float = 120.0
    forward_capture_dir: Path | None = None  # raw capture of forwarded bytes when set
    max_file_bytes: int = 2 * 1024**3
    spool_dir: Path | None = None  # None: settings.spool_dir (<data_dir>/spools)
    max_session_spool_bytes: int = 4 * 1024**3  # open spools of one sftp/scp session
    max_spool_bytes: int = 16 * 1024**3  # open spools of the whole front door
    forward_capture_max_bytes: int = 1024**3  # a forward whose capture reaches it ends
    max_recording_bytes: int = 512 * 1024**2  # per session (settings.recording_max_mib)
    banner: str = ""
    # Ciphers offered to engineers' clients.  The client picks by its own order, so
    # offering only AES-GCM (in OpenSSL) steers stock OpenSSH away from
    # chacha20-poly1305, which costs asyncssh far more per packet.
    ciphers: tuple[str, ...] = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


class Door(Protocol):
    """The front door's state shared by every engineer connection of one listener."""

    policy: AccessPolicy
    connector: InstrumentConnector
    options: FrontDoorOptions
    ca: UserCA | None
    clock: Callable[[], datetime]
    ids: Callable[[], str]
    sessions: SessionRegistry
    holds: SharedHolds | None  # several replicas: held lines shared (clusterholds)
    spools: SpoolBudget
    recorder_dir: Path
    recording_opener: Opener
    draining: bool  # the broker is stopping: no new sessions or forwards
    db: DbCalls  # blocking policy calls run here, off the event loop

    def view_current(self) -> bool:
        """False while the change feed cannot confirm the database view (no new logins)."""
        ...

    def emit(self, type_: str, *, details: dict[str, Any] | None = None, **cols: Any) -> None:
        """Write one audit event."""
        ...

    def login_failed(
        self, type_: str, *, details: dict[str, Any] | None = None, **cols: Any
    ) -> None:
        """Write a failed login (summed while its source floods)."""
        ...

    def track(self, conn: asyncssh.SSHServerConnection, alive: bool) -> None: ...

    def pending(self, src: str, delta: int) -> bool: ...


class ChannelContext(Protocol):
    """One engineer connection, as its forwards and SFTP sessions use it."""

    door: Door
    engineer: Engineer
    login: LoginName
    link: InstrumentLink

    def cols(self, target: str | None, port: int | None = None, **more: Any) -> dict[str, Any]:
        """The audit columns naming the engineer, their source and ``target``."""
        ...

    def authorize(
        self, instrument: str | None, port: int | None, *, files: bool = False
    ) -> tuple[InstrumentTarget, GrantView]:
        """The target and grant for a channel, or a refusal (``AccessDenied``)."""
        ...

    async def authorize_off_loop(
        self, instrument: str | None, port: int | None, *, files: bool = False
    ) -> tuple[InstrumentTarget, GrantView]:
        """:meth:`authorize` on the database pool (``Door.db``), off the event loop."""
        ...

    def live(
        self, sid: str, kind: str, target: InstrumentTarget, grant: GrantView, port: int
    ) -> LiveSession: ...

    def release(self) -> None: ...

    def forward_target(self, dest_host: str) -> str | None: ...
