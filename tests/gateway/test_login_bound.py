"""The tunnel endpoint's login bound: the excess is told "busy, retry in N s" at once,
every gateway gets in later, and a gateway told so waits a jittered time first.

Real gateway agents (``gateway.agent.GatewayAgent``) dial a real tunnel endpoint on
loopback whose bound is set low; the gate's own counters and the agents' states
are what is asserted.  The appointment arithmetic and the descriptor limit are
checked on their own, with a hand-moved clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from audit.testing import CapturingEmitter
from broker.settings import BrokerSettings, UnknownSettingError
from broker.tunnel.admission import (
    LoginGate,
    busy_answer,
    connections_allowed,
    raise_open_files_limit,
)
from broker.tunnel.endpoint import (
    TunnelListener,
    TunnelRegistry,
    TunnelSettings,
    start_tunnel_listener,
)
from gateway.agent import AgentState, GatewayAgent, busy_wait
from gateway.auditlog import LocalAudit
from gateway.config import GatewayConfig, Instrument, TunnelTuning
from gateway.enroll import Enrollment
from tests.gateway.harness import MemoryDirectory
from tests.support import poll
from wire import GatewayRecord, Mode
from wire.busy import MAX_BUSY_RETRY_S, busy_reason, busy_retry_s

TUNING = TunnelTuning(
    heartbeat_s=1.0,
    backoff_initial_s=0.2,
    backoff_max_s=2.0,
    connect_timeout_s=10.0,
    inventory_interval_s=60.0,
)


class Fleet:
    """``n`` enrolled gateways, each a real agent with its own key and audit copy."""

    def __init__(self, tmp: Path, directory: MemoryDirectory, broker_key: asyncssh.SSHKey) -> None:
        self.tmp = tmp
        self.directory = directory
        self.broker_line = broker_key.export_public_key().decode().strip()
        self.agents: list[GatewayAgent] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.audits: list[LocalAudit] = []

    def agent(self, i: int, port: int, rand: Callable[[], float] | None = None) -> GatewayAgent:
        key = asyncssh.generate_private_key("ssh-ed25519")
        gateway_id = f"gw{i:04d}"
        self.directory.keys[key.export_public_key().decode()] = GatewayRecord(
            gateway_id=gateway_id, hospital_id="hosp01", name=f"gw-{i}"
        )
        state = self.tmp / f"gw{i}"
        state.mkdir(mode=0o700)
        config = GatewayConfig(
            name=f"gw-{i}",
            state_dir=state,
            mode=Mode.ALWAYS,
            api="http://127.0.0.1:1",
            instruments=(Instrument("an-1", "127.0.0.1", (9,), "tcp"),),
            tunnel=TUNING,
            tunnel_host="127.0.0.1",
            tunnel_port=port,
        )
        enrollment = Enrollment(
            gateway_id, "hosp01", "st-mary", self.broker_line, "127.0.0.1", port, 1
        )
        audit = LocalAudit(
            config.audit_path,
            gateway_name=config.name,
            version="test",
            clock=lambda: datetime.now(UTC),
            gateway_id=gateway_id,
        )
        agent = GatewayAgent(
            config, enrollment, key, audit, version="test", rand=rand or random.random
        )
        self.agents.append(agent)
        self.audits.append(audit)
        return agent

    def start(self, agent: GatewayAgent) -> None:
        self.tasks.append(asyncio.create_task(agent.run()))

    async def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)
        for audit in self.audits:
            audit.close()


@asynccontextmanager
async def endpoint(tmp: Path, **settings: Any) -> AsyncIterator[tuple[TunnelListener, Fleet]]:
    directory = MemoryDirectory()
    broker_key = asyncssh.generate_private_key("ssh-ed25519")
    listener = await start_tunnel_listener(
        TunnelSettings(port=0, heartbeat_s=1, login_timeout_s=5, **settings),
        broker_key,
        directory,
        CapturingEmitter(),
    )
    fleet = Fleet(tmp, directory, broker_key)
    try:
        yield listener, fleet
    finally:
        await fleet.stop()
        await listener.close()


async def test_logins_past_the_bound_are_told_busy_and_every_gateway_gets_in_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """30 gateways dial at once an endpoint that runs 3 logins at a time: never more
    than 3 run, the others are told busy before any key exchange, and all 30 hold a
    tunnel a few seconds later."""
    caplog.set_level(logging.WARNING, logger="gateway.agent")
    async with endpoint(tmp_path, max_logins=3, busy_retry_s=1.0) as (listener, fleet):
        agents = [fleet.agent(i, listener.port) for i in range(30)]
        for agent in agents:
            fleet.start(agent)
        # the broker holds the tunnel a moment before the agent has its hello answered
        took = await poll(
            lambda: (
                len(listener.registry) == 30
                and all(a.state is AgentState.CONNECTED for a in agents)
            ),
            25,
            "all 30 gateways connected",
        )
        gate = listener.gate
        assert gate is not None
        assert gate.peak <= 3  # the bound held
        assert gate.shed_total >= 10  # most of the crowd was told to come back
        assert gate.in_flight == 0  # every place was given back
        told = [r.getMessage() for r in caplog.records if " is busy (retry in " in r.getMessage()]
        assert len(told) >= 10
        # a busy gateway waits at least 3/4 of the (>= 1 s) wait it was told, never at once
        waits = [float(m.rsplit("dialling again in ", 1)[1].split()[0]) for m in told]
        assert min(waits) >= 0.75
        assert took < 25


async def test_a_busy_gateway_waits_a_jittered_time_around_the_wait_it_is_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the endpoint's one login place held by a silent connection, two gateways
    are told busy; each dials again only after its own random share of the wait
    (between three quarters of it and all of it), not at once and not together."""
    caplog.set_level(logging.WARNING, logger="gateway.agent")
    async with endpoint(tmp_path, max_logins=1, busy_retry_s=2.0) as (listener, fleet):
        gate = listener.gate
        assert gate is not None
        dials: list[float] = []
        shed = gate.shed_protocol

        def counted() -> asyncio.Protocol:
            dials.append(time.monotonic())
            return shed()

        gate.shed_protocol = counted  # type: ignore[method-assign]
        # a connection that never speaks holds the only place until the login timeout
        silent = socket.create_connection(("127.0.0.1", listener.port))
        try:
            await poll(lambda: gate.in_flight == 1, 5, "the silent login admitted")
            early = fleet.agent(0, listener.port, rand=lambda: 0.0)  # 3/4 of the wait
            late = fleet.agent(1, listener.port, rand=lambda: 1.0)  # all of it
            fleet.start(early)
            fleet.start(late)
            await poll(lambda: len(dials) >= 2, 5, "both gateways told busy")
            first = dials[1]
            told = [
                r.getMessage() for r in caplog.records if " is busy (retry in " in r.getMessage()
            ]
            retry = [float(re.findall(r"retry in (\d+) s", m)[0]) for m in told]
            wait = [float(m.rsplit("dialling again in ", 1)[1].split()[0]) for m in told]
            assert all(r >= 2.0 for r in retry)  # never less than busy_retry_s
            # each takes its own share: 3/4 of the wait (rand 0), all of it (rand 1)
            shares = sorted(round(w / r, 2) for w, r in zip(wait, retry, strict=True))
            assert shares == pytest.approx([0.75, 1.0], abs=0.05)  # the log rounds to 0.1 s
            await poll(lambda: len(dials) >= 3, 10, "the first gateway dialling again")
            assert dials[2] - first >= min(wait) - 0.2  # not before its share of the wait
            await poll(lambda: len(dials) >= 4, 10, "the second gateway dialling again")
            assert dials[3] - dials[2] >= 0.4  # not together
        finally:
            silent.close()
        # the place is free again: both get in
        await poll(lambda: len(listener.registry) == 2, 15, "both gateways connected")


async def test_an_agent_reads_the_busy_answer_from_a_broker() -> None:
    """The bytes the endpoint sends a shed connection are a disconnect asyncssh
    surfaces with the code and the wait (what the agent reads)."""

    class Busy(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.write(busy_answer(7.2))
            transport.write_eof()

    server = await asyncio.get_running_loop().create_server(Busy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(asyncssh.DisconnectError) as caught:
            await asyncio.wait_for(
                asyncssh.connect_reverse(
                    "127.0.0.1",
                    port,
                    server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                    config=None,
                    gss_host=None,
                ),
                5,
            )
    finally:
        server.close()
    assert busy_retry_s(caught.value.code, caught.value.reason) == 8.0


def test_the_busy_wait_is_read_within_bounds() -> None:
    assert busy_reason(0.2) == "broker busy: retry in 1 s"
    assert busy_retry_s(12, "broker busy: retry in 40 s (error 12)") == 40.0
    assert busy_retry_s(12, "broker busy: retry in 999999 s") == MAX_BUSY_RETRY_S
    assert busy_retry_s(12, "too many connections") is None  # no wait named: a failure
    assert busy_retry_s(11, "broker busy: retry in 5 s") is None  # another disconnect
    assert busy_wait(10.0, lambda: 0.0) == 7.5  # never sooner than 3/4 of the wait
    assert busy_wait(10.0, lambda: 0.5) == 8.75
    assert busy_wait(10.0, lambda: 1.0) == 10.0  # never later than told


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_gate_spaces_busy_gateways_at_the_rate_logins_complete() -> None:
    """Each gateway turned away is given the next free moment at the measured login
    rate, never sooner than busy_retry_s; a crowd is spread, not sent back at once."""
    clock = Clock()
    held = 0
    gate = LoginGate(4, 5.0, max_connections=100, held=lambda: held, clock=clock)
    tickets = [gate.try_enter() for _ in range(4)]
    assert all(t is not None for t in tickets) and gate.try_enter() is None
    clock.t += 0.5
    for t in tickets:
        assert t is not None
        t.release(logged_in=True)
        t.release(logged_in=True)  # once only
    assert gate.in_flight == 0
    # a moving mean of four 0.5 s logins, from the 0.25 s assumed before any
    assert gate.login_s == pytest.approx(0.5 - 0.25 * 0.8**4)
    rate = 4 / gate.login_s
    waits = [gate.retry_after() for _ in range(100)]
    assert waits[0] == pytest.approx(5.0 + 1 / rate)
    assert waits[-1] == pytest.approx(5.0 + 100 / rate)  # 100 gateways over 100 / rate s
    clock.t += 60.0  # the crowd came back: appointments start again at busy_retry_s
    assert gate.retry_after() == pytest.approx(5.0 + 1 / rate)
    for _ in range(10_000):
        last = gate.retry_after()
    assert last <= MAX_BUSY_RETRY_S


def test_the_gate_keeps_connections_within_the_descriptors() -> None:
    clock = Clock()
    held = 98
    gate = LoginGate(10, 5.0, max_connections=100, held=lambda: held, clock=clock)
    assert gate.try_enter() is not None and gate.try_enter() is not None
    assert gate.try_enter() is None  # 98 held + 2 logging in: no descriptor to spare
    assert connections_allowed(20_000, 1024) == 18_976
    assert connections_allowed(1024, 1024) == 768  # at most a quarter kept back
    assert connections_allowed(100, 1024) == 36


def test_a_connection_that_never_started_frees_its_place() -> None:
    clock = Clock()
    gate = LoginGate(1, 5.0, max_connections=100, held=lambda: 0, clock=clock)
    ticket = gate.try_enter()
    assert ticket is not None
    conn = object()
    gate.hold(conn, ticket)
    assert gate.try_enter() is None
    clock.t += 6.0
    assert gate.try_enter() is not None  # the unclaimed place was freed
    assert gate.claim(conn) is None


def test_the_open_files_limit_is_raised_to_the_hard_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, hard) // 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        caplog.set_level(logging.INFO, logger="broker.tunnel.admission")
        assert raise_open_files_limit() == hard
        said = [r.getMessage() for r in caplog.records if "open-files limit" in r.getMessage()]
        assert said == [
            f"open-files limit raised from {lower} to {hard} (the hard limit): each "
            "gateway tunnel holds one"
        ]
        assert raise_open_files_limit() == hard  # already there: nothing said
        assert len([r for r in caplog.records if "open-files limit" in r.getMessage()]) == 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_login_bound_and_busy_wait_are_broker_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOSHU_TUNNEL_MAX_LOGINS", "12")
    monkeypatch.setenv("HOSHU_TUNNEL_BUSY_RETRY_S", "9")
    tunnel = TunnelSettings.from_broker(BrokerSettings.from_env())
    assert (tunnel.max_logins, tunnel.busy_retry_s) == (12, 9.0)
    monkeypatch.setenv("HOSHU_TUNNEL_MAX_LOGINS", "0")
    with pytest.raises(ValueError, match="tunnel_max_logins"):
        BrokerSettings.from_env()
    monkeypatch.delenv("HOSHU_TUNNEL_MAX_LOGINS")
    monkeypatch.setenv("HOSHU_TUNNEL_BUSY_RETRY", "9")
    with pytest.raises(UnknownSettingError, match="HOSHU_TUNNEL_BUSY_RETRY"):
        BrokerSettings.from_env()


async def test_the_listener_keeps_the_registry_it_is_given_even_while_it_is_empty() -> None:
    """The replicas' peer link watches the registry it hands to the endpoint: an empty
    registry (it has a length) must not be swapped for another one."""
    registry = TunnelRegistry()
    assert len(registry) == 0
    listener = await start_tunnel_listener(
        TunnelSettings(port=0),
        asyncssh.generate_private_key("ssh-ed25519"),
        MemoryDirectory(),
        CapturingEmitter(),
        registry=registry,
    )
    try:
        assert listener.registry is registry
    finally:
        await listener.close()


async def test_a_shed_gateway_that_hung_up_before_it_was_accepted_frees_its_place() -> None:
    """A gateway that gave up while it waited in the accept queue (its socket closed
    before the broker got to it) is not told anything: no error escapes to the event
    loop and the place it took among the busy answers is freed."""
    gate = LoginGate(1, 5.0, max_connections=100, held=lambda: 0)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    listening = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = listening.getsockname()[1]
    # connected by the kernel (the accept queue) and closed, all before any accept: the
    # busy answer then meets a closed socket, which resets the connection at once
    for _ in range(5):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    server = await loop.create_server(gate.shed_protocol, sock=listening)
    try:
        await poll(lambda: gate.shed_total == 5, 10, "all five accepted")
        await poll(lambda: gate.shedding == 0, 10, "their places freed")
        assert errors == []
    finally:
        server.close()
        await server.wait_closed()
        loop.set_exception_handler(None)
