"""The link between broker replicas: forward, don't redirect.

The replica an engineer lands on does sign-in, MFA, the grant check and the
recording, whichever replica holds the gateway's tunnel.  When it holds none,
:meth:`PeerLink.route` asks the database (:mod:`broker.tunnel.cluster`) which
live replica does and opens the instrument connection *through* that replica:

* an SSH connection (asyncssh) from this replica to the holder's peer port,
  logging in as this replica's id with this replica's peer key;
* each side checks the other against the replica table: the client accepts only
  the host key pinned for the holder's id, the server accepts only the client key
  pinned for the id it logs in as.  A missing pin or a different key refuses the
  link (fail closed) and writes ``replica.peer_refused``;
* a ``direct-tcpip`` channel names ``<gateway id>/<instrument>`` and the port, and
  carries the engineer's originator (session id, engineer) in ``orig_host``
  unchanged; the holder splices it onto its own gateway tunnel with the same
  originator, so the gateway's audit copy names the engineer.  The gateway's
  allowlist decides as always; its refusal comes back as the channel's refusal.

The holder only splices bytes: nothing is recorded twice and no session runs
there.  Denied on the server side: shell/exec sessions, remote forwards, password
and keyboard-interactive logins (asyncssh's defaults plus the hooks below).

Membership: :meth:`PeerLink.run` registers this replica (its peer address and key)
and beats every :data:`~broker.tunnel.cluster.HEARTBEAT_S` s, for itself and then
for all the tunnels it holds, a few hundred rows per statement;
:class:`~broker.tunnel.endpoint.TunnelRegistry` tells it when tunnels come and go
(it is a :class:`~broker.tunnel.endpoint.TunnelWatcher`).
On close it deregisters, so the others stop routing here at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncssh
import sqlalchemy as sa

from audit.emitter import Emitter
from audit.errors import AuditError
from audit.events import new_event
from broker.keys.files import load_or_create_ssh_key
from broker.settings import BrokerSettings
from broker.tunnel.cluster import BATCH, HEARTBEAT_S, ClusterRegistry, ClusterWriter, Replica
from broker.tunnel.endpoint import TunnelInfo, TunnelRegistry
from broker.tunnel.errors import GatewayOffline
from wire import Originator, decode_originator, encode_originator
from wire.names import TUNNEL_CIPHERS, TUNNEL_WINDOW

log = logging.getLogger(__name__)

DEST_SEP = "/"
CONNECT_TIMEOUT_S = 5.0
# listening everywhere: advertise this host's own address instead
WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 (compared with, not bound)
KEEPALIVE_S = 5.0


@dataclass(frozen=True, slots=True)
class PeerSettings:
    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port (tests)
    advertise_host: str = ""  # what the others dial; empty: host

    @property
    def advertised(self) -> str:
        """What the others dial: ``advertise_host``; else ``host`` unless it is a
        wildcard, then this host's own address (a container's, from its host name),
        refused when that is a loopback address no other replica could reach."""
        if self.advertise_host:
            return self.advertise_host
        if self.host not in WILDCARDS:
            return self.host
        own = socket.gethostbyname(socket.gethostname())
        if ipaddress.ip_address(own).is_loopback:
            raise ValueError(
                f"the peer link listens on {self.host} and this host's name resolves to "
                f"{own}, which the other replicas cannot reach: set HOSHU_ADVERTISE_HOST"
            )
        return own


def peer_destination(gateway_id: str, instrument: str) -> str:
    return f"{gateway_id}{DEST_SEP}{instrument}"


class PeerTunnel:
    """A gateway tunnel held by another replica, reached over the peer link.

    The same shape as :class:`broker.tunnel.endpoint.OriginTunnel`, so
    ``asyncssh.connect(..., tunnel=PeerTunnel(...))`` works as through a local tunnel.
    """

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        gateway_id: str,
        originator: Originator,
        holder: str,
    ) -> None:
        self.conn = conn
        self.gateway_id = gateway_id
        self.holder = holder
        self.orig_host = encode_originator(originator)

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[Any, Any]:
        return await self.conn.create_connection(
            session_factory,
            peer_destination(self.gateway_id, remote_host),
            remote_port,
            orig_host=self.orig_host,
        )

    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]:
        reader, writer = await self.conn.open_connection(
            peer_destination(self.gateway_id, host), port, orig_host=self.orig_host
        )
        return reader, writer


class _Splice(asyncssh.SSHTCPSession[bytes]):
    """One end of a channel-to-channel splice (the holder's relay)."""

    def __init__(self, other: _Splice | None = None) -> None:
        self.other = other
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._pending: list[bytes] = []
        self._eof_pending = False
        if other is not None:
            other.other = self

    def send(self, data: bytes) -> None:
        if self.chan is None:
            self._pending.append(data)
        else:
            self.chan.write(data)

    def send_eof(self) -> None:
        if self.chan is None:
            self._eof_pending = True
        else:
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.write_eof()

    def hold(self, paused: bool) -> None:
        """Stop (or start again) reading from this end: the other end cannot send."""
        if self.chan is not None:
            if paused:
                self.chan.pause_reading()
            else:
                self.chan.resume_reading()

    def drop(self) -> None:
        self.other = None
        if self.chan is not None:
            self.chan.close()

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan
        for data in self._pending:
            chan.write(data)
        self._pending.clear()
        if self._eof_pending:
            self.send_eof()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.other is not None:
            self.other.send(data)

    def eof_received(self) -> bool:
        if self.other is not None:
            self.other.send_eof()
        return True  # half-close: the other way may still carry data

    def pause_writing(self) -> None:
        if self.other is not None:
            self.other.hold(True)

    def resume_writing(self) -> None:
        if self.other is not None:
            self.other.hold(False)

    def connection_lost(self, exc: Exception | None) -> None:
        other, self.other = self.other, None
        if other is not None:
            other.drop()


class _PeerServer(asyncssh.SSHServer):
    """The holder's side of one peer connection: a pinned replica may splice channels."""

    def __init__(self, link: PeerLink) -> None:
        self._link = link
        self._addr = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._addr = str((conn.get_extra_info("peername") or ("?",))[0])

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Only the key pinned for replica ``username``; anything else is refused and
        audited."""
        return await self._link.check_client(username, key, self._addr)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Coroutine[Any, Any, _Splice]:
        """Splice onto this replica's tunnel of the named gateway, or refuse the channel."""
        return self._link.splice(dest_host, dest_port, orig_host)


class PeerLink:
    """This replica's side of the cluster: membership, the peer server, peer routes."""

    def __init__(
        self,
        settings: PeerSettings,
        key: asyncssh.SSHKey,
        cluster: ClusterRegistry,
        tunnels: TunnelRegistry,
        emitter: Emitter,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.replica_id = cluster.replica_id
        self._key = key
        self._key_line = key.export_public_key().decode().strip()
        self._tunnels = tunnels
        self._emitter = emitter
        self._clock = clock
        self._writer = ClusterWriter(cluster)
        self._beats: dict[str, int] = {}  # epoch -> last beat written
        self._pending: set[asyncio.Task[Any]] = set()
        self._conns: dict[str, tuple[str, asyncssh.SSHClientConnection]] = {}
        self._dialing: dict[str, asyncio.Lock] = {}
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._leaving = False
        self.port = 0
        tunnels.watchers.append(self)

    # --- audit ----------------------------------------------------------------------

    def _refused(self, replica: str, fingerprint: str, why: str, addr: str = "") -> None:
        log.error("peer link with replica %s refused: %s", replica, why)
        try:
            self._emitter.emit(
                new_event(
                    "replica.peer_refused",
                    clock=self._clock,
                    DvcRole="broker",
                    EventResult="Failure",
                    EventResultDetails=why,
                    SrcIpAddr=addr or None,
                    details={"replica": replica, "key_fingerprint": fingerprint},
                )
            )
        except AuditError as exc:
            log.error("cannot write replica.peer_refused: %s", exc)

    # --- membership -----------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the peer port and register (raises PinConflict on a foreign pin)."""
        s = self.settings
        self._acceptor = await asyncssh.listen(
            s.host,
            s.port,
            server_factory=lambda: _PeerServer(self),
            server_host_keys=[self._key],
            authorized_client_keys=None,
            config=None,
            allow_pty=False,
            x11_forwarding=False,
            agent_forwarding=False,
            allow_scp=False,
            login_timeout=CONNECT_TIMEOUT_S,
            keepalive_interval=KEEPALIVE_S,
            keepalive_count_max=3,
            encryption_algs=list(TUNNEL_CIPHERS),
            window=TUNNEL_WINDOW,
            reuse_address=True,
        )
        self.port = self._acceptor.get_port()
        await self._writer.call(self.cluster.register, s.advertised, self.port, self._key_line)
        log.info("replica %s: peer link on %s:%d", self.replica_id, s.host, self.port)

    async def run(self) -> None:
        """Beat until cancelled: this replica, then every tunnel it holds."""
        while not self._leaving:
            try:
                await self.beat_round()
            except Exception as exc:  # our rows go stale: the others stop routing here
                log.error("replica heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def beat_round(self) -> None:
        """One heartbeat: this replica's row first, then every tunnel it holds, one
        statement per :data:`~broker.tunnel.cluster.BATCH` tunnels
        (:meth:`~broker.tunnel.cluster.ClusterRegistry.tunnel_beats`), not a transaction
        each.

        A tunnel whose row was not refreshed (gone, another epoch's, or a beat not newer)
        is claimed again, our memory being the truth for our own rows, unless it is no
        longer this replica's current tunnel of its gateway (replaced or closed during
        the round: the newer connection's claim and the close stand) or the replica is
        leaving.  That check and the queueing of the claim happen in one step of the
        event loop, so the write of a tunnel that comes up or goes later is queued after
        the claim."""
        if self._leaving:
            return  # deregistered or about to be: a beat would make it look alive again
        await self._writer.call(self.cluster.beat)
        held = self._tunnels.tunnels()
        lost: list[TunnelInfo] = []
        for start in range(0, len(held), BATCH):
            chunk = held[start : start + BATCH]
            beats = [(i.record.gateway_id, i.epoch, self._beats.get(i.epoch, 0) + 1) for i in chunk]
            done = await self._writer.call(self.cluster.tunnel_beats, beats)
            for info, (gw, epoch, n) in zip(chunk, beats, strict=True):
                if self._tunnels.info(gw) is not info:
                    continue  # closed or replaced meanwhile: its memory is gone or going
                if (gw, epoch) in done:
                    self._beats[epoch] = n
                else:
                    lost.append(info)
        lost = [i for i in lost if self._tunnels.info(i.record.gateway_id) is i]
        if lost and not self._leaving:
            await self._writer.call(
                self.cluster.tunnels_up, [(i.record.gateway_id, i.epoch) for i in lost]
            )
            for info in lost:
                if self._tunnels.info(info.record.gateway_id) is info:
                    self._beats[info.epoch] = 0

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        async def run() -> None:
            try:
                await self._writer.call(fn, *args)
            except Exception as exc:  # the next heartbeat repairs a missed claim
                log.error("tunnel registry write failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def tunnel_up(self, info: TunnelInfo) -> None:
        if self._leaving:
            return  # a draining replica takes no new claims: gateways use the others
        self._beats[info.epoch] = 0
        self._later(self.cluster.tunnel_up, info.record.gateway_id, info.epoch)

    async def leave(self) -> None:
        """Drain: the others stop routing here now (rows dropped, no more beats);
        channels already spliced keep running until the process stops."""
        self._leaving = True
        await asyncio.gather(*self._pending, return_exceptions=True)
        try:
            await self._writer.call(self.cluster.deregister)
        except Exception as exc:
            log.error("replica %s could not deregister: %s", self.replica_id, exc)

    def tunnel_down(self, info: TunnelInfo) -> None:
        self._beats.pop(info.epoch, None)
        self._later(self.cluster.tunnel_down, info.record.gateway_id, info.epoch)

    async def close(self) -> None:
        """Stop listening, drop peer connections, deregister."""
        if self in self._tunnels.watchers:
            self._tunnels.watchers.remove(self)
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None
        for _, conn in self._conns.values():
            conn.close()
        self._conns.clear()
        await asyncio.gather(*self._pending, return_exceptions=True)
        try:
            await self._writer.call(self.cluster.deregister)
        except Exception as exc:
            log.error("replica %s could not deregister: %s", self.replica_id, exc)
        self._writer.close()

    # --- the holder's side --------------------------------------------------------------

    async def check_client(self, username: str, key: asyncssh.SSHKey, addr: str) -> bool:
        fingerprint = key.get_fingerprint()
        try:
            row = await asyncio.to_thread(self.cluster.replica, username)
        except Exception as exc:  # a failing store refuses, it does not admit
            log.error("replica table lookup failed: %s", exc)
            return False
        if row is None or not row.peer_key:
            self._refused(username, fingerprint, "no peer key is pinned for that replica", addr)
            return False
        if row.peer_key != key.export_public_key().decode().strip():
            self._refused(
                username, fingerprint, "the client key is not the one pinned for that replica", addr
            )
            return False
        return True

    async def splice(self, dest_host: str, dest_port: int, orig_host: str) -> _Splice:
        gateway_id, sep, instrument = dest_host.partition(DEST_SEP)
        who = decode_originator(orig_host)
        if not sep or not gateway_id or not instrument or who is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, "not a gateway/instrument with an originator"
            )
        tunnel = self._tunnels.tunnel(gateway_id, who.session_id, who.engineer)
        if tunnel is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED,
                f"replica {self.replica_id} holds no tunnel to that gateway",
            )
        front = _Splice()
        try:
            await tunnel.create_connection(lambda: _Splice(front), instrument, dest_port)
        except asyncssh.ChannelOpenError:
            raise  # the gateway's own refusal, with its reason
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"the gateway tunnel failed ({type(exc).__name__})"
            ) from exc
        return front

    # --- the engineer's side ------------------------------------------------------------

    async def route(self, gateway_id: str, originator: Originator) -> PeerTunnel | None:
        """A tunnel to ``gateway_id`` through the live replica holding one, or None.

        Raises :class:`GatewayOffline` (after ``replica.peer_refused``) when the only
        holders cannot be reached safely: pin missing, or their key differs from it.
        """
        try:
            holders = await asyncio.to_thread(self.cluster.holders, gateway_id)
        except Exception as exc:
            log.error("tunnel registry lookup failed: %s", exc)
            return None
        refused = ""
        for holder in holders:
            try:
                conn = await self._connection(holder)
            except GatewayOffline as exc:
                refused = str(exc)
                continue
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                log.warning(
                    "replica %s (%s:%d) cannot be reached: %s",
                    holder.replica_id,
                    holder.peer_host,
                    holder.peer_port,
                    exc or type(exc).__name__,
                )
                continue
            return PeerTunnel(conn, gateway_id, originator, holder.replica_id)
        if refused:
            raise GatewayOffline(refused)
        return None

    async def _connection(self, holder: Replica) -> asyncssh.SSHClientConnection:
        rid = holder.replica_id
        lock = self._dialing.setdefault(rid, asyncio.Lock())
        async with lock:
            cached = self._conns.get(rid)
            if cached is not None:
                pin, conn = cached
                if pin == holder.peer_key and not conn.is_closed():
                    return conn
                conn.close()
                del self._conns[rid]
            if not holder.peer_key:
                self._refused(rid, "", "no peer key is pinned for that replica")
                raise GatewayOffline(
                    f"broker replica {rid} holds the tunnel but has no "
                    "pinned peer key: refusing to forward"
                )
            try:
                pinned = asyncssh.import_public_key(holder.peer_key)
            except (ValueError, asyncssh.KeyImportError) as exc:
                self._refused(rid, "", "the pinned peer key cannot be read")
                raise GatewayOffline(
                    f"broker replica {rid}'s pinned peer key cannot be read: refusing to forward"
                ) from exc
            try:
                conn = await asyncio.wait_for(
                    asyncssh.connect(
                        holder.peer_host,
                        holder.peer_port,
                        username=self.replica_id,
                        client_keys=[self._key],
                        known_hosts=([pinned], [], []),
                        config=None,
                        agent_path=None,
                        password=None,
                        kbdint_auth=False,
                        gss_host=None,
                        x509_trusted_certs=None,
                        login_timeout=CONNECT_TIMEOUT_S,
                        keepalive_interval=KEEPALIVE_S,
                        keepalive_count_max=3,
                        encryption_algs=list(TUNNEL_CIPHERS),
                        window=TUNNEL_WINDOW,
                    ),
                    CONNECT_TIMEOUT_S,
                )
            except asyncssh.HostKeyNotVerifiable as exc:
                self._refused(
                    rid,
                    pinned.get_fingerprint(),
                    "the replica's host key is not the one pinned for it",
                )
                raise GatewayOffline(
                    f"broker replica {rid} presented a peer key that is not "
                    "its pinned key: refusing to forward"
                ) from exc
            except asyncssh.PermissionDenied as exc:
                self._refused(
                    rid,
                    self._key.get_fingerprint(),
                    "the replica refused this replica's pinned key",
                )
                raise GatewayOffline(
                    f"broker replica {rid} refused this replica's peer key: refusing to forward"
                ) from exc
            self._conns[rid] = (holder.peer_key, conn)
            return conn


def replica_id(settings: BrokerSettings) -> str:
    """This replica's id: ``settings.replica_id``, else the host name."""
    return settings.replica_id or socket.gethostname()


def build_peer_link(
    settings: BrokerSettings,
    engine: sa.Engine,
    tunnels: TunnelRegistry,
    emitter: Emitter,
    clock: Callable[[], datetime],
) -> PeerLink | None:
    """The peer link of a broker process, or None with ``peer_port = 0`` (one replica).

    The peer key is a file in the key directory, one per replica id (the Key Vault
    store does not hold it yet).  Raises :class:`~broker.tunnel.cluster.PinConflict`
    when this id is pinned to another key: the broker does not start.
    """
    if not settings.peer_port:
        return None
    rid = replica_id(settings)
    key = asyncssh.import_private_key(load_or_create_ssh_key(settings.keys_dir / f"peer_key_{rid}"))
    cluster = ClusterRegistry(engine, rid, clock=clock)
    cluster.check_pin(key.export_public_key().decode().strip())
    return PeerLink(
        PeerSettings(settings.peer_host, settings.peer_port, settings.advertise_host),
        key,
        cluster,
        tunnels,
        emitter,
        clock,
    )


async def run_peer_link(link: PeerLink) -> None:
    """The broker task: listen and register, beat until cancelled (or drained), then
    leave."""
    await link.start()
    try:
        await link.run()
        await asyncio.Event().wait()  # drained: keep splicing until the process stops
    finally:
        await link.close()
