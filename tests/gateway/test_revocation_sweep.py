"""The broker finds revoked gateways, and refreshes windows, with one sweep over all its
tunnels, not a poll each.

An idle tunnel used to cost the broker a store look-up on the database pool every
``revocation_check_s`` (2 s) and another every ``windows_interval_s`` (30 s): at 10,000
gateways, over 5,000 offloaded calls a second.  The endpoint now asks about every held
tunnel in one offloaded call per sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from audit.testing import CapturingEmitter
from broker.tunnel.endpoint import TunnelListener, TunnelSettings, start_tunnel_listener
from gateway.agent import AgentState, GatewayAgent
from gateway.auditlog import LocalAudit
from gateway.config import load_config
from gateway.enroll import load_enrollment
from tests.gateway.harness import EchoServer, MemoryDirectory, write_gateway
from tests.support import poll
from wire import GatewayRecord

GATEWAYS = 3
CHECK_S = 0.1


class CountingDirectory(MemoryDirectory):
    """The in-memory directory, counting key look-ups; ``failing`` makes them raise."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.failures = 0
        self.failing = False

    def gateway_for_key(self, openssh_public_key: str) -> GatewayRecord | None:
        if self.failing:
            self.failures += 1
            raise OSError("the store does not answer")
        self.lookups += 1
        return super().gateway_for_key(openssh_public_key)


class CountingBatches(CountingDirectory):
    """The counting directory answering a sweep's keys in one call, as the store does
    (:class:`broker.tunnel.link.BatchDirectory`)."""

    def __init__(self) -> None:
        super().__init__()
        self.batched = 0  # keys looked up through gateways_for_keys

    def gateways_for_keys(self, key_lines: Sequence[str]) -> list[GatewayRecord | None]:
        self.batched += len(key_lines)  # first: never fewer than the look-ups counted
        return [self.gateway_for_key(k) for k in key_lines]

    def windows_for_gateways(
        self, gateway_ids: Sequence[str], now: datetime
    ) -> list[list[tuple[datetime, datetime]]]:
        return [self.windows_for(g, now) for g in gateway_ids]


class CountingOffload:
    """``asyncio.to_thread``, counting the calls it runs off the loop."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.calls += 1
        return await asyncio.to_thread(fn, *args)


async def _agents(
    tmp: Path, broker_key: asyncssh.SSHKey, listener: TunnelListener, directory: MemoryDirectory
) -> tuple[list[tuple[GatewayAgent, asyncio.Task[None], LocalAudit]], EchoServer]:
    echo = await EchoServer().start()
    running = []
    for n in range(GATEWAYS):
        home = tmp / f"gw{n}"
        home.mkdir()
        path, key = write_gateway(
            home,
            broker_key=broker_key,
            tunnel_port=listener.port,
            instruments=[
                {"name": f"cobas-{n}", "host": "127.0.0.1", "ports": [echo.port], "protocol": "tcp"}
            ],
        )
        directory.keys[key.export_public_key().decode()] = GatewayRecord(
            f"gw-{n}", "hosp-1", f"stmary-gw{n}"
        )
        config = load_config(path)
        enrollment, gkey = load_enrollment(config)
        audit = LocalAudit(
            config.audit_path,
            gateway_name=config.name,
            version="test",
            clock=lambda: datetime.now(UTC),
            gateway_id=enrollment.gateway_id,
        )
        agent = GatewayAgent(config, enrollment, gkey, audit, version="test")
        running.append((agent, asyncio.create_task(agent.run()), audit))
    return running, echo


@pytest.mark.parametrize("kind", [CountingDirectory, CountingBatches])
async def test_one_sweep_asks_about_every_tunnel_and_closes_only_the_revoked_one(
    tmp_path: Path, kind: type[CountingDirectory]
) -> None:
    """Three idle tunnels: each offloaded store call looks up all three keys (in one
    call of a directory that answers batches); revoking one gateway closes its tunnel
    alone (``gateway.disconnected`` says revoked); a store that stops answering keeps
    the other tunnels up."""
    directory = kind()
    events = CapturingEmitter()
    offload = CountingOffload()
    broker_key = asyncssh.generate_private_key("ssh-ed25519")
    listener = await start_tunnel_listener(
        TunnelSettings(port=0, heartbeat_s=1, login_timeout_s=5, revocation_check_s=CHECK_S),
        broker_key,
        directory,
        events,
        offload=offload,
    )
    running, echo = await _agents(tmp_path, broker_key, listener, directory)
    ids = [f"gw-{n}" for n in range(GATEWAYS)]
    try:
        await poll(
            lambda: all(listener.registry.connection(g) is not None for g in ids),
            15,
            "all gateways connected",
        )
        await poll(lambda: all(a.state is AgentState.CONNECTED for a, _, _ in running), 10)
        # the hello's windows and the first inventory are offloaded too: let them pass
        await poll(lambda: len(directory.inventory) == GATEWAYS, 10, "inventories")
        lookups0, calls0 = directory.lookups, offload.calls
        batched0 = directory.batched if isinstance(directory, CountingBatches) else 0
        await poll(lambda: directory.lookups - lookups0 >= 10 * GATEWAYS, 15, "ten sweeps")
        lookups, calls = directory.lookups - lookups0, offload.calls - calls0
        # one call per sweep (a call of the sweep running when the count was read may be
        # one short of all keys); a poll per tunnel would make one call per look-up
        assert calls <= lookups // GATEWAYS + 1, (calls, lookups)
        if isinstance(directory, CountingBatches):  # the sweep asked only in batches
            assert directory.batched - batched0 >= lookups > 0, (directory.batched, lookups)

        revoked = next(k for k, r in directory.keys.items() if r.gateway_id == "gw-1")
        del directory.keys[revoked]
        await poll(lambda: listener.registry.connection("gw-1") is None, 5, "gw-1 closed")

        def gone_events() -> list[Any]:
            return [
                e for e in events.of_type("gateway.disconnected") if e.get("GatewayId") == "gw-1"
            ]

        await poll(gone_events, 5, "disconnect event")
        gone = gone_events()
        assert gone[0].get("EventResultDetails", "").startswith("revoked")
        assert listener.registry.connection("gw-0") is not None
        assert listener.registry.connection("gw-2") is not None

        directory.failing = True
        await poll(lambda: directory.failures >= 3, 10, "sweeps against a failing store")
        assert listener.registry.connection("gw-0") is not None
        assert listener.registry.connection("gw-2") is not None
        assert not any(
            e.get("GatewayId") in ("gw-0", "gw-2") for e in events.of_type("gateway.disconnected")
        )
    finally:
        directory.failing = False
        for agent, task, audit in running:
            agent.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            audit.close()
        await listener.close()
        await echo.close()


class CountingWindows(MemoryDirectory):
    """The in-memory directory, counting window reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def windows_for(self, gateway_id: str, now: datetime) -> list[tuple[datetime, datetime]]:
        self.reads += 1
        return super().windows_for(gateway_id, now)


@asynccontextmanager
async def _windows_fleet(
    tmp: Path, directory: CountingWindows, windows_interval_s: float, offload: CountingOffload
) -> AsyncIterator[
    tuple[TunnelListener, list[tuple[GatewayAgent, asyncio.Task[None], LocalAudit]]]
]:
    """An endpoint sweeping windows every ``windows_interval_s`` (0: only when asked)
    with every gateway connected and its first inventory in; stopped afterwards."""
    broker_key = asyncssh.generate_private_key("ssh-ed25519")
    listener = await start_tunnel_listener(
        TunnelSettings(
            port=0,
            heartbeat_s=1,
            login_timeout_s=5,
            revocation_check_s=0,
            windows_interval_s=windows_interval_s,
        ),
        broker_key,
        directory,
        CapturingEmitter(),
        offload=offload,
    )
    running, echo = await _agents(tmp, broker_key, listener, directory)
    ids = [f"gw-{n}" for n in range(GATEWAYS)]
    try:
        await poll(
            lambda: all(listener.registry.connection(g) is not None for g in ids),
            15,
            "all gateways connected",
        )
        await poll(lambda: len(directory.inventory) == GATEWAYS, 10, "inventories")
        yield listener, running
    finally:
        for agent, task, audit in running:
            agent.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            audit.close()
        await listener.close()
        await echo.close()


async def test_a_window_approved_without_a_push_reaches_every_gateway_at_the_next_sweep(
    tmp_path: Path,
) -> None:
    """Three idle tunnels: a window the store has but nobody pushed reaches all three
    gateways within ``windows_interval_s``, each offloaded call reading all three."""
    directory = CountingWindows()
    offload = CountingOffload()
    async with _windows_fleet(tmp_path, directory, 0.1, offload) as (_listener, running):
        now = datetime.now(UTC)
        window = (now - timedelta(minutes=1), now + timedelta(hours=1))
        directory.windows = [window]
        await poll(
            lambda: all(a.windows == [window] for a, _, _ in running), 5, "every gateway told"
        )
        reads0, calls0 = directory.reads, offload.calls
        await poll(lambda: directory.reads - reads0 >= 10 * GATEWAYS, 15, "ten sweeps")
        reads, calls = directory.reads - reads0, offload.calls - calls0
        assert calls <= reads // GATEWAYS + 1, (calls, reads)


async def test_a_tunnel_closing_during_the_windows_sweep_leaves_the_others_their_windows(
    tmp_path: Path,
) -> None:
    """A tunnel whose control channel closed after the sweep listed it (a gateway going
    while thousands are swept) is skipped; the sweep still tells every other gateway."""
    directory = CountingWindows()
    async with _windows_fleet(tmp_path, directory, 0, CountingOffload()) as (listener, running):
        now = datetime.now(UTC)
        window = (now - timedelta(minutes=1), now + timedelta(hours=1))
        directory.windows = [window]
        first = listener.registry.tunnels()[0].conversation.channel
        assert first is not None
        first.channel.close()  # the sweep lists it, then finds it closed
        assert await listener.refresh_windows() == GATEWAYS - 1
        await poll(
            lambda: sum(a.windows == [window] for a, _, _ in running) == GATEWAYS - 1,
            5,
            "every other gateway told",
        )
