"""The dial-out loop: explicit states, backoff with jitter, heartbeats, the kill switch.

States and the only legal moves (each move is logged)::

    stopped     -> connecting | idle | paused
    idle        -> connecting | paused | stopped        (window-only: no window open)
    connecting  -> connected | backing_off | idle | paused | stopped
    connected   -> backing_off | idle | paused | stopped
    backing_off -> connecting | idle | paused | stopped
    paused      -> connecting | idle | stopped

Backoff: a random delay between 0 and ``min(max, initial * 2**n)`` seconds (full
jitter: gateways that lost the broker together spread over the whole interval);
the default cap of 5 s brings every gateway back within 10 s of a broker restart.
A broker too busy to log a gateway in now says so before any key exchange ("broker
busy: retry in N s", :mod:`wire.busy`): the gateway dials again after a random wait
between 3N/4 and N (:func:`busy_wait`), without growing its backoff, so a fleet
that dials a restarted broker at once comes back spread over the time the broker
names.  The clock and the random source are injected.

Several broker replicas (``[broker] addresses``, or one name resolving to several
addresses): the agent keeps one :class:`TunnelSlot` per address, each with its
own states (the table above), backoff and connection, so losing one replica
leaves the others' tunnels up while that slot redials.  The agent's ``state`` is
``connected`` while any slot is.  One connected slot at a time carries the local
audit copy and the inventory (no event is sent twice); when it drops, another
takes over.  Window-only checks go through one slot, the next one when it fails.

Fewer addresses than ``min_tunnels`` (one load-balanced address, as on Azure
Container Apps): ``min_tunnels`` slots dial the addresses in turn.  Each hello
names this agent run and the slot (protocol 2); the broker tells each tunnel
which replica it reached (``placement``), and a replica that already holds a
tunnel of this run refuses another (``already_connected``).  The refused slot
dials again after a jittered delay that grows from ``backoff_initial_s`` to
``redial_elsewhere_max_s``, so behind a balancer that picks a backend per
connection the slots end up on distinct replicas.  ``status`` is degraded until
``min_tunnels`` distinct replicas hold a tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncssh

from audit.errors import AuditError
from gateway import __version__
from gateway.auditlog import LocalAudit
from gateway.config import GatewayConfig
from gateway.control import PauseState, read_state, state_now, write_state
from gateway.enroll import Enrollment
from gateway.inventory import probe
from gateway.link import Link
from gateway.policy import (
    Allowlist,
    Decision,
    Span,
    active_window,
    channel_decision,
    next_window_start,
    tunnel_wanted,
)
from gateway.server import GatewayServer
from wire import Heartbeat, Inventory, InventoryItem, Mode, Purpose
from wire.busy import busy_retry_s
from wire.models import InventoryEntry
from wire.names import TUNNEL_CIPHERS, TUNNEL_WINDOW

log = logging.getLogger(__name__)


class AgentState(StrEnum):
    STOPPED = "stopped"
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    PAUSED = "paused"


_S = AgentState
TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    _S.STOPPED: frozenset({_S.CONNECTING, _S.IDLE, _S.PAUSED}),
    _S.IDLE: frozenset({_S.CONNECTING, _S.PAUSED, _S.STOPPED}),
    _S.CONNECTING: frozenset({_S.CONNECTED, _S.BACKING_OFF, _S.IDLE, _S.PAUSED, _S.STOPPED}),
    _S.CONNECTED: frozenset({_S.BACKING_OFF, _S.IDLE, _S.PAUSED, _S.STOPPED}),
    _S.BACKING_OFF: frozenset({_S.CONNECTING, _S.IDLE, _S.PAUSED, _S.STOPPED}),
    _S.PAUSED: frozenset({_S.CONNECTING, _S.IDLE, _S.STOPPED}),
}


class IllegalAgentTransition(RuntimeError):
    """A state change outside :data:`TRANSITIONS`: a bug in the agent, never a condition
    of the network (those are states)."""


def check_transition(current: AgentState, new: AgentState) -> None:
    """Raise :class:`IllegalAgentTransition` unless ``current -> new`` is in
    :data:`TRANSITIONS` (staying in a state is not a move and always allowed)."""
    if new is not current and new not in TRANSITIONS[current]:
        raise IllegalAgentTransition(f"{current} -> {new}")


class Backoff:
    """Exponential backoff with full jitter: a delay in ``[0, d]``, ``d = min(cap,
    initial * 2**n)`` after ``n`` failures in a row."""

    def __init__(self, initial: float, cap: float, rand: Callable[[], float]) -> None:
        self._initial, self._cap, self._rand = initial, cap, rand
        self._attempt = 0

    def next(self) -> float:
        d = min(self._cap, self._initial * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return float(self._rand() * d)

    def reset(self) -> None:
        self._attempt = 0


def busy_wait(retry_s: float, rand: Callable[[], float]) -> float:
    """How long to wait after "busy, retry in ``retry_s`` s": a random time between
    three quarters of it and all of it, so gateways told the same moment do not all
    come back at that moment.  Never later than told: the broker spaces the moments
    it names at its login rate, and a wait past them would leave it idle."""
    return retry_s * (0.75 + 0.25 * rand())


@dataclass
class TunnelSlot:
    """One broker address the agent keeps a tunnel to (one replica)."""

    host: str
    port: int
    backoff: Backoff
    redial: Backoff | None = None  # after "already connected to replica X"
    # the wait after a refusal: "already connected" (redial) or "busy, retry in N s"
    number: int = 0  # told in the hello: which of this run's tunnels
    redial_in: float = 0.0
    state: AgentState = AgentState.STOPPED
    link: Link | None = None
    connected_since: datetime | None = None
    last_error: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def view(self) -> dict[str, Any]:
        return {
            "broker": self.address,
            "state": str(self.state),
            "replica": self.link.replica if self.link is not None else None,
            "connected_since": self.connected_since.isoformat() if self.connected_since else None,
            "last_error": self.last_error,
        }


def expand_addresses(
    endpoints: Sequence[tuple[str, int]], resolve: Callable[[str, int], list[str]]
) -> list[tuple[str, int]]:
    """One dial target per address: a name that resolves to several addresses becomes
    one target per address (kept as the name when it resolves to one, or not at all)."""
    out: list[tuple[str, int]] = []
    for host, port in endpoints:
        try:
            found = resolve(host, port)
        except OSError:
            found = []
        targets = [(a, port) for a in found] if len(set(found)) > 1 else [(host, port)]
        for t in targets:
            if t not in out:
                out.append(t)
    return out


def resolve_all(host: str, port: int) -> list[str]:
    """Every IPv4 address ``host`` resolves to (IPv6 when it has none), once each: one
    family only, so a dual-stack name of one replica does not become two tunnels."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            infos = socket.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        except socket.gaierror:
            continue
        seen: list[str] = []
        for info in infos:
            addr = str(info[4][0])
            if addr not in seen:
                seen.append(addr)
        if seen:
            return seen
    return []


class GatewayAgent:
    """Keeps (or, in window-only mode, opens and closes) the tunnels to the broker."""

    def __init__(
        self,
        config: GatewayConfig,
        enrollment: Enrollment,
        key: asyncssh.SSHKey,
        audit: LocalAudit,
        *,
        version: str = __version__,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rand: Callable[[], float] = _random.random,
        prober: Callable[..., Any] = probe,
        state_poll_s: float = 1.0,
        resolve: Callable[[str, int], list[str]] = resolve_all,
    ) -> None:
        self.config = config
        self.enrollment = enrollment
        self.broker_key = asyncssh.import_public_key(enrollment.broker_host_key)
        self.audit = audit
        self.version = version
        self.clock = clock
        self._key = key
        self.instance = secrets.token_hex(8)  # this run: a replica refuses a 2nd tunnel of it
        self._prober = prober
        self._state_poll_s = state_poll_s
        self._allowlist = Allowlist(config.instruments)
        self._rand = rand
        self._resolve = resolve
        self.windows: list[Span] = []
        self.last_error: str | None = None
        self._pause: PauseState = read_state(config.state_path)
        if self._pause.error:
            self.last_error = self._pause.error
            log.error("%s", self._pause.error)
        self._stopping = False
        self._next_check = datetime.min.replace(tzinfo=UTC)
        self._check_slot = 0  # window-only: the slot that asks for windows
        self._inventory_at: float | None = None  # loop time of the last inventory report
        self.endpoints: tuple[tuple[str, int], ...] = config.addresses or (
            (
                config.tunnel_host or enrollment.tunnel_host,
                config.tunnel_port or enrollment.tunnel_port,
            ),
        )
        self.host, self.port = self.endpoints[0]
        self.min_tunnels = config.min_tunnels
        self.slots = self._slots_for(list(self.endpoints))
        self._carrier: TunnelSlot | None = None  # the slot that sends the audit copy
        self._carrier_free = asyncio.Event()

    def _slot(self, host: str, port: int, number: int = 0) -> TunnelSlot:
        t = self.config.tunnel
        return TunnelSlot(
            host,
            port,
            Backoff(t.backoff_initial_s, t.backoff_max_s, self._rand),
            Backoff(t.backoff_initial_s, t.redial_elsewhere_max_s, self._rand),
            number,
        )

    def _targets_for(self, targets: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """At least ``min_tunnels`` dial targets: fewer addresses are dialled in turn."""
        n = max(len(targets), self.min_tunnels)
        return [targets[i % len(targets)] for i in range(n)]

    def _slots_for(self, targets: list[tuple[str, int]]) -> list[TunnelSlot]:
        return [self._slot(h, p, i) for i, (h, p) in enumerate(self._targets_for(targets))]

    @property
    def replicas_held(self) -> list[str]:
        """The distinct broker replicas holding a tunnel (a protocol 1 broker, which does
        not say, counts each tunnel as its own)."""
        held: list[str] = []
        for s in self.slots:
            if s.state is AgentState.CONNECTED and s.link is not None:
                name = s.link.replica or f"{s.address} (tunnel {s.number})"
                if name not in held:
                    held.append(name)
        return held

    # --- state ------------------------------------------------------------------

    @property
    def state(self) -> AgentState:
        """``connected`` while any tunnel is up; otherwise the first slot's state."""
        if any(s.state is AgentState.CONNECTED for s in self.slots):
            return AgentState.CONNECTED
        return self.slots[0].state

    @property
    def link(self) -> Link | None:
        """The connection carrying the audit copy, else any live one, else None."""
        if self._carrier is not None and self._carrier.link is not None:
            return self._carrier.link
        return next((s.link for s in self.slots if s.link is not None), None)

    @property
    def connected_since(self) -> datetime | None:
        times = [s.connected_since for s in self.slots if s.connected_since is not None]
        return min(times) if times else None

    @property
    def tunnels_up(self) -> int:
        return sum(1 for s in self.slots if s.state is AgentState.CONNECTED)

    def _move(self, slot: TunnelSlot, new: AgentState) -> None:
        if new is slot.state:
            return
        check_transition(slot.state, new)
        if len(self.slots) > 1:
            log.info("gateway state %s -> %s (%s)", slot.state, new, slot.address)
        else:
            log.info("gateway state %s -> %s", slot.state, new)
        slot.state = new

    def _wake_all(self) -> None:
        for slot in self.slots:
            slot.wake.set()

    @property
    def paused(self) -> bool:
        return self._pause.paused

    @property
    def mode(self) -> Mode:
        return self.config.mode

    @property
    def channel_connect_timeout_s(self) -> float:
        return self.config.tunnel.channel_connect_timeout_s

    def set_windows(self, windows: Sequence[Span]) -> None:
        self.windows = sorted(windows)
        self._wake_all()

    def channel_decision(self, dest_host: str, dest_port: int) -> Decision:
        return channel_decision(
            self._allowlist,
            dest_host,
            dest_port,
            paused=self.paused,
            mode=self.config.mode,
            windows=self.windows,
            now=self.clock(),
        )

    # --- kill switch --------------------------------------------------------------

    async def pause(self, by: str) -> dict[str, Any]:
        """Close the tunnel and every channel now; stay closed (persisted) until resume."""
        if self.paused and not self._pause.error:
            return self.status()
        now = self.clock()
        self._pause = state_now(True, by, now)
        closed = 0
        for slot in self.slots:
            if slot.link is not None:
                closed += slot.link.close_channels()
                slot.link.close("paused by the hospital")
        self._wake_all()
        write_state(self.config.state_path, self._pause)
        try:
            self.audit.record(
                "gateway.paused", ActorUsername=by, details={"by": by, "channels_closed": closed}
            )
        except AuditError as exc:
            log.error("pause not written to the local audit copy: %s", exc)
        log.warning("paused by %s: %d channel(s) closed", by, closed)
        return self.status()

    async def resume(self, by: str) -> dict[str, Any]:
        if not self.paused:
            return self.status()
        since = self._pause.since
        self.last_error = None if self._pause.error else self.last_error
        paused_s = None
        if since:
            with contextlib.suppress(ValueError):
                paused_s = int((self.clock() - datetime.fromisoformat(since)).total_seconds())
        write_state(self.config.state_path, PauseState(False))
        self._pause = PauseState(False)
        try:
            self.audit.record(
                "gateway.resumed", ActorUsername=by, details={"by": by, "paused_s": paused_s}
            )
        except AuditError as exc:
            log.error("resume not written to the local audit copy: %s", exc)
        log.warning("resumed by %s", by)
        self._next_check = datetime.min.replace(tzinfo=UTC)
        self._wake_all()
        return self.status()

    def status(self) -> dict[str, Any]:
        link = self.link
        return {
            "ok": True,
            "state": str(self.state),
            "paused": self.paused,
            "paused_since": self._pause.since,
            "paused_by": self._pause.by,
            "mode": str(self.config.mode),
            "broker": f"{self.host}:{self.port}",
            "gateway_id": self.enrollment.gateway_id,
            "connected_since": self.connected_since.isoformat() if self.connected_since else None,
            "last_error": self.last_error,
            "clock_offset_s": link.clock_offset_s if link else None,
            "channels": [
                c.view() for s in self.slots if s.link is not None for c in s.link.channels.values()
            ],
            "tunnels": [s.view() for s in self.slots],
            "tunnels_up": self.tunnels_up,
            "min_tunnels": self.min_tunnels,
            "replicas": self.replicas_held,
            "degraded": self.state is AgentState.CONNECTED
            and len(self.replicas_held) < self.min_tunnels,
            "windows": [{"start": s.isoformat(), "end": e.isoformat()} for s, e in self.windows],
            "unacked_events": self.audit.unacked,
        }

    async def handle_control(self, cmd: str, by: str) -> dict[str, Any]:
        if cmd == "pause":
            return await self.pause(by)
        if cmd == "resume":
            return await self.resume(by)
        return self.status()

    # --- the loop ------------------------------------------------------------------

    async def follow_state_file(self, interval: float | None = None) -> None:
        """Apply pause/resume written to ``state.json`` by a CLI that could not reach the
        control socket (for example on Windows, or while the gateway was stopped)."""
        while not self._stopping:
            state = read_state(self.config.state_path)
            if not state.error:
                by = state.by or "local"
                if state.paused and not self.paused:
                    await self.pause(by)
                elif not state.paused and self.paused:
                    await self.resume(by)
                elif state.pending:
                    self._record_pending(state)
            await asyncio.sleep(self._state_poll_s if interval is None else interval)

    def _record_pending(self, state: PauseState) -> None:
        by = state.by or "local"
        try:
            if state.pending == "paused":
                self.audit.record(
                    "gateway.paused", ActorUsername=by, details={"by": by, "channels_closed": 0}
                )
            else:
                self.audit.record("gateway.resumed", ActorUsername=by, details={"by": by})
        except AuditError as exc:
            log.error("cannot record the %s switch: %s", state.pending, exc)
            return
        self._pause = PauseState(state.paused, state.since, state.by)
        write_state(self.config.state_path, self._pause)

    def stop(self) -> None:
        self._stopping = True
        for slot in self.slots:
            if slot.link is not None:
                slot.link.close("gateway stopping")
        self._wake_all()

    async def _sleep(self, slot: TunnelSlot, seconds: float | None) -> None:
        """Wait for ``seconds`` or until something changes (pause, resume, windows, stop)."""
        slot.wake.clear()
        if seconds is not None and seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slot.wake.wait(), seconds)

    async def _resolve_slots(self) -> None:
        """A name listed once that resolves to several addresses: a slot per address."""
        if not self.config.addresses:
            return  # the one enrolled (or tunnel_host) address: one tunnel, as always
        loop = asyncio.get_running_loop()
        targets = await loop.run_in_executor(None, expand_addresses, self.endpoints, self._resolve)
        if self._targets_for(targets) != [(s.host, s.port) for s in self.slots]:
            self.slots = self._slots_for(targets)
            log.info("keeping tunnels to %s", ", ".join(s.address for s in self.slots))
        if len(targets) < self.min_tunnels:
            log.info(
                "%d broker address(es) for min_tunnels = %d: %d tunnels dial them, each "
                "meant for a different replica (a balancer in front picks one per dial)",
                len(targets),
                self.min_tunnels,
                len(self.slots),
            )

    async def run(self) -> None:
        """Run until :meth:`stop`; cancellation is re-raised."""
        follower = asyncio.create_task(self.follow_state_file())
        loops: list[asyncio.Task[None]] = []
        try:
            await self._resolve_slots()
            loops = [
                asyncio.create_task(self._slot_loop(slot, i)) for i, slot in enumerate(self.slots)
            ]
            await asyncio.gather(*loops)
        finally:
            for task in [follower, *loops]:
                task.cancel()
            for task in [follower, *loops]:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for slot in self.slots:
                if slot.link is not None:
                    slot.link.close("gateway stopping")
                self._move(slot, AgentState.STOPPED)

    async def _slot_loop(self, slot: TunnelSlot, index: int) -> None:
        while not self._stopping:
            await self._step(slot, index)

    async def _step(self, slot: TunnelSlot, index: int) -> None:
        if self.paused:
            self._move(slot, AgentState.PAUSED)
            await self._sleep(slot, None)
            return
        now = self.clock()
        mode = self.config.mode
        if tunnel_wanted(mode, False, self.windows, now):
            outcome = await self._attempt(slot, Purpose.TUNNEL)
            if outcome in ("refused", "busy") and not (self.paused or self._stopping):
                self._move(slot, AgentState.BACKING_OFF)
                await self._sleep(slot, slot.redial_in)
            elif outcome in ("failed", "dropped") and not (self.paused or self._stopping):
                self._move(slot, AgentState.BACKING_OFF)
                await self._sleep(slot, slot.backoff.next())
            return
        self._move(slot, AgentState.IDLE)
        if index == self._check_slot % len(self.slots) and now >= self._next_check:
            outcome = await self._attempt(slot, Purpose.CHECK)
            if not (self.paused or self._stopping):
                self._move(slot, AgentState.IDLE)
            if outcome == "done":
                slot.backoff.reset()
                delay = self.config.tunnel.check_interval_s
            elif outcome == "busy":
                delay = slot.redial_in  # the same replica: it named when to come back
            else:
                delay = slot.backoff.next()
                self._check_slot = (index + 1) % len(self.slots)  # ask another replica
            self._next_check = self.clock() + timedelta(seconds=delay)
            self._wake_all()
            return
        wake_at = self._next_check
        upcoming = next_window_start(self.windows, now)
        if upcoming is not None and upcoming < wake_at:
            wake_at = upcoming
        await self._sleep(slot, max(0.05, (wake_at - now).total_seconds()))

    def _release(self, slot: TunnelSlot) -> None:
        """``slot`` no longer carries the audit copy: what it sent unacked goes again."""
        if self._carrier is slot:
            self._carrier = None
            self.audit.on_new = None
            self.audit.unsend()
            self._carrier_free.set()

    async def _attempt(self, slot: TunnelSlot, purpose: Purpose) -> str:
        self._move(slot, AgentState.CONNECTING)
        link = Link(self, purpose, slot.number)
        t = self.config.tunnel
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect_reverse(
                    slot.host,
                    slot.port,
                    server_factory=lambda: GatewayServer(link),
                    server_host_keys=[self._key],
                    config=None,
                    allow_pty=False,
                    x11_forwarding=False,
                    agent_forwarding=False,
                    allow_scp=False,
                    login_timeout=t.connect_timeout_s,
                    # public keys only: no GSS, and so no socket.getfqdn() (a blocking DNS
                    # look-up on the event loop) on every dial
                    gss_host=None,
                    keepalive_interval=t.heartbeat_s,
                    keepalive_count_max=t.heartbeat_misses,
                    encryption_algs=list(TUNNEL_CIPHERS),
                    window=TUNNEL_WINDOW,
                ),
                t.connect_timeout_s,
            )
        except asyncssh.DisconnectError as exc:
            retry_s = busy_retry_s(exc.code, exc.reason)
            if retry_s is None:
                self._error(slot, f"cannot connect to the broker at {slot.address}: {exc}")
                log.warning("%s", slot.last_error)
                return "failed"
            slot.redial_in = busy_wait(retry_s, self._rand)
            self._error(slot, f"the broker at {slot.address} is busy")
            log.warning(
                "the broker at %s is busy (retry in %.0f s): dialling again in %.1f s",
                slot.address,
                retry_s,
                slot.redial_in,
            )
            return "busy"
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            self._error(
                slot, f"cannot connect to the broker at {slot.address}: {exc or type(exc).__name__}"
            )
            log.warning("%s", slot.last_error)
            return "failed"
        link.conn = conn
        slot.link = link
        try:
            return await self._serve(slot, link)
        finally:
            slot.link = None
            slot.connected_since = None
            link.close()
            self._release(slot)
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                await asyncio.wait_for(conn.wait_closed(), 2.0)

    def _error(self, slot: TunnelSlot, message: str | None) -> None:
        slot.last_error = message
        self.last_error = message

    async def _wait_any(self, event: asyncio.Event, link: Link, wait_s: float) -> bool:
        """Wait for ``event``; False if the link closes or the time passes first."""
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(link.closed.wait())]
        try:
            await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return event.is_set() and not link.closed.is_set()

    async def _serve(self, slot: TunnelSlot, link: Link) -> str:
        t = self.config.tunnel
        if self.paused or self._stopping:
            return "paused"
        if not await self._wait_any(link.welcome, link, t.connect_timeout_s):
            if link.refused is not None and slot.redial is not None:
                slot.redial_in = slot.redial.next()
                self._error(slot, link.error)
                log.warning(
                    "broker at %s: %s, dialling again in %.1f s",
                    slot.address,
                    link.error,
                    slot.redial_in,
                )
                return "refused"
            self._error(slot, link.error or "the broker did not complete the hello")
            log.warning("%s", slot.last_error)
            return "failed"
        self._move(slot, AgentState.CONNECTED)
        slot.backoff.reset()
        if slot.redial is not None:
            slot.redial.reset()
        slot.connected_since = self.clock()
        log.info(
            "connected to the broker at %s as gateway %s (%s)",
            slot.address,
            link.gateway_id,
            link.purpose,
        )
        if link.purpose is Purpose.CHECK:
            await self._wait_any(link.windows_received, link, t.connect_timeout_s)
            if self._carrier is None:  # no tunnel carries the audit copy: this check does
                self._carrier = slot
                if self._inventory_due() <= 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._report_inventory(link), t.connect_timeout_s)
                await self._flush_audit(link, t.connect_timeout_s)
            link.close("check done")
            return "done"
        self._error(slot, None)
        tasks = [
            asyncio.create_task(self._heartbeats(link)),
            asyncio.create_task(self._carry(slot, link)),
        ]
        try:
            return await self._watch(slot, link)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _carry(self, slot: TunnelSlot, link: Link) -> None:
        """Send the audit copy and the inventory on ``link`` once no other slot does."""
        while self._carrier is not None and self._carrier is not slot:
            self._carrier_free.clear()
            await self._wait_any(self._carrier_free, link, 3600.0)
            if link.closed.is_set():
                return
        self._carrier = slot
        await asyncio.gather(self._forward_audit(link), self._inventory(link))

    async def _watch(self, slot: TunnelSlot, link: Link) -> str:
        """Hold the tunnel until it drops, goes silent, is paused or stopped, or (window
        only) its last window ends.  Stop, pause, new windows and a closed link wake it at
        once; otherwise it wakes when the path would count as dead (no message from the
        broker for ``heartbeat_s * heartbeat_misses``), not every second: thousands of
        idle tunnels on one host cost their heartbeats, not a timer each per second."""
        t = self.config.tunnel
        loop = asyncio.get_running_loop()
        dead_after = t.heartbeat_s * t.heartbeat_misses
        while True:
            if self._stopping:
                return "stopped"
            if self.paused:
                return "paused"
            if link.closed.is_set():
                self._error(slot, link.error or "the broker closed the tunnel")
                return "dropped"
            silent_for = loop.time() - link.last_rx
            if silent_for > dead_after:
                self._error(slot, "no heartbeat from the broker: the path is dead")
                log.warning("%s", slot.last_error)
                link.close()
                return "dropped"
            # just past the moment the path would count as dead, if nothing arrives
            tick = dead_after - silent_for + 0.05
            if self.config.mode is Mode.WINDOW_ONLY:
                now = self.clock()
                window = active_window(self.windows, now)
                if window is None:
                    log.info("the last approved window ended: closing the tunnel")
                    link.close("window ended")
                    return "window_ended"
                tick = min(tick, 1.0, max(0.05, (window[1] - now).total_seconds()))
            slot.wake.clear()
            await self._wait_any(slot.wake, link, tick)

    async def _heartbeats(self, link: Link) -> None:
        seq = 0
        while not link.closed.is_set():
            link.send(Heartbeat(seq=seq, sent_at=self.clock()))
            seq += 1
            await asyncio.sleep(self.config.tunnel.heartbeat_s)

    async def _forward_audit(self, link: Link) -> None:
        self.audit.on_new = link.audit_ready.set
        while not link.closed.is_set():
            link.audit_ready.clear()
            link.send_audit()
            await link.audit_ready.wait()

    async def _flush_audit(self, link: Link, wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        link.send_audit()
        while self.audit.unacked and loop.time() < deadline and not link.closed.is_set():
            link.acked.clear()
            await self._wait_any(link.acked, link, deadline - loop.time())

    def _inventory_due(self) -> float:
        """Seconds until the next inventory report is due (0 or less: now)."""
        if self._inventory_at is None:
            return 0.0
        loop = asyncio.get_running_loop()
        return self._inventory_at + self.config.tunnel.inventory_interval_s - loop.time()

    async def _report_inventory(self, link: Link) -> None:
        self._inventory_at = asyncio.get_running_loop().time()
        try:
            items: list[InventoryItem] = await self._prober(self.config.instruments)
        except Exception as exc:  # a failing probe must not take the tunnel down
            log.error("inventory probe failed: %s", exc)
            return
        link.send(Inventory(instruments=tuple(InventoryEntry.from_item(i) for i in items)))
        with contextlib.suppress(AuditError):
            self.audit.record(
                "gateway.inventory",
                details={
                    "instruments": [
                        {
                            "name": i.name,
                            "reachable": i.reachable,
                            "host_key_fingerprint": i.host_key_fingerprint,
                        }
                        for i in items
                    ]
                },
            )

    async def _inventory(self, link: Link) -> None:
        while not link.closed.is_set():
            if self._inventory_due() <= 0:
                await self._report_inventory(link)
            await asyncio.sleep(max(0.05, self._inventory_due()))


__all__ = [
    "TRANSITIONS",
    "AgentState",
    "Backoff",
    "GatewayAgent",
    "IllegalAgentTransition",
    "TunnelSlot",
    "busy_wait",
    "check_transition",
    "expand_addresses",
    "resolve_all",
]
