"""The broker's side of one gateway tunnel: the control channel conversation.

After the gateway's host key has been matched to an enrolled gateway, the
broker (SSH client of the reverse connection) opens the ``hoshu-control``
subsystem and expects :class:`wire.Hello` within the login timeout.  It
answers with :class:`wire.Welcome` and the gateway's approved windows, then
relays: inventory to :meth:`GatewayDirectory.record_inventory`, audit batches
to the broker's emitter (acked only once stored), heartbeats both ways.
Malformed or oversized lines are answered with an error message and
otherwise ignored; a silent path (no message for ``heartbeat_s * misses``)
is closed.  A gateway whose enrolment is revoked while its tunnel is up is
told ``bye`` and its tunnel closed (:meth:`ControlConversation.revoke`); the
endpoint's one sweep over every tunnel it holds finds such gateways
(:meth:`broker.tunnel.endpoint.TunnelListener.sweep_revoked`), not a timer per
tunnel, so an idle tunnel costs the broker no periodic store call of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import asyncssh

from audit.catalog import event_type
from audit.emitter import Emitter
from audit.errors import AuditError
from audit.events import COLUMN_NAMES, AuditEvent
from wire import (
    CONTROL_SUBSYSTEM,
    FORWARDED_EVENT_TYPES,
    MAX_WINDOWS,
    PROTOCOL_VERSION,
    SUPPORTED_PROTOCOLS,
    Ack,
    AuditBatch,
    Bye,
    ErrorMessage,
    GatewayRecord,
    Heartbeat,
    Hello,
    Inventory,
    InventoryItem,
    LineFramer,
    Message,
    MessageTooLarge,
    Placement,
    Welcome,
    Window,
    Windows,
    WireError,
    decode,
    encode,
)

Offload = Callable[..., Awaitable[Any]]  # runs a blocking call off the loop

log = logging.getLogger(__name__)
_READ_CHUNK = 64 * 1024


class GatewayDirectory(Protocol):
    """What the tunnel needs from the control plane's store."""

    def gateway_for_key(self, openssh_public_key: str) -> GatewayRecord | None:
        """The active, enrolled gateway holding this key, or None."""
        ...

    def windows_for(self, gateway_id: str, now: datetime) -> list[tuple[datetime, datetime]]:
        """Approved grant windows touching this gateway's instruments (current and upcoming)."""
        ...

    def record_inventory(self, gateway_id: str, instruments: list[InventoryItem]) -> None:
        """Upsert the gateway's instruments; host key changes are the control plane's."""
        ...


@runtime_checkable
class BatchDirectory(Protocol):
    """A :class:`GatewayDirectory` that answers for many gateways in one call (the
    store: a query per few hundred gateways instead of a transaction each); the
    endpoint's sweeps use it where the directory has it."""

    def gateways_for_keys(self, key_lines: Sequence[str]) -> list[GatewayRecord | None]:
        """:meth:`GatewayDirectory.gateway_for_key` of each key, in order."""
        ...

    def windows_for_gateways(
        self, gateway_ids: Sequence[str], now: datetime
    ) -> list[list[tuple[datetime, datetime]]]:
        """:meth:`GatewayDirectory.windows_for` of each gateway, in order."""
        ...


class ProtocolFailure(Exception):
    """The gateway broke the control protocol; the connection is closed."""


class TunnelRefused(Exception):
    """The hello was well formed but this replica does not take the tunnel (the
    gateway was told why); the connection is closed."""


class ControlConversation:
    """Reads and writes control messages on one gateway's control channel."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        record: GatewayRecord,
        *,
        directory: GatewayDirectory,
        emitter: Emitter,
        clock: Callable[[], datetime],
        broker_version: str,
        heartbeat_s: float,
        heartbeat_misses: int,
        windows_interval_s: float,
        key_line: str = "",
        offload: Offload | None = None,
        replica: str = "",
    ) -> None:
        self.conn = conn
        self._replica = replica  # told to protocol 2 gateways (Placement)
        # the directory's calls wait on the database: run them here, off the event loop
        self._offload: Offload = offload if offload is not None else asyncio.to_thread
        self.record = record
        self._directory = directory
        self._emitter = emitter
        self._clock = clock
        self._version = broker_version
        self._heartbeat_s = heartbeat_s
        self._misses = heartbeat_misses
        self._windows_interval_s = windows_interval_s
        self._framer = LineFramer()
        self._pending: list[bytes | MessageTooLarge] = []
        self._writer: asyncssh.SSHWriter[bytes] | None = None
        self._reader: asyncssh.SSHReader[bytes] | None = None
        self.windows_wanted = asyncio.Event()
        self.hello: Hello | None = None
        self.acked_seq = 0
        self.bad_messages = 0
        self.revoked = False  # the enrolment was revoked while the tunnel was up
        self.key_line = key_line  # the gateway's host key, as the directory knows it

    async def open(
        self, wait_s: float, admit: Callable[[Hello], tuple[str, str] | None] | None = None
    ) -> Hello:
        """Open the control channel and read the gateway's hello.

        ``admit`` sees the hello before the welcome: a ``(code, reason)`` it returns is
        sent to the gateway as an error and raised as :class:`TunnelRefused`."""
        writer, reader, _ = await asyncio.wait_for(
            self.conn.open_session(subsystem=CONTROL_SUBSYSTEM, encoding=None), wait_s
        )
        self._writer, self._reader = writer, reader
        message = await asyncio.wait_for(self._next(), wait_s)
        if not isinstance(message, Hello):
            raise ProtocolFailure(f"expected hello, got {message.type}")
        if message.protocol not in SUPPORTED_PROTOCOLS:
            self.send(
                ErrorMessage(
                    code="unsupported_protocol",
                    message=f"this broker speaks {sorted(SUPPORTED_PROTOCOLS)}",
                )
            )
            raise ProtocolFailure(f"gateway speaks protocol {message.protocol}")
        self.hello = message
        refusal = admit(message) if admit is not None else None
        if refusal is not None:
            self.send(ErrorMessage(code=refusal[0], message=refusal[1][:256]))
            raise TunnelRefused(refusal[1])
        protocol = min(message.protocol, PROTOCOL_VERSION)  # answer in the gateway's version
        self.send(
            Welcome(
                protocol=protocol,
                broker_version=self._version,
                gateway_id=self.record.gateway_id,
                broker_time=self._clock(),
            )
        )
        if protocol >= 2 and self._replica:
            self.send(Placement(replica=self._replica[:64]))
        await self.send_windows_off_loop()
        return message

    @property
    def channel(self) -> asyncssh.SSHWriter[bytes] | None:
        """The open control channel's writer (None before :meth:`open`); every message
        leaves through :meth:`send`, tests write raw lines here to probe the gateway."""
        return self._writer

    def send(self, message: Message) -> None:
        if self._writer is not None:
            self._writer.write(encode(message))

    def send_windows(self) -> None:
        now = self._clock()
        try:
            spans = self._directory.windows_for(self.record.gateway_id, now)
            windows = tuple(Window(start=s, end=e) for s, e in spans if e > now and e > s)
            message = Windows(windows=windows[:MAX_WINDOWS])
        except Exception as exc:  # the store failing must not drop the tunnel
            log.error("cannot read windows for gateway %s: %s", self.record.name, exc)
            return
        self.send(message)

    def send_window_spans(self, spans: list[tuple[datetime, datetime]], now: datetime) -> None:
        """Send windows the caller read from the directory at ``now`` (a refresh sweep)."""
        windows = tuple(Window(start=s, end=e) for s, e in spans if e > now and e > s)
        self.send(Windows(windows=windows[:MAX_WINDOWS]))

    async def send_windows_off_loop(self) -> None:
        """:meth:`send_windows` with the store read off the event loop."""
        now = self._clock()
        try:
            spans = await self._offload(self._directory.windows_for, self.record.gateway_id, now)
            windows = tuple(Window(start=s, end=e) for s, e in spans if e > now and e > s)
            message = Windows(windows=windows[:MAX_WINDOWS])
        except Exception as exc:  # the store failing must not drop the tunnel
            log.error("cannot read windows for gateway %s: %s", self.record.name, exc)
            return
        self.send(message)

    async def _next(self) -> Message:
        """The next well-formed message; bad lines are answered and skipped."""
        assert self._reader is not None
        while True:
            while self._pending:
                item = self._pending.pop(0)
                try:
                    if isinstance(item, MessageTooLarge):
                        raise item
                    return decode(item)
                except WireError as exc:
                    self.bad_messages += 1
                    log.warning(
                        "bad control message from gateway %s (ignored): %s", self.record.name, exc
                    )
                    self.send(ErrorMessage(code="bad_message", message=str(exc)[:256]))
            data = await self._reader.read(_READ_CHUNK)
            if not data:
                raise EOFError("control channel closed")
            self._pending.extend(self._framer.feed(data))

    async def serve(self) -> None:
        """Run until the gateway leaves or the path goes silent."""
        tasks = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._windows())]
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self._next(), self._heartbeat_s * self._misses)
                except TimeoutError:
                    log.warning("gateway %s silent: closing its tunnel", self.record.name)
                    return
                except (EOFError, asyncssh.Error, OSError):
                    return
                if isinstance(message, Inventory):
                    await self._inventory_off_loop(message)
                elif not self.handle(message):
                    return
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _inventory_off_loop(self, message: Inventory) -> None:
        items = [e.to_item() for e in message.instruments]
        try:
            await self._offload(self._directory.record_inventory, self.record.gateway_id, items)
        except Exception as exc:  # reported, and the tunnel stays up
            log.error("cannot record inventory of gateway %s: %s", self.record.name, exc)

    def handle(self, message: Message) -> bool:
        """Act on one message; False when the gateway said bye."""
        if isinstance(message, Inventory):
            items = [e.to_item() for e in message.instruments]
            try:
                self._directory.record_inventory(self.record.gateway_id, items)
            except Exception as exc:  # reported, and the tunnel stays up
                log.error("cannot record inventory of gateway %s: %s", self.record.name, exc)
        elif isinstance(message, AuditBatch):
            self._store_audit(message)
        elif isinstance(message, Bye):
            log.info("gateway %s leaves: %s", self.record.name, message.reason)
            return False
        elif isinstance(message, ErrorMessage):
            log.warning(
                "gateway %s reports: %s: %s", self.record.name, message.code, message.message
            )
        elif isinstance(message, Heartbeat):
            # answered, so the gateway's liveness check follows its own interval
            self.send(Heartbeat(seq=message.seq, sent_at=self._clock()))
        else:
            self.bad_messages += 1
            self.send(
                ErrorMessage(
                    code="unexpected_message", message=f"{message.type} is not a gateway message"
                )
            )
        return True

    def _store_audit(self, batch: AuditBatch) -> None:
        upto = self.acked_seq
        for raw in batch.events:
            seq = raw.get("ChainSeq")
            if not isinstance(seq, int) or seq <= upto:
                continue  # already stored (a re-send after reconnect) or no position
            record = self._checked_event(raw)
            if record is not None:
                try:
                    self._emitter.emit(AuditEvent(record))
                except AuditError as exc:
                    log.error(
                        "cannot store gateway %s events: %s (not acked)", self.record.name, exc
                    )
                    break
            upto = seq
        if upto > self.acked_seq:
            self.acked_seq = upto
            self.send(Ack(upto_seq=upto))

    def _checked_event(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        """The event as the broker stores it, or None (logged) if it is not acceptable."""
        kind = raw.get("EventType")
        details = raw.get("Details", {})
        if (
            kind not in FORWARDED_EVENT_TYPES
            or not set(raw) <= COLUMN_NAMES
            or not isinstance(details, dict)
            or not set(details) <= set(event_type(str(kind)).details)
        ):
            log.error(
                "gateway %s forwarded an event the broker does not accept: %r",
                self.record.name,
                str(kind)[:64],
            )
            return None
        record = {k: v for k, v in raw.items() if k not in ("ChainSeq", "ChainHash")}
        # the authenticated tunnel, not the event, says which gateway it came from
        record["GatewayId"] = self.record.gateway_id
        record["HospitalId"] = self.record.hospital_id
        record["DvcRole"] = "gateway"
        record["DvcHostname"] = self.record.name
        return record

    async def _heartbeats(self) -> None:
        seq = 0
        while True:
            self.send(Heartbeat(seq=seq, sent_at=self._clock()))
            seq += 1
            await asyncio.sleep(self._heartbeat_s)

    async def _windows(self) -> None:
        """Send the windows when asked (:attr:`windows_wanted`: an approval, a revocation)
        and, with ``windows_interval_s`` > 0, every that many seconds; 0 leaves the
        periodic refresh to the endpoint's one sweep over all its tunnels."""
        while True:
            if self._windows_interval_s > 0:
                try:
                    await asyncio.wait_for(self.windows_wanted.wait(), self._windows_interval_s)
                except TimeoutError:
                    pass
            else:
                await self.windows_wanted.wait()
            self.windows_wanted.clear()
            await self.send_windows_off_loop()

    def revoke(self) -> None:
        """The gateway's enrolment was revoked while its tunnel was up: say bye and
        close the tunnel (``gateway.disconnected`` then says revoked)."""
        if self.revoked:
            return
        log.warning("gateway %s was revoked: closing its tunnel", self.record.name)
        self.revoked = True
        self.bye("this gateway's enrolment was revoked")
        self.conn.close()

    def bye(self, reason: str) -> None:
        try:
            self.send(Bye(reason=reason))
        except (OSError, asyncssh.Error):
            pass
