"""The engineers' SSH front door: listener, shared state and the start function.

:func:`start_front_door` listens for stock OpenSSH clients.  Each connection
gets an :class:`~broker.frontdoor.server.EngineerServer` (thin asyncssh hooks) over
the shared :class:`FrontDoor` (policy, connector, emitter, live sessions, CA).

asyncssh completes authentication as soon as one method succeeds, so the
listener's connection class (:class:`wire.sshcompat.PartialSuccessConnection`,
inside the asyncssh fence) turns a verified public-key signature into a
*partial* success (RFC 4252 §5.1): the client must then answer
keyboard-interactive with a TOTP code.  A user certificate issued by
:class:`~broker.frontdoor.ca.UserCA`
after password + TOTP counts as both factors.  There is no password method.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

from audit import new_event
from audit.emitter import Emitter
from broker.access.door import AccessPolicy
from broker.access.floods import FloodGate, Summary
from broker.frontdoor.ca import UserCA
from broker.frontdoor.context import FrontDoorOptions
from broker.frontdoor.server import EngineerServer
from broker.frontdoor.spool import SpoolBudget
from broker.live.changes import ChangeFeed, DbCalls, watch_changes
from broker.live.holds import SharedHolds
from broker.live.journal import LiveJournal
from broker.live.recorder import Opener, default_opener
from broker.live.sessions import SessionRegistry
from broker.settings import BrokerSettings
from broker.tunnel.connector import InstrumentConnector
from wire.sshcompat import server_connection_factory

log = logging.getLogger(__name__)


def source_key(address: str) -> str:
    """The flood key of a source address: the address, or for IPv6 its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "ip:unknown"
    if ip.version == 6:
        return f"ip:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"ip:{ip}"


class FrontDoor:
    """State shared by every engineer connection of one listener."""

    def __init__(
        self,
        *,
        policy: AccessPolicy,
        connector: InstrumentConnector,
        emitter: Emitter,
        recorder_dir: Path,
        options: FrontDoorOptions,
        ca: UserCA | None,
        clock: Callable[[], datetime],
        ids: Callable[[], str],
    ) -> None:
        self.policy = policy
        self.connector = connector
        self.emitter = emitter
        self.recorder_dir = recorder_dir
        self.options = options
        self.ca = ca
        self.clock = clock
        self.ids = ids
        self.sessions = SessionRegistry(policy, emitter, clock, options.watch_interval_s)
        self.sessions.journal = LiveJournal(recorder_dir)  # a killed broker's sessions end at start
        self.spools = SpoolBudget(options.max_spool_bytes)  # shared by all sftp/scp sessions
        self.port = 0
        self.host_key_line = ""
        self.recording_opener: Opener = default_opener  # how recording files are created
        self._server: asyncio.AbstractServer | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._pending: dict[str, int] = {}
        self.floods = FloodGate(window_s=60.0, burst=options.failures_written_per_minute)
        self._flood_task: asyncio.Task[None] | None = None
        self.draining = False  # set by drain(): no new connections, sessions or forwards
        # blocking policy calls run on this bounded pool (start_front_door: db_threads)
        self.db = DbCalls()
        # the change feed (broker.live.changes): without one, the registry polls the policy
        self.feed: ChangeFeed | None = None
        # several replicas: held shell lines shared through the database (clusterholds)
        self.holds: SharedHolds | None = None

    def emit(self, type_: str, *, details: dict[str, Any] | None = None, **cols: Any) -> None:
        self.emitter.emit(new_event(type_, clock=self.clock, details=details, **cols))

    def login_failed(
        self, type_: str, *, details: dict[str, Any] | None = None, **cols: Any
    ) -> None:
        """A failed login: written as it is, unless its source is flooding.

        Past ``failures_written_per_minute`` from one source (IPv6: its /64), the rest
        of that minute are counted and written as one ``ssh.login`` with ``count``."""
        src = str(cols.get("SrcIpAddr") or "")
        admission = self.floods.admit(
            source_key(src), self.clock(), str(cols.get("EventResultDetails") or "")
        )
        self._summaries(admission.summaries)
        if admission.write:
            self.emit(type_, details=details, **cols)

    def flush_floods(self, *, everything: bool = False) -> None:
        """Write the sums of flood windows that are over (all of them at shutdown)."""
        self._summaries(self.floods.flush(self.clock(), everything=everything))

    def _summaries(self, summaries: list[Summary]) -> None:
        for s in summaries:
            src = s.key.removeprefix("ip:")
            self.emit(
                "ssh.login",
                EventResult="Failure",
                EventSeverity="Medium",
                EventResultDetails=f"{s.count} more failed logins from this source "
                f"in {s.window_s:g} s (summed, not written one by one)",
                EventMessage=f"SSH login refused {s.count} times",
                ActorUserType="engineer",
                SrcIpAddr=None if "/" in src or src in ("", "*") else src,
                details={"count": s.count, "window_s": s.window_s},
            )

    async def _flush_floods_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.flush_floods()
            except Exception:  # an audit outage must not stop the front door
                log.exception("cannot write the sum of failed logins")

    def serve(self, server: asyncio.Server, host_key: asyncssh.SSHKey) -> None:
        """Take the listening ``server``; start the grant watcher and the flood sums."""
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        self.host_key_line = host_key.export_public_key().decode().strip()
        if self.feed is not None:
            self._watcher = asyncio.ensure_future(
                watch_changes(self.sessions, self.feed, self.db, self.clock)
            )
        else:
            self._watcher = asyncio.ensure_future(self.sessions.watch())
        self._flood_task = asyncio.ensure_future(self._flush_floods_every(1.0))

    def view_current(self) -> bool:
        """False while the change feed cannot confirm this replica's view is current."""
        return self.feed is None or self.feed.current()

    @property
    def connection_count(self) -> int:
        """Engineer connections open now (authenticated or still signing in)."""
        return len(self._conns)

    def track(self, conn: asyncssh.SSHServerConnection, alive: bool) -> None:
        if alive:
            self._conns.add(conn)
        else:
            self._conns.discard(conn)

    def pending(self, src: str, delta: int) -> bool:
        """Count connections of ``src`` still authenticating; False when over the limit."""
        n = self._pending.get(src, 0) + delta
        if n <= 0:
            self._pending.pop(src, None)
        else:
            self._pending[src] = n
        return n <= self.options.max_pending_per_source

    async def drain(self, grace_s: float) -> None:
        """The broker is stopping: end live work cleanly within ``grace_s`` seconds.

        The listener closes and connections already open get no new session or
        forward (:attr:`draining`).  Every live engineer is told on their terminal
        (and a ``session.warning`` is written) that the broker is restarting; their
        sessions may end by themselves until a few seconds before the grace is over,
        then the rest are ended (``broker_shutdown``: ``session.terminated``, then
        ``session.ended`` with the recording's hash).  Returns when none is left or
        the grace is over; :meth:`close` ends whatever remains."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        reserve = min(5.0, max(1.0, grace_s / 5))  # kept for hashing and end events
        text = (
            f"hoshu: the broker is restarting; this session will be closed within "
            f"{max(1, int(grace_s - reserve))} s. Sign in again in a minute to continue"
        )
        for s in self.sessions.list():
            self.sessions.emit(
                "session.warning",
                EventMessage=text,
                details={"remaining_s": int(grace_s)},
                **s.columns(),
            )
            if s.on_warning is not None:
                with contextlib.suppress(Exception):
                    s.on_warning(text)
        await self.sessions.until_empty(deadline - reserve - loop.time())
        for s in self.sessions.list():
            self.sessions.terminate(s.session_id, by="hoshu", reason="broker_shutdown")
        await self.sessions.until_empty(deadline - loop.time())

    async def close(self) -> None:
        """Stop listening, end every live session and connection."""
        if self._server is not None:
            self._server.close()
        for s in self.sessions.list():
            self.sessions.terminate(s.session_id, by="hoshu", reason="broker_shutdown")
        for conn in list(self._conns):
            conn.close()
        if self._flood_task is not None:
            self._flood_task.cancel()
        try:
            self.flush_floods(everything=True)
        except Exception:
            log.exception("cannot write the sum of failed logins")
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            await self._server.wait_closed()


async def start_front_door(
    settings: BrokerSettings,
    policy: AccessPolicy,
    connector: InstrumentConnector,
    emitter: Emitter,
    recorder_dir: Path,
    host_key: asyncssh.SSHKey,
    *,
    ca: UserCA | None = None,
    options: FrontDoorOptions | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ids: Callable[[], str] = lambda: uuid.uuid4().hex,
    host: str | None = None,
    port: int | None = None,
    recording_opener: Opener | None = None,
    feed: ChangeFeed | None = None,
    db: DbCalls | None = None,
) -> FrontDoor:
    """Listen on ``host:port`` (default: settings.ssh_host/ssh_port; 0 picks a port).

    ``recording_opener``: where recordings are written (default: files in
    ``recorder_dir``; the broker passes its recording store's).  ``feed``: the change
    feed that drives the grant watcher and the fail-closed bound (default: the
    registry polls the policy); ``db``: the pool for blocking policy calls (default:
    ``settings.db_threads`` threads)."""
    opts = options or FrontDoorOptions(
        login_timeout_s=float(settings.login_timeout_s),
        max_recording_bytes=settings.recording_max_mib * 1024**2,
    )
    if options is None:
        opts = replace(
            opts,
            max_session_spool_bytes=settings.spool_session_max_bytes,
            max_spool_bytes=settings.spool_broker_max_bytes,
            forward_capture_dir=settings.forward_capture_path,
            forward_capture_max_bytes=settings.forward_capture_max_bytes,
        )
    if opts.spool_dir is None:
        opts = replace(opts, spool_dir=settings.spool_dir)
    door = FrontDoor(
        policy=policy,
        connector=connector,
        emitter=emitter,
        recorder_dir=recorder_dir,
        options=opts,
        ca=ca,
        clock=clock,
        ids=ids,
    )
    if recording_opener is not None:  # before the first connection is accepted
        door.recording_opener = recording_opener
    door.db = db if db is not None else DbCalls(settings.db_threads)
    door.feed = feed
    server_options = asyncssh.SSHServerConnectionOptions(
        server_factory=lambda: EngineerServer(door),
        server_host_keys=[host_key],
        encoding=None,
        line_editor=False,
        agent_forwarding=False,
        x11_forwarding=False,
        allow_pty=True,
        password_auth=False,
        public_key_auth=True,
        kbdint_auth=True,
        login_timeout=opts.login_timeout_s + 10,  # backstop: the hook tells the client first
        keepalive_interval=60,
        window=8 * 1024 * 1024,
        max_pktsize=32768,
        encryption_algs=list(opts.ciphers),
        compression_algs=None,
        config=[],
    )
    loop = asyncio.get_running_loop()
    listen_host = settings.ssh_host if host is None else host
    listen_port = settings.ssh_port if port is None else port
    server = await loop.create_server(
        server_connection_factory(server_options), listen_host, listen_port
    )
    door.serve(server, host_key)
    return door
