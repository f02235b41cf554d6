"""The route from the broker to an instrument: the front door's one way out.

:class:`InstrumentConnector` is what the front door holds; production gives it
a :class:`TunnelConnector` over the gateways' reverse tunnels
(:class:`broker.tunnel.endpoint.TunnelRegistry`), tests and brokers inside a
hospital a :class:`DirectConnector`.  Both translate every failure once, here,
into the tunnel part's errors (:mod:`broker.tunnel.errors`): the front door
sees :class:`~broker.tunnel.errors.GatewayOffline` or
:class:`~broker.tunnel.errors.InstrumentError`, never an ``OSError`` or an
asyncssh exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncssh

from broker.access.door import InstrumentTarget
from broker.tunnel.errors import GatewayOffline, InstrumentError, PortUnreachable
from wire import Originator


@dataclass(frozen=True, slots=True)
class Origin:
    """Who a connection to an instrument is for (the gateway writes it into its audit copy)."""

    session_id: str
    engineer: str


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...


class InstrumentConnector(Protocol):
    """Opens the broker's own connections to an instrument.

    Raises :class:`~broker.tunnel.errors.GatewayOffline` when no route exists and
    :class:`~broker.tunnel.errors.InstrumentError` when the instrument or its
    gateway refuses or cannot be reached.
    """

    async def connect_ssh(
        self,
        target: InstrumentTarget,
        options: asyncssh.SSHClientConnectionOptions,
        origin: Origin,
    ) -> asyncssh.SSHClientConnection: ...

    async def open_tcp(
        self, target: InstrumentTarget, port: int, origin: Origin
    ) -> tuple[ByteReader, ByteWriter]: ...


def ssh_failure(target: InstrumentTarget, exc: BaseException) -> InstrumentError:
    """What the engineer is told when the broker's SSH login to ``target`` fails."""
    if isinstance(exc, asyncssh.PermissionDenied):
        msg = f"{target.name} refused the broker's credential; ask the hospital to check it"
    elif isinstance(exc, asyncssh.HostKeyNotVerifiable):
        msg = (
            f"the host key of {target.name} does not match the one the hospital "
            "accepted; refusing to connect"
        )
    elif isinstance(exc, asyncssh.ChannelOpenError):
        msg = f"the hospital gateway refused the connection to {target.name}: {exc.reason}"
    else:
        msg = f"{target.name} cannot be reached ({type(exc).__name__})"
    return InstrumentError(msg)


def tcp_failure(target: InstrumentTarget, port: int, exc: BaseException) -> PortUnreachable:
    """What the engineer is told when a forward to ``target``'s ``port`` fails."""
    if isinstance(exc, asyncssh.ChannelOpenError):
        msg = f"the hospital gateway refused {target.name} port {port}: {exc.reason}"
    else:
        msg = f"{target.name} port {port} cannot be reached ({type(exc).__name__})"
    return PortUnreachable(msg)


FAILURES = (OSError, asyncssh.Error, TimeoutError)


class DirectConnector:
    """Connects straight to ``target.host`` (tests, and brokers inside the hospital)."""

    async def connect_ssh(
        self,
        target: InstrumentTarget,
        options: asyncssh.SSHClientConnectionOptions,
        origin: Origin,
    ) -> asyncssh.SSHClientConnection:
        try:
            return await asyncssh.connect(target.host, target.ssh_port, options=options)
        except FAILURES as exc:
            raise ssh_failure(target, exc) from exc

    async def open_tcp(
        self, target: InstrumentTarget, port: int, origin: Origin
    ) -> tuple[ByteReader, ByteWriter]:
        try:
            reader, writer = await asyncio.open_connection(target.host, port, limit=1 << 20)
        except FAILURES as exc:
            raise tcp_failure(target, port, exc) from exc
        return reader, writer


class GatewayTunnel(Protocol):
    """One gateway connection naming the engineer's session (``tunnel.OriginTunnel``)."""

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[Any, Any]: ...

    async def open_connection(
        self, host: str, port: int
    ) -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]: ...


class TunnelLookup(Protocol):
    """``broker.tunnel.endpoint.TunnelRegistry`` as the front door sees it."""

    def tunnel(self, gateway_id: str, session_id: str, engineer: str) -> GatewayTunnel | None: ...


class PeerRoutes(Protocol):
    """``broker.tunnel.peer.PeerLink`` as the connector sees it: the gateway's tunnel
    through the replica that holds it (None: no live replica does).  Raises
    :class:`~broker.tunnel.errors.GatewayOffline` when the holder cannot be reached
    safely (its pinned key is missing or differs)."""

    async def route(self, gateway_id: str, originator: Originator) -> GatewayTunnel | None: ...


class TunnelConnector:
    """Connects through the hospital gateway's reverse tunnel (production).

    The instrument is named to the gateway by its *name*: the hospital's
    allowlist, not the broker, says which address that is.  When this replica
    holds no tunnel to the gateway, ``peers`` (several replicas) forwards through
    the replica that does; the recording and every check stay here.
    """

    def __init__(self, tunnels: TunnelLookup, peers: PeerRoutes | None = None) -> None:
        self._tunnels = tunnels
        self._peers = peers

    async def _tunnel(self, target: InstrumentTarget, origin: Origin) -> GatewayTunnel:
        tunnel = self._tunnels.tunnel(target.gateway_id, origin.session_id, origin.engineer)
        if tunnel is None and self._peers is not None:
            tunnel = await self._peers.route(
                target.gateway_id, Originator(origin.session_id, origin.engineer)
            )
        if tunnel is None:
            raise GatewayOffline(f"the hospital gateway for {target.name} is offline")
        return tunnel

    async def connect_ssh(
        self,
        target: InstrumentTarget,
        options: asyncssh.SSHClientConnectionOptions,
        origin: Origin,
    ) -> asyncssh.SSHClientConnection:
        tunnel = await self._tunnel(target, origin)
        try:
            return await asyncssh.connect(
                target.name, target.ssh_port, tunnel=tunnel, options=options
            )
        except FAILURES as exc:
            raise ssh_failure(target, exc) from exc

    async def open_tcp(
        self, target: InstrumentTarget, port: int, origin: Origin
    ) -> tuple[ByteReader, ByteWriter]:
        tunnel = await self._tunnel(target, origin)
        try:
            reader, writer = await tunnel.open_connection(target.name, port)
        except FAILURES as exc:
            raise tcp_failure(target, port, exc) from exc
        return reader, writer
