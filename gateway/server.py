"""Thin asyncssh hooks for the gateway's side of the reverse SSH connection.

The gateway is the SSH *server*: the broker logs in as ``hoshu-broker`` with
the key pinned at enrolment and may then

* open one session channel with the ``hoshu-control`` subsystem (control
  messages), and
* open ``direct-tcpip`` channels, each checked by :meth:`Hub.decide`.

Everything else is refused: passwords, keyboard-interactive, other keys,
shells, exec, ptys, agent/X11 forwarding, remote (``tcpip-forward``) and unix
socket forwarding.  These hooks translate; the decisions live in
:mod:`gateway.policy` behind :class:`Hub`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Protocol

import asyncssh

from gateway.policy import Decision
from wire import BROKER_USERNAME, CONTROL_SUBSYSTEM, LineFramer, Message, WireError, decode
from wire.sshcompat import coalesce_writes

log = logging.getLogger(__name__)


class Hub(Protocol):
    """What the hooks call; implemented by the agent's per-connection link."""

    broker_key: asyncssh.SSHKey

    def decide(self, dest_host: str, dest_port: int, orig_host: str) -> Decision:
        """Allow or refuse a channel (and audit a refusal)."""
        ...

    async def open_relay(self, decision: Decision, dest_port: int, orig_host: str) -> Relay:
        """Connect to the instrument; raise ChannelOpenError if it cannot."""
        ...

    def control_claim(self, session: ControlSession) -> bool:
        """True if this is the connection's first control channel."""
        ...

    def control_started(self, session: ControlSession) -> None: ...

    def control_message(self, message: Message) -> None: ...

    def control_bad_input(self, error: WireError) -> None: ...

    def control_closed(self, session: ControlSession) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class GatewayServer(asyncssh.SSHServer):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        # called before asyncssh writes anything: from here on its packets leave
        # joined per loop pass (see CoalescingTransport)
        coalesce_writes(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._hub.connection_lost(exc)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Only the broker key pinned at enrolment, as ``hoshu-broker``; deny otherwise."""
        ok = username == BROKER_USERNAME and key == self._hub.broker_key
        if not ok:
            log.warning(
                "refused broker login: user %r, key %s (not the pinned broker key)",
                username[:32],
                key.get_fingerprint(),
            )
        return ok

    def session_requested(
        self,
    ) -> tuple[asyncssh.SSHServerChannel[bytes], ControlSession] | bool:
        """A session may only become the control subsystem (checked when it is asked for)."""
        if self._conn is None:
            return False
        return self._conn.create_server_channel(encoding=None), ControlSession(self._hub)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[Relay]:
        """The hospital's allowlist check for every ``direct-tcpip`` channel.

        On deny the channel open fails with "administratively prohibited" and
        the reason; the refusal is in the local audit copy.
        """
        decision = self._hub.decide(dest_host, dest_port, orig_host)
        if not decision.allowed:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, decision.reason
            )
        return self._hub.open_relay(decision, dest_port, orig_host)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no listening anywhere on behalf of the broker

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False


class ControlSession(asyncssh.SSHServerSession[bytes]):
    """The ``hoshu-control`` subsystem: JSON lines both ways, bounded."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._framer = LineFramer()

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        return False

    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == CONTROL_SUBSYSTEM and self._hub.control_claim(self)

    def session_started(self) -> None:
        self._hub.control_started(self)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        for item in self._framer.feed(data):
            if isinstance(item, WireError):
                self._hub.control_bad_input(item)
                continue
            try:
                message = decode(item)
            except WireError as exc:
                self._hub.control_bad_input(exc)
                continue
            self._hub.control_message(message)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._hub.control_closed(self)

    def send(self, line: bytes) -> None:
        if self._chan is not None:
            self._chan.write(line)

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()


class _InstrumentSide(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # until the SSH channel is ready
        self._relay.transport = transport

    def data_received(self, data: bytes) -> None:
        self._relay.from_instrument(data)

    def eof_received(self) -> bool:
        self._relay.instrument_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.close()

    def pause_writing(self) -> None:
        self._relay.pause_channel()

    def resume_writing(self) -> None:
        self._relay.resume_channel()


class Relay(asyncssh.SSHTCPSession[bytes]):
    """Bytes between one ``direct-tcpip`` channel and one instrument TCP connection."""

    def __init__(self, on_close: ChannelCloseHook) -> None:
        self.transport: asyncio.Transport | None = None
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._on_close = on_close
        self._closed = False
        self.bytes_in = 0  # broker -> instrument
        self.bytes_out = 0  # instrument -> broker

    def instrument_protocol(self) -> asyncio.Protocol:
        return _InstrumentSide(self)

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan

    def session_started(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.bytes_in += len(data)
        if self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def from_instrument(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self._chan is not None:
            self._chan.write(data)

    def instrument_eof(self) -> None:
        if self._chan is not None:
            self._chan.write_eof()

    def pause_channel(self) -> None:
        if self._chan is not None:
            self._chan.pause_reading()

    def resume_channel(self) -> None:
        if self._chan is not None:
            self._chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        """Close both sides (idempotent); the close hook runs once."""
        if self._closed:
            return
        self._closed = True
        if self._chan is not None:
            self._chan.close()
        if self.transport is not None:
            self.transport.close()
        self._on_close(self)


class ChannelCloseHook(Protocol):
    def __call__(self, relay: Relay) -> None: ...
