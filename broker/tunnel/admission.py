"""Who may start a tunnel login now: a bound on concurrent logins, a cheap busy answer.

A tunnel login (the SSH key exchange, the gateway's host key looked up, the
broker's own authentication, the control channel's hello) costs the broker a few
milliseconds of CPU, most of it the key exchange.  When thousands of gateways
dial at once (after a broker restart), starting every login would stretch each
one past the gateway's connect timeout; the gateway gives up and dials again
while the broker still works on the abandoned login, and nobody gets in (a login
storm).  So the endpoint lets at most ``max_logins`` logins run at a time
(:class:`LoginGate`), and answers every connection beyond that, or beyond the
connections its file descriptors can hold, at once and without a key exchange:

* the **busy answer** (:class:`_Shed`): the SSH version line and a
  ``DISCONNECT`` "broker busy: retry in N s" (:mod:`wire.busy`), then the
  connection is closed.  N comes from a queue of appointments: each shed
  gateway is given the next free moment at the rate this endpoint completes
  logins (``max_logins`` / the mean login time), never sooner than
  ``busy_retry_s``, so a crowd comes back spread over the time the broker needs
  for it instead of all at once;
* with more than :data:`MAX_SHEDDING` busy answers still in flight, the
  connection is reset at once (nothing written): the gateway backs off as after
  any failed dial.

Nothing about the gateway is known at this point (no key has been seen), so a
shed connection is not an access event: the endpoint logs how many it shed,
once per :data:`SHED_LOG_EVERY_S`.

:class:`GatedListener` is the listener asyncssh accepts through
(``asyncssh.listen_reverse(tunnel=...)``: an object with ``create_server``); it
asks the gate before asyncssh builds a connection.  :func:`raise_open_files_limit`
lifts the process's descriptor limit to its hard limit at start.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wire.busy import BUSY_DISCONNECT_CODE, MAX_BUSY_RETRY_S, busy_reason

log = logging.getLogger(__name__)

MAX_SHEDDING = 1024  # busy answers in flight; past this a connection is reset at once
SHED_LINGER_S = 2.0  # a shed connection the gateway does not close is reset after this
SHED_READ_MAX = 64 * 1024  # bytes read (and dropped) from a shed connection at most
SHED_LOG_EVERY_S = 10.0
UNCLAIMED_AFTER_S = 5.0  # a login whose connection never started frees its place
FIRST_LOGIN_S = 0.25  # assumed login time until the first login has been measured
SSH_MSG_DISCONNECT = 1
BUSY_VERSION = b"SSH-2.0-hoshu_busy\r\n"


def disconnect_packet(code: int, description: str) -> bytes:
    """An unencrypted SSH ``DISCONNECT`` packet (before any key exchange, RFC 4253 6)."""
    text = description.encode()
    payload = (
        bytes([SSH_MSG_DISCONNECT])
        + struct.pack(">I", code)
        + struct.pack(">I", len(text))
        + text
        + struct.pack(">I", 0)  # language tag: empty
    )
    pad = 8 - (5 + len(payload)) % 8
    if pad < 4:
        pad += 8
    return struct.pack(">IB", 1 + len(payload) + pad, pad) + payload + bytes(pad)


def busy_answer(retry_s: float) -> bytes:
    """What a shed connection is sent: the version line and the busy disconnect."""
    return BUSY_VERSION + disconnect_packet(BUSY_DISCONNECT_CODE, busy_reason(retry_s))


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard limit when it is lower (one log
    line says so); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
        else:
            log.info(
                "open-files limit raised from %d to %d (the hard limit): each gateway "
                "tunnel holds one",
                soft,
                target,
            )
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connections_allowed(soft_limit: int, reserve: int) -> int:
    """Tunnel connections (held and logging in) a process with ``soft_limit``
    descriptors may have, keeping ``reserve`` (at most a quarter of the limit, at
    least 64) for everything else: the database, files, engineers' sessions."""
    keep = max(64, min(reserve, soft_limit // 4))
    return max(1, soft_limit - keep)


class LoginTicket:
    """One login's place under the bound; :meth:`release` frees it (once)."""

    __slots__ = ("_gate", "claimed", "released", "started")

    def __init__(self, gate: LoginGate, started: float) -> None:
        self._gate = gate
        self.started = started
        self.claimed = False
        self.released = False

    def release(self, logged_in: bool = False) -> None:
        """Free the place; ``logged_in``: the login completed (its time is measured)."""
        if not self.released:
            self.released = True
            self._gate.released(self, logged_in)


class LoginGate:
    """At most ``max_logins`` logins at a time, and no more connections than
    ``max_connections`` (held tunnels, from ``held``, plus logins in flight)."""

    def __init__(
        self,
        max_logins: int,
        busy_retry_s: float,
        *,
        max_connections: int,
        held: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_logins = max_logins
        self.busy_retry_s = busy_retry_s
        self.max_connections = max_connections
        self._held = held
        self._clock = clock
        self.in_flight = 0
        self.peak = 0  # the most logins that ran at once
        self.shedding = 0
        self.shed_total = 0
        self.admitted_total = 0
        self.login_s = FIRST_LOGIN_S  # moving mean of the time a login takes
        self._next_free = 0.0  # the last appointment given to a shed connection
        self._unclaimed: dict[int, tuple[Any, LoginTicket]] = {}
        self._shed_since_log = 0
        self._last_log = clock()

    # --- admission --------------------------------------------------------------

    def try_enter(self) -> LoginTicket | None:
        """A place for one more login, or None: shed this connection."""
        now = self._clock()
        self._free_unclaimed(now)
        if self.in_flight >= self.max_logins or (
            self._held() + self.in_flight >= self.max_connections
        ):
            return None
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.admitted_total += 1
        return LoginTicket(self, now)

    def hold(self, conn: Any, ticket: LoginTicket) -> None:
        """``conn`` was built for ``ticket``; :meth:`claim` takes it back once it starts."""
        self._unclaimed[id(conn)] = (conn, ticket)

    def claim(self, conn: Any) -> LoginTicket | None:
        """The ticket held for ``conn`` (its connection started), or None."""
        entry = self._unclaimed.pop(id(conn), None)
        if entry is None or entry[0] is not conn:
            return None
        entry[1].claimed = True
        return entry[1]

    def _free_unclaimed(self, now: float) -> None:
        """Places of connections that never started (the accept failed after the
        protocol was built) are freed, so they cannot shrink the bound for good."""
        if not self._unclaimed:
            return
        for key, (_, ticket) in list(self._unclaimed.items()):
            if now - ticket.started > UNCLAIMED_AFTER_S:
                del self._unclaimed[key]
                ticket.release()

    def released(self, ticket: LoginTicket, logged_in: bool) -> None:
        """A ticket gave its place back (:meth:`LoginTicket.release` calls this)."""
        self.in_flight = max(0, self.in_flight - 1)
        if logged_in:
            took = max(0.001, self._clock() - ticket.started)
            self.login_s = 0.8 * self.login_s + 0.2 * took

    # --- shedding ---------------------------------------------------------------

    def retry_after(self) -> float:
        """The wait to tell the next shed gateway: the next free appointment at the
        rate logins complete here, at least ``busy_retry_s``, at most the wire's cap."""
        now = self._clock()
        rate = self.max_logins / max(self.login_s, 0.001)
        start = max(self._next_free, now + self.busy_retry_s)
        self._next_free = min(start + 1.0 / rate, now + MAX_BUSY_RETRY_S)
        return self._next_free - now

    def shed_protocol(self) -> asyncio.Protocol:
        """The protocol of a connection that is not let in (see the module docstring)."""
        self.shed_total += 1
        self._shed_since_log += 1
        now = self._clock()
        if now - self._last_log >= SHED_LOG_EVERY_S:
            log.warning(
                "tunnel endpoint busy (%d of %d logins running, %d connections held): "
                "%d connection(s) told to retry later in the last %.0f s",
                self.in_flight,
                self.max_logins,
                self._held(),
                self._shed_since_log,
                now - self._last_log,
            )
            self._shed_since_log = 0
            self._last_log = now
        if self.shedding >= MAX_SHEDDING:
            return _Reset()
        self.shedding += 1
        return _Shed(self, busy_answer(self.retry_after()))

    def shed_done(self) -> None:
        """A busy answer's connection closed."""
        self.shedding = max(0, self.shedding - 1)


class _Reset(asyncio.Protocol):
    """Too many busy answers in flight: reset the connection, write nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:  # pragma: no cover - a server socket's transport is always one
            transport.close()


class _Shed(asyncio.Protocol):
    """Send the busy answer, read (and drop) what the gateway sends until it closes,
    at most :data:`SHED_READ_MAX` bytes for :data:`SHED_LINGER_S`: closing with its
    version line unread would reset the connection before the answer is read."""

    def __init__(self, gate: LoginGate, answer: bytes) -> None:
        self._gate = gate
        self._answer = answer
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        try:
            transport.write(self._answer)
            if transport.can_write_eof():
                transport.write_eof()
        except OSError:  # it hung up while it waited to be accepted: nobody to tell
            transport.abort()  # connection_lost frees its place
            return
        self._timer = asyncio.get_running_loop().call_later(SHED_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        self._read += len(data)
        if self._read > SHED_READ_MAX and self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._gate.shed_done()


class GatedListener:
    """The listener ``asyncssh.listen_reverse(tunnel=...)`` accepts through: a TCP
    server that asks the :class:`LoginGate` before asyncssh builds a connection."""

    def __init__(self, gate: LoginGate, *, backlog: int) -> None:
        self._gate = gate
        self._backlog = backlog

    async def create_server(
        self, session_factory: Callable[[str, int], Any], listen_host: str, listen_port: int
    ) -> asyncio.Server:
        gate = self._gate

        def protocol() -> asyncio.BaseProtocol:
            ticket = gate.try_enter()
            if ticket is None:
                return gate.shed_protocol()
            try:
                conn = session_factory("", 0)
            except BaseException:
                ticket.release()
                raise
            gate.hold(conn, ticket)
            return conn  # type: ignore[no-any-return]

        return await asyncio.get_running_loop().create_server(
            protocol, listen_host, listen_port, backlog=self._backlog, reuse_address=True
        )

    def close(self) -> None:
        """Nothing of its own to close (the server is closed by its acceptor)."""

    async def wait_closed(self) -> None:
        """Nothing of its own to wait for."""


__all__ = [
    "GatedListener",
    "LoginGate",
    "LoginTicket",
    "busy_answer",
    "connections_allowed",
    "disconnect_packet",
    "raise_open_files_limit",
]
