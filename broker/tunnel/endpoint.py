"""The broker's tunnel endpoint: gateways dial in, the broker becomes their SSH client.

:func:`start_tunnel_listener` accepts TCP connections with
``asyncssh.listen_reverse``.  On each one the broker is the SSH *client*:

* the gateway's host key must belong to an enrolled, active gateway
  (:meth:`GatewayDirectory.gateway_for_key`); any other key is refused
  (``gateway.refused``) and the connection closed before the broker offers any
  credential.  The key exchange only notes the key (asyncssh asks for a verdict
  synchronously, on the event loop); the look-up runs when authentication starts,
  which asyncssh awaits, on the bounded database pool (``offload``:
  :class:`broker.live.changes.DbCalls`), so a slow database delays that gateway's
  handshake only, never the loop, other tunnels or running sessions;
* the broker then logs in as ``hoshu-broker`` with its own key, the one the
  gateway pinned at enrolment (public-key authentication only);
* it opens the control channel (:mod:`broker.tunnel.link`) and, for a
  tunnel (not a window check), registers the connection in the
  :class:`TunnelRegistry`, replacing an older one of the same gateway;
* every ``revocation_check_s`` one sweep (:meth:`TunnelListener.sweep_revoked`)
  asks the directory about the keys of all the tunnels held here, in batches of
  :data:`SWEEP_BATCH` per offloaded call, and closes those no longer enrolled;
  every ``windows_interval_s`` another (:meth:`TunnelListener.refresh_windows`)
  sends each tunnel its windows, read the same way (pushes after an approval or
  revocation still go at once, :meth:`TunnelRegistry.push_windows`).  One sweep
  per endpoint, not a timer and a thread hop per tunnel: an idle tunnel costs the
  broker its heartbeats only.

Admission (:mod:`broker.tunnel.admission`): at most ``max_logins`` logins (key
exchange to welcome) run at a time, and no more connections than the process's
descriptors can hold (its limit is raised to the hard limit at start); every
other connection gets the busy answer ("retry in N s", :mod:`wire.busy`) at
once, before any key exchange, and is closed.

Other parts reach instruments through ``registry.connection(gateway_id)``:
``conn.open_connection(host, port)`` or ``asyncssh.connect(..., tunnel=conn)``,
naming the engineer's session in ``orig_host`` (:func:`wire.encode_originator`).
The gateway's own allowlist still decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncssh

from audit.emitter import Emitter
from audit.errors import AuditError
from audit.events import new_event
from broker.settings import BrokerSettings
from broker.tunnel.admission import (
    GatedListener,
    LoginGate,
    LoginTicket,
    connections_allowed,
    raise_open_files_limit,
)
from broker.tunnel.link import (
    BatchDirectory,
    ControlConversation,
    GatewayDirectory,
    Offload,
    ProtocolFailure,
    TunnelRefused,
)
from wire import (
    BROKER_USERNAME,
    GatewayRecord,
    Hello,
    Mode,
    Originator,
    Purpose,
    WireError,
    encode_originator,
)
from wire.names import TUNNEL_CIPHERS, TUNNEL_WINDOW
from wire.sshcompat import coalesce_writes
from wire.transport import CoalescingTransport

log = logging.getLogger(__name__)
CLOCK_DRIFT_WARN_S = 5.0
# tunnels one offloaded call of a sweep asks the directory about; the batches run one
# after the other, so a sweep over thousands of tunnels holds one thread of the pool
SWEEP_BATCH = 256

__all__ = [
    "GatewayDirectory",
    "OriginTunnel",
    "TunnelInfo",
    "TunnelListener",
    "TunnelRegistry",
    "TunnelSettings",
    "TunnelWatcher",
    "start_tunnel_listener",
]


# What the broker lets the gateway send in one packet on a channel through the tunnel
# (asyncssh's default is OpenSSH's 32 KiB; both ends are asyncssh here): an instrument
# session's 128 KiB packets (broker.frontdoor.relay) cross the tunnel whole.
CHANNEL_PKTSIZE = 256 * 1024


class OriginTunnel:
    """A gateway connection that names the engineer's session on every channel.

    Pass it as ``asyncssh.connect(host, port, tunnel=OriginTunnel(conn, who))``:
    each ``direct-tcpip`` channel then carries ``orig_host`` =
    :func:`wire.encode_originator`, which the gateway writes into its audit copy.
    """

    def __init__(self, conn: asyncssh.SSHClientConnection, originator: Originator) -> None:
        self.conn = conn
        self.orig_host = encode_originator(originator)

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[Any, Any]:
        def coalesced() -> Any:
            """The broker's SSH connection to the instrument, writing into the tunnel
            channel once per loop pass: asyncssh puts an ignore packet before each of
            its packets, and each write would be a tunnel packet of its own."""
            session = session_factory()
            made = session.connection_made

            def connection_made(chan: Any) -> None:
                made(CoalescingTransport(chan))

            session.connection_made = connection_made
            return session

        return await self.conn.create_connection(
            coalesced,
            remote_host,
            remote_port,
            orig_host=self.orig_host,
            window=TUNNEL_WINDOW,
            max_pktsize=CHANNEL_PKTSIZE,
        )

    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]:
        reader, writer = await self.conn.open_connection(
            host, port, orig_host=self.orig_host, window=TUNNEL_WINDOW, max_pktsize=CHANNEL_PKTSIZE
        )
        return reader, writer


@dataclass(frozen=True, slots=True)
class TunnelSettings:
    host: str = "127.0.0.1"
    port: int = 2223  # 0 picks a free port (tests)
    login_timeout_s: float = 10.0
    heartbeat_s: float = 10.0
    heartbeat_misses: int = 3
    windows_interval_s: float = 30.0
    revocation_check_s: float = 2.0  # a revoked gateway's live tunnel closes within this
    broker_version: str = "0.1.0"
    replica_id: str = ""  # told to each tunnel (protocol 2), named in a refusal
    max_logins: int = 64  # logins (key exchange to welcome) at a time; the rest: busy
    busy_retry_s: float = 2.0  # the shortest "retry in N s" a shed gateway is told
    fd_reserve: int = 1024  # descriptors kept for everything but tunnels (at most 1/4)

    @classmethod
    def from_broker(cls, settings: BrokerSettings, **overrides: Any) -> TunnelSettings:
        """The tunnel endpoint of a broker process (``HOSHU_TUNNEL_HOST``/``_PORT``)."""
        # the engineers' sign-in limit (settings.login_timeout_s) is for people; a gateway
        # answers in seconds or not at all, so its hello keeps the tunnel's own limit
        values: dict[str, Any] = {
            "host": settings.tunnel_host,
            "port": settings.tunnel_port,
            "replica_id": settings.replica_id or socket.gethostname(),
            "max_logins": settings.tunnel_max_logins,
            "busy_retry_s": settings.tunnel_busy_retry_s,
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class TunnelInfo:
    """A live gateway tunnel, as ``hoshu gateway list`` would show it."""

    record: GatewayRecord
    conn: asyncssh.SSHClientConnection
    since: datetime
    mode: Mode
    gateway_version: str
    key_fingerprint: str
    peer: str
    conversation: ControlConversation = field(repr=False)
    clock_offset_s: float = 0.0  # gateway clock minus broker clock, at hello
    # this connection's nonce in the database's tunnel registry (broker.tunnel.cluster)
    epoch: str = field(default_factory=lambda: secrets.token_hex(16))

    def same_run_other_slot(self, hello: Hello) -> bool:
        """``hello`` is another tunnel of the agent run that holds this one (protocol 2):
        not a redial of this slot, nor a restarted gateway, which replace it."""
        mine = self.conversation.hello
        return (
            mine is not None
            and mine.instance is not None
            and hello.instance == mine.instance
            and hello.slot != mine.slot
        )


class TunnelWatcher(Protocol):
    """Told when a tunnel comes up or goes (the cluster registry: :mod:`broker.tunnel.peer`)."""

    def tunnel_up(self, info: TunnelInfo) -> None: ...

    def tunnel_down(self, info: TunnelInfo) -> None: ...


class TunnelRegistry:
    """gateway_id -> the live reverse connection of that gateway."""

    def __init__(self) -> None:
        self._tunnels: dict[str, TunnelInfo] = {}
        self._changed = asyncio.Condition()
        self.acked_seq: dict[str, int] = {}
        self.watchers: list[TunnelWatcher] = []

    def connection(self, gateway_id: str) -> asyncssh.SSHClientConnection | None:
        """The live connection to the gateway, or None when it has no tunnel up."""
        info = self._tunnels.get(gateway_id)
        return info.conn if info is not None else None

    def tunnel(self, gateway_id: str, session_id: str, engineer: str) -> OriginTunnel | None:
        """The gateway's connection, naming this session and engineer on each channel."""
        conn = self.connection(gateway_id)
        return OriginTunnel(conn, Originator(session_id, engineer)) if conn else None

    def info(self, gateway_id: str) -> TunnelInfo | None:
        return self._tunnels.get(gateway_id)

    def tunnels(self) -> list[TunnelInfo]:
        return list(self._tunnels.values())

    def __len__(self) -> int:
        return len(self._tunnels)

    async def wait_for(self, gateway_id: str, wait_s: float) -> asyncssh.SSHClientConnection:
        """Wait until the gateway's tunnel is up; TimeoutError otherwise."""

        async def _wait() -> asyncssh.SSHClientConnection:
            async with self._changed:
                await self._changed.wait_for(lambda: gateway_id in self._tunnels)
                return self._tunnels[gateway_id].conn

        return await asyncio.wait_for(_wait(), wait_s)

    async def wait_gone(self, gateway_id: str, wait_s: float) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: gateway_id not in self._tunnels)

        await asyncio.wait_for(_wait(), wait_s)

    def push_windows(self, gateway_id: str) -> bool:
        """Send the gateway its windows now (after an approval or revocation)."""
        info = self._tunnels.get(gateway_id)
        if info is None:
            return False
        info.conversation.windows_wanted.set()
        return True

    def disconnect(self, gateway_id: str, reason: str) -> bool:
        info = self._tunnels.get(gateway_id)
        if info is None:
            return False
        info.conversation.bye(reason)
        info.conn.close()
        return True

    def holder_for(self, gateway_id: str, hello: Hello) -> TunnelInfo | None:
        """The live tunnel that makes ``hello`` a second tunnel of the same gateway on
        this replica (refused: one replica holds at most one), or None."""
        old = self._tunnels.get(gateway_id)
        if old is None or old.conn.is_closed() or not old.same_run_other_slot(hello):
            return None
        return old

    def admit(self, info: TunnelInfo) -> TunnelInfo | None:
        """Hold ``info`` at once (no await, so two hellos of one gateway cannot both pass)
        unless :meth:`holder_for` refuses it: then the holder is returned, nothing held.
        An older tunnel it replaces is told bye and closed; :meth:`add` announces it."""
        hello = info.conversation.hello
        holder = self.holder_for(info.record.gateway_id, hello) if hello is not None else None
        if holder is not None and holder.conn is not info.conn:
            return holder
        old = self._tunnels.get(info.record.gateway_id)
        if old is not None and old.conn is not info.conn:
            old.conversation.bye("replaced by a newer connection")
            old.conn.close()
        self._tunnels[info.record.gateway_id] = info
        return None

    async def add(self, info: TunnelInfo) -> None:
        """Register a gateway's tunnel; an older one of the same gateway is told bye and closed."""
        old = self._tunnels.get(info.record.gateway_id)
        if old is not None and old.conn is not info.conn:
            old.conversation.bye("replaced by a newer connection")
            old.conn.close()
        async with self._changed:
            self._tunnels[info.record.gateway_id] = info
            self._changed.notify_all()
        for w in self.watchers:
            w.tunnel_up(info)

    async def remove(self, info: TunnelInfo) -> None:
        """Forget ``info`` unless a newer tunnel of the same gateway replaced it."""
        async with self._changed:
            if self._tunnels.get(info.record.gateway_id) is info:
                del self._tunnels[info.record.gateway_id]
            self._changed.notify_all()
        for w in self.watchers:
            w.tunnel_down(info)  # a replaced connection's epoch no longer matches: no-op


class _BrokerClient(asyncssh.SSHClient):
    """Client side of one reverse connection: authenticates the gateway by its host key.

    The key exchange notes the gateway's key (:meth:`validate_host_public_key` must
    answer synchronously, so it does not ask the database); the verdict comes when
    asyncssh asks for the broker's key (:meth:`public_key_auth_requested`, awaited),
    off the loop: an unknown key is refused and the connection closed before the
    broker's key is offered."""

    def __init__(
        self,
        directory: GatewayDirectory,
        emit: Callable[..., None],
        client_key: asyncssh.SSHKey,
        offload: Offload,
        gate: LoginGate | None = None,
    ) -> None:
        self._gate = gate
        self.ticket: LoginTicket | None = None  # this login's place under the bound
        self._directory = directory
        self._emit = emit
        self._client_key = client_key
        self._offload = offload
        self._conn: asyncssh.SSHClientConnection | None = None
        self._offered = False
        self.record: GatewayRecord | None = None
        self.fingerprint = ""
        self.key_line = ""
        self.addr = ""

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        if self._gate is not None:
            self.ticket = self._gate.claim(conn)
        # called before asyncssh writes anything: from here on the tunnel's packets (each
        # with the ignore packet asyncssh puts before it) leave joined per loop pass, as
        # the gateway's side already sends them (see wire.transport.CoalescingTransport)
        coalesce_writes(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended: a login still under the bound frees its place."""
        if self.ticket is not None:
            self.ticket.release()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        """Note the gateway's key; whether it is an enrolled gateway's is decided before
        the broker authenticates (:meth:`public_key_auth_requested`)."""
        self.fingerprint = key.get_fingerprint()
        self.key_line = key.export_public_key().decode().strip()
        self.addr = addr
        return True

    async def public_key_auth_requested(self) -> list[asyncssh.SSHKey] | None:
        """The broker's key, once the gateway's key is an enrolled, active gateway's;
        None (and the connection closed, ``gateway.refused``) for any other key."""
        if self._offered or not self.key_line:
            return None  # one offer per connection; no key noted: nothing to trust
        self._offered = True
        try:
            record = await self._offload(self._directory.gateway_for_key, self.key_line)
        except Exception as exc:  # a failing store refuses, it does not admit
            log.error("gateway directory failed: %s", exc)
            record = None
        if record is None:
            log.warning(
                "refused gateway from %s: key %s is not enrolled", self.addr, self.fingerprint
            )
            self._emit(
                "gateway.refused",
                EventResult="Failure",
                SrcIpAddr=self.addr,
                EventResultDetails="host key is not an enrolled gateway key",
                details={"key_fingerprint": self.fingerprint},
            )
            if self._conn is not None:
                self._conn.close()
            return None
        self.record = record
        return [self._client_key]


class TunnelListener:
    """A running tunnel endpoint; ``port`` is the bound port."""

    def __init__(
        self,
        settings: TunnelSettings,
        host_key: asyncssh.SSHKey,
        directory: GatewayDirectory,
        emitter: Emitter,
        registry: TunnelRegistry,
        clock: Callable[[], datetime],
        offload: Offload | None = None,
    ) -> None:
        self.settings = settings
        self._offload = offload
        self.registry = registry
        self._host_key = host_key
        self._directory = directory
        self._emitter = emitter
        self._clock = clock
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweepers: list[asyncio.Task[None]] = []
        self.port = 0
        self.gate: LoginGate | None = None

    def _emit(self, type_: str, **columns: Any) -> None:
        try:
            self._emitter.emit(new_event(type_, clock=self._clock, DvcRole="broker", **columns))
        except AuditError as exc:
            log.error("cannot write %s: %s", type_, exc)

    async def start(self) -> None:
        s = self.settings
        gate = LoginGate(
            s.max_logins,
            s.busy_retry_s,
            max_connections=connections_allowed(raise_open_files_limit(), s.fd_reserve),
            held=self.registry.__len__,
        )
        self.gate = gate
        self._acceptor = await asyncssh.listen_reverse(
            s.host,
            s.port,
            # asks the gate before each connection: past the bound, the busy answer
            tunnel=GatedListener(gate, backlog=4096),  # after a restart all gateways dial
            client_factory=lambda: _BrokerClient(
                self._directory,
                self._emit,
                self._host_key,
                self._offload or asyncio.to_thread,
                gate,
            ),
            username=BROKER_USERNAME,
            client_keys=None,  # offered by _BrokerClient once the gateway is known
            preferred_auth=("publickey",),
            known_hosts=lambda host, addr, port: ([], [], []),
            x509_trusted_certs=None,
            agent_path=None,
            config=None,
            password=None,
            kbdint_auth=False,
            gss_host=None,
            login_timeout=s.login_timeout_s,
            # the control channel's heartbeats are the liveness check (a tunnel silent for
            # heartbeat_s * misses is closed); an SSH keepalive every heartbeat_s would
            # fire between two of the gateway's beats on nearly every idle tunnel, one
            # more round trip each per beat. It stays as a backstop past that silence.
            keepalive_interval=s.heartbeat_s * s.heartbeat_misses,
            keepalive_count_max=1,
            acceptor=self._accepted,
            error_handler=self._failed,
            encryption_algs=list(TUNNEL_CIPHERS),
            window=TUNNEL_WINDOW,
        )
        self.port = self._acceptor.get_port()
        if s.revocation_check_s > 0:
            self._sweepers.append(
                asyncio.create_task(self._every(s.revocation_check_s, self.sweep_revoked))
            )
        if s.windows_interval_s > 0:
            self._sweepers.append(
                asyncio.create_task(self._every(s.windows_interval_s, self.refresh_windows))
            )
        log.info(
            "tunnel endpoint listening on %s:%d (at most %d logins at a time, %d connections)",
            s.host,
            self.port,
            gate.max_logins,
            gate.max_connections,
        )

    async def _every(self, interval_s: float, sweep: Callable[[], Awaitable[int]]) -> None:
        """Run ``sweep`` every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await sweep()
            except Exception as exc:  # a sweep that breaks must not end the next ones
                log.error("tunnel sweep failed: %s", exc)

    async def refresh_windows(self) -> int:
        """Send every tunnel held here its current windows; returns how many were sent.

        The directory is read off the event loop, :data:`SWEEP_BATCH` gateways per
        offloaded call; a batch the store cannot answer keeps the windows its gateways
        have (logged) until the next sweep or push."""
        held = [i for i in self.registry.tunnels() if i.conversation.channel is not None]
        offload = self._offload or asyncio.to_thread
        sent = 0
        for start in range(0, len(held), SWEEP_BATCH):
            batch = held[start : start + SWEEP_BATCH]
            now = self._clock()
            ids = [i.record.gateway_id for i in batch]
            try:
                spans = await offload(_windows_for_gateways, self._directory, ids, now)
            except Exception as exc:  # the store failing must not drop the tunnels
                log.error("cannot read windows for %d gateway(s): %s", len(batch), exc)
                continue
            for info, theirs in zip(batch, spans, strict=True):
                if self.registry.info(info.record.gateway_id) is not info:
                    continue  # replaced since
                try:
                    info.conversation.send_window_spans(theirs, now)
                except (OSError, asyncssh.Error) as exc:  # closing: its own task ends it
                    log.info("windows not sent to gateway %s: %s", info.record.name, exc)
                    continue
                sent += 1
        return sent

    async def sweep_revoked(self) -> int:
        """Close every tunnel held here whose key is no longer an enrolled, active
        gateway's (bye, then ``gateway.disconnected`` saying revoked); returns how many.

        The directory is asked off the event loop, :data:`SWEEP_BATCH` keys per
        offloaded call.  A batch the store cannot answer keeps its tunnels (a reconnect
        still fails closed at the host key) and is asked again at the next sweep."""
        held = [
            i
            for i in self.registry.tunnels()
            if i.conversation.key_line and not i.conversation.revoked
        ]
        offload = self._offload or asyncio.to_thread
        closed = 0
        for start in range(0, len(held), SWEEP_BATCH):
            batch = held[start : start + SWEEP_BATCH]
            keys = [i.conversation.key_line for i in batch]
            try:
                records = await offload(_gateways_for_keys, self._directory, keys)
            except Exception as exc:  # the store failing keeps the tunnels
                log.error("cannot check the enrolment of %d gateway(s): %s", len(batch), exc)
                continue
            for info, record in zip(batch, records, strict=True):
                if record is not None and record.gateway_id == info.record.gateway_id:
                    continue
                if self.registry.info(info.record.gateway_id) is info:  # not replaced since
                    info.conversation.revoke()
                    closed += 1
        return closed

    def _failed(self, conn: asyncssh.SSHClientConnection, exc: Exception) -> None:
        log.info("gateway connection failed before it was established: %s", exc)

    def _accepted(self, conn: asyncssh.SSHClientConnection) -> None:
        task = asyncio.create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: asyncssh.SSHClientConnection) -> None:
        client = conn.get_owner()
        record = client.record if isinstance(client, _BrokerClient) else None
        if record is None:  # cannot happen: the host key check ran first
            conn.close()
            return
        s = self.settings
        conv = ControlConversation(
            conn,
            record,
            directory=self._directory,
            emitter=self._emitter,
            clock=self._clock,
            broker_version=s.broker_version,
            heartbeat_s=s.heartbeat_s,
            heartbeat_misses=s.heartbeat_misses,
            windows_interval_s=0,  # refreshed by the endpoint's sweep (refresh_windows)
            key_line=client.key_line if isinstance(client, _BrokerClient) else "",
            offload=self._offload,
            replica=s.replica_id,
        )
        conv.acked_seq = self.registry.acked_seq.get(record.gateway_id, 0)
        peer = str((conn.get_extra_info("peername") or ("?",))[0])
        info: TunnelInfo | None = None
        fingerprint = client.fingerprint if isinstance(client, _BrokerClient) else ""

        def admit(hello: Hello) -> tuple[str, str] | None:
            """Hold a tunnel now (before the welcome), or refuse a second one of this
            gateway's run: each of its tunnels must reach a different replica."""
            nonlocal info
            if hello.purpose is not Purpose.TUNNEL:
                return None
            offset = round((hello.gateway_time - self._clock()).total_seconds(), 1)
            candidate = TunnelInfo(
                record,
                conn,
                self._clock(),
                hello.mode,
                hello.gateway_version,
                fingerprint,
                peer,
                conv,
                offset,
            )
            if self.registry.admit(candidate) is not None:
                return self._refuse_second(record, peer, fingerprint, hello)
            info = candidate
            return None

        ticket = client.ticket if isinstance(client, _BrokerClient) else None
        try:
            hello = await conv.open(s.login_timeout_s, admit)
            if ticket is not None:
                ticket.release(logged_in=True)  # the login is done: the next may start
            offset = round((hello.gateway_time - self._clock()).total_seconds(), 1)
            if abs(offset) > CLOCK_DRIFT_WARN_S:
                log.warning(
                    "gateway %s clock is %+.1f s off the broker's: its audit times drift",
                    record.name,
                    offset,
                )
            if info is not None:
                await self.registry.add(info)
                self._emit(
                    "gateway.connected",
                    GatewayId=record.gateway_id,
                    HospitalId=record.hospital_id,
                    SrcIpAddr=peer,
                    details={
                        "key_fingerprint": info.key_fingerprint,
                        "version": hello.gateway_version,
                        "mode": str(hello.mode),
                        "clock_offset_s": offset,
                    },
                )
                log.info(
                    "gateway %s connected (%s, %s)", record.name, hello.mode, hello.gateway_version
                )
            await conv.serve()
        except TunnelRefused:
            pass  # told, logged and audited by _refuse_second
        except (ProtocolFailure, WireError, TimeoutError, EOFError, OSError, asyncssh.Error) as exc:
            log.warning(
                "gateway %s control channel failed: %s", record.name, exc or type(exc).__name__
            )
        finally:
            self.registry.acked_seq[record.gateway_id] = max(
                conv.acked_seq, self.registry.acked_seq.get(record.gateway_id, 0)
            )
            conn.close()
            if info is not None:
                await self.registry.remove(info)
                why = (
                    {
                        "EventResult": "Failure",
                        "EventSeverity": "Medium",
                        "EventResultDetails": "revoked: the gateway's enrolment was revoked, "
                        "its tunnel closed",
                    }
                    if conv.revoked
                    else {}
                )
                self._emit(
                    "gateway.disconnected",
                    GatewayId=record.gateway_id,
                    HospitalId=record.hospital_id,
                    **why,
                    details={"connected_s": int((self._clock() - info.since).total_seconds())},
                )

    def _refuse_second(
        self, record: GatewayRecord, peer: str, fingerprint: str, hello: Hello
    ) -> tuple[str, str]:
        replica = self.settings.replica_id or "this replica"
        reason = f"already connected to replica {replica}"
        log.warning(
            "refused a second tunnel of gateway %s (slot %s) from %s: %s",
            record.name,
            hello.slot,
            peer,
            reason,
        )
        self._emit(
            "gateway.refused",
            EventResult="Failure",
            GatewayId=record.gateway_id,
            HospitalId=record.hospital_id,
            SrcIpAddr=peer,
            EventResultDetails=f"{reason}: one tunnel per gateway per replica",
            details={"key_fingerprint": fingerprint},
        )
        return ("already_connected", reason)

    async def close(self) -> None:
        """Stop listening and drop every gateway connection."""
        for sweeper in self._sweepers:
            sweeper.cancel()
        await asyncio.gather(*self._sweepers, return_exceptions=True)
        self._sweepers = []
        if self._acceptor is not None:
            self._acceptor.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._acceptor.wait_closed(), 5)
            self._acceptor = None
        for info in self.registry.tunnels():
            info.conn.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _gateways_for_keys(
    directory: GatewayDirectory, key_lines: list[str]
) -> list[GatewayRecord | None]:
    """The enrolled gateway of each key, in order (one blocking call for a batch; one
    query for it where the directory answers batches, as the store does)."""
    if isinstance(directory, BatchDirectory):
        return directory.gateways_for_keys(key_lines)
    return [directory.gateway_for_key(k) for k in key_lines]


def _windows_for_gateways(
    directory: GatewayDirectory, gateway_ids: list[str], now: datetime
) -> list[list[tuple[datetime, datetime]]]:
    """Each gateway's windows at ``now``, in order (one blocking call for a batch; a
    few queries for it where the directory answers batches)."""
    if isinstance(directory, BatchDirectory):
        return directory.windows_for_gateways(gateway_ids, now)
    return [directory.windows_for(g, now) for g in gateway_ids]


async def start_tunnel_listener(
    settings: TunnelSettings,
    host_key: asyncssh.SSHKey,
    directory: GatewayDirectory,
    emitter: Emitter,
    *,
    registry: TunnelRegistry | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    offload: Offload | None = None,
) -> TunnelListener:
    """Listen for gateways on ``settings.host:settings.port``; returns the running listener.

    ``offload`` runs the directory's windows, inventory and enrolment calls off the
    event loop (the broker's database pool; default ``asyncio.to_thread``)."""
    listener = TunnelListener(
        settings,
        host_key,
        directory,
        emitter,
        registry if registry is not None else TunnelRegistry(),  # an empty one is falsy
        clock,
        offload,
    )
    await listener.start()
    return listener
