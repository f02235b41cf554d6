"""One reverse SSH connection to the broker: control protocol and channel bookkeeping.

A :class:`Link` is the :class:`gateway.server.Hub` of one connection.  It says
hello when the broker opens the control channel, answers heartbeats, applies
windows and acks, and keeps the table of open instrument channels (who, which
instrument, since when) that ``status`` shows and ``pause`` closes.

A link reads and calls only what :class:`Gateway` names (the agent implements it),
so it never reaches into the agent and does not import it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncssh

from audit.errors import AuditError
from gateway.policy import Decision, Span
from gateway.server import ControlSession, Relay
from wire import (
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOLS,
    Ack,
    AuditBatch,
    Bye,
    ErrorMessage,
    Heartbeat,
    Hello,
    Message,
    MessageTooLarge,
    Mode,
    Placement,
    Purpose,
    Welcome,
    Windows,
    WireError,
    decode_originator,
    encode,
)

log = logging.getLogger(__name__)
_channel_ids = itertools.count(1)
CLOCK_DRIFT_WARN_S = 5.0


class LinkAudit(Protocol):
    """The gateway's local audit copy, as a link writes to and forwards from it."""

    def record(
        self, type_: str, *, details: dict[str, Any] | None = None, **columns: Any
    ) -> object:
        """Write one event (raises :class:`audit.errors.AuditError` if it cannot)."""
        ...

    def next_batch(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events not yet sent on this connection, now counted as sent."""
        ...

    def unsend(self) -> None:
        """Put every sent but unacknowledged event back to be sent again."""
        ...

    def acked(self, upto_seq: int) -> None:
        """The broker holds every event up to ``upto_seq``."""
        ...


class Gateway(Protocol):
    """What a link needs of the agent that dialled it (:class:`gateway.agent.GatewayAgent`)."""

    @property
    def broker_key(self) -> asyncssh.SSHKey:
        """The broker host key pinned at enrolment: the only key a connection accepts."""
        ...

    @property
    def audit(self) -> LinkAudit: ...

    @property
    def version(self) -> str: ...

    @property
    def mode(self) -> Mode: ...

    @property
    def instance(self) -> str:
        """This agent run's id (random per start), told in every hello (protocol 2)."""
        ...

    @property
    def channel_connect_timeout_s(self) -> float:
        """How long an instrument connection may take before the channel is refused."""
        ...

    def clock(self) -> datetime: ...

    def channel_decision(self, dest_host: str, dest_port: int) -> Decision:
        """Allow or refuse a tunnel channel to ``dest_host:dest_port`` (no audit)."""
        ...

    def set_windows(self, windows: Sequence[Span]) -> None:
        """Apply the approved windows the broker sent."""
        ...


@dataclass
class OpenChannel:
    channel: str
    instrument: str
    host: str
    port: int
    protocol: str
    session_id: str
    engineer: str
    since: datetime

    def view(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "instrument": self.instrument,
            "port": self.port,
            "session": self.session_id,
            "engineer": self.engineer,
            "since": self.since.isoformat(),
        }


class Link:
    def __init__(self, gateway: Gateway, purpose: Purpose, slot: int = 0) -> None:
        self._gateway = gateway
        self.purpose = purpose
        self.slot = slot  # which of the agent's tunnels this is (told in the hello)
        self.replica: str | None = None  # the broker replica it reached (placement)
        self.refused: str | None = None  # the broker's refusal code, e.g. already_connected
        self.broker_key = gateway.broker_key
        self.conn: asyncssh.SSHServerConnection | None = None
        self.control: ControlSession | None = None
        self.welcome = asyncio.Event()
        self.windows_received = asyncio.Event()
        self.closed = asyncio.Event()
        self.audit_ready = asyncio.Event()
        self.acked = asyncio.Event()
        self.gateway_id: str | None = None
        self.error: str | None = None
        self.bad_messages = 0
        self.clock_offset_s: float | None = None  # our clock minus the broker's, at welcome
        self.last_rx = asyncio.get_running_loop().time()
        self.channels: dict[Relay, OpenChannel] = {}

    # --- channels -------------------------------------------------------------

    def decide(self, dest_host: str, dest_port: int, orig_host: str) -> Decision:
        if self.purpose is not Purpose.TUNNEL:
            decision = Decision(False, "a window check connection carries no channels")
        else:
            decision = self._gateway.channel_decision(dest_host, dest_port)
        if not decision.allowed:
            who = decode_originator(orig_host)
            log.warning("refused channel to %s:%d: %s", dest_host[:253], dest_port, decision.reason)
            try:
                self._gateway.audit.record(
                    "gateway.channel_refused",
                    EventResult="Failure",
                    EventResultDetails=decision.reason,
                    TargetHostname=dest_host[:253],
                    TargetPortNumber=dest_port,
                    NetworkDirection="Inbound",
                    TargetSessionId=who.session_id if who else None,
                    ActorUsername=who.engineer if who else None,
                    details={"channel": "direct-tcpip"},
                )
            except AuditError as exc:
                log.error("cannot write the refusal to the local audit copy: %s", exc)
        return decision

    async def open_relay(self, decision: Decision, dest_port: int, orig_host: str) -> Relay:
        inst = decision.instrument
        assert inst is not None
        relay = Relay(self._relay_closed)
        timeout = self._gateway.channel_connect_timeout_s
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(
                    relay.instrument_protocol, inst.host, dest_port
                ),
                timeout,
            )
        except (OSError, TimeoutError) as exc:
            log.warning("instrument %s:%d unreachable: %s", inst.name, dest_port, exc)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"{inst.name} port {dest_port} is unreachable"
            ) from exc
        who = decode_originator(orig_host)
        chan = OpenChannel(
            f"c{next(_channel_ids)}",
            inst.name,
            inst.host,
            dest_port,
            inst.protocol,
            who.session_id if who else "",
            who.engineer if who else "",
            self._gateway.clock(),
        )
        try:
            self._gateway.audit.record(
                "gateway.channel_opened",
                TargetHostname=inst.name,
                TargetIpAddr=inst.host,
                TargetPortNumber=dest_port,
                NetworkApplicationProtocol=inst.protocol,
                NetworkDirection="Inbound",
                TargetSessionId=chan.session_id or None,
                ActorUsername=chan.engineer or None,
                details={"channel": chan.channel},
            )
        except AuditError as exc:
            if relay.transport is not None:
                relay.transport.close()
            log.error("refusing channel: the local audit copy cannot be written: %s", exc)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, "the gateway cannot write its audit log"
            ) from exc
        self.channels[relay] = chan
        log.info(
            "channel %s open to %s:%d for %s",
            chan.channel,
            inst.name,
            dest_port,
            chan.engineer or "unknown",
        )
        return relay

    def _relay_closed(self, relay: Relay) -> None:
        chan = self.channels.pop(relay, None)
        if chan is None:
            return
        duration = (self._gateway.clock() - chan.since).total_seconds()
        try:
            self._gateway.audit.record(
                "gateway.channel_closed",
                TargetHostname=chan.instrument,
                TargetIpAddr=chan.host,
                TargetPortNumber=chan.port,
                NetworkApplicationProtocol=chan.protocol,
                NetworkDirection="Inbound",
                TargetSessionId=chan.session_id or None,
                ActorUsername=chan.engineer or None,
                SrcBytes=relay.bytes_in,
                DstBytes=relay.bytes_out,
                NetworkDuration=int(duration * 1000),
                details={"channel": chan.channel},
            )
        except AuditError as exc:
            log.error("cannot write a channel close to the local audit copy: %s", exc)

    def close_channels(self) -> int:
        relays = list(self.channels)
        for relay in relays:
            relay.close()
        return len(relays)

    # --- control channel --------------------------------------------------------

    def control_claim(self, session: ControlSession) -> bool:
        if self.control is not None:
            return False
        self.control = session
        return True

    def control_started(self, session: ControlSession) -> None:
        self.send(
            Hello(
                protocol=PROTOCOL_VERSION,
                gateway_version=self._gateway.version,
                mode=self._gateway.mode,
                purpose=self.purpose,
                gateway_time=self._gateway.clock(),
                instance=self._gateway.instance,
                slot=self.slot,
            )
        )

    def send(self, message: Message) -> bool:
        if self.control is None:
            return False
        try:
            self.control.send(encode(message))
        except MessageTooLarge as exc:
            log.error("not sending: %s", exc)
            return False
        return True

    def control_message(self, message: Message) -> None:
        self.last_rx = asyncio.get_running_loop().time()
        if isinstance(message, Welcome):
            if message.protocol not in SUPPORTED_PROTOCOLS:
                self.fail(
                    f"the broker speaks protocol {message.protocol}, not "
                    f"{sorted(SUPPORTED_PROTOCOLS)}"
                )
                return
            self.gateway_id = message.gateway_id
            self.clock_offset_s = round(
                (self._gateway.clock() - message.broker_time).total_seconds(), 1
            )
            if abs(self.clock_offset_s) > CLOCK_DRIFT_WARN_S:
                log.warning(
                    "this gateway's clock is %+.1f s off the broker's: fix NTP", self.clock_offset_s
                )
            self.welcome.set()
        elif isinstance(message, Placement):
            self.replica = message.replica
            log.info("tunnel %d reached broker replica %s", self.slot, message.replica)
        elif isinstance(message, Windows):
            self._gateway.set_windows([(w.start, w.end) for w in message.windows])
            self.windows_received.set()
        elif isinstance(message, Ack):
            self._gateway.audit.acked(message.upto_seq)
            self.acked.set()
        elif isinstance(message, Heartbeat):
            pass
        elif isinstance(message, Bye):
            log.info("the broker closes the tunnel: %s", message.reason)
            self.close()
        elif isinstance(message, ErrorMessage):
            self.error = f"broker: {message.code}: {message.message}"
            if message.code == "already_connected" and not self.welcome.is_set():
                self.refused = message.code
                self.error = message.message  # the agent logs it with its redial delay
            else:
                log.warning("the broker reports an error: %s: %s", message.code, message.message)
        else:
            self.control_bad_input(WireError(f"{message.type} is not a broker message"))

    def control_bad_input(self, error: WireError) -> None:
        self.bad_messages += 1
        log.warning("bad control message from the broker (ignored): %s", error)
        self.send(ErrorMessage(code="bad_message", message=str(error)[:256]))

    def control_closed(self, session: ControlSession) -> None:
        if session is self.control:
            self.control = None
            self.close()

    # --- lifecycle ----------------------------------------------------------------

    def fail(self, reason: str) -> None:
        self.error = reason
        log.error("%s", reason)
        self.send(ErrorMessage(code="protocol_error", message=reason[:256]))
        self.close()

    def close(self, reason: str | None = None) -> None:
        if reason:
            self.send(Bye(reason=reason))
        self.close_channels()
        if self.conn is not None:
            self.conn.close()
        self.closed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = f"connection lost: {exc}"
        self.close_channels()
        self.closed.set()

    def send_audit(self, batch_limit: int = 50) -> bool:
        """Send every event not yet sent on this connection; False if none were pending."""
        sent = False
        while True:
            batch = self._gateway.audit.next_batch(batch_limit)
            if not batch:
                return sent
            if not self.send(AuditBatch(events=tuple(batch))):
                self._gateway.audit.unsend()
                return sent
            sent = True
