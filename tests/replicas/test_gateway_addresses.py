"""A gateway keeps tunnels to several broker replicas; losing one loses no hospital.

In one process: two real tunnel endpoints (two replicas' listeners, one pinned host
key, as replicas share it through the key store), one real gateway agent configured
with both addresses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit import AuditEvent
from audit.testing import CapturingEmitter
from broker.tunnel.endpoint import TunnelListener, TunnelSettings, start_tunnel_listener
from gateway.agent import AgentState, expand_addresses
from gateway.config import parse_config
from gateway.errors import ConfigError
from tests.gateway.harness import GATEWAY_ID, Lab, lab
from tests.support import free_port, poll

pytestmark = pytest.mark.timeout(60)


def _settings(port: int = 0) -> TunnelSettings:
    return TunnelSettings(port=port, heartbeat_s=1, login_timeout_s=5)


@dataclass
class Two:
    lab: Lab  # replica A: the lab's own listener
    b: TunnelListener
    b_events: CapturingEmitter


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw") as L:
        b_events = CapturingEmitter()
        b = await start_tunnel_listener(_settings(), L.broker_key, L.directory, b_events)
        text = L.config_path.read_text().replace(
            'api = "http://127.0.0.1:1"',
            f'api = "http://127.0.0.1:1"\naddresses = ["127.0.0.1:{L.listener.port}", '
            f'"127.0.0.1:{b.port}"]\nmin_tunnels = 2',
        )
        L.config_path.write_text(text)
        try:
            yield Two(L, b, b_events)
        finally:
            await b.close()


async def test_the_gateway_holds_a_tunnel_to_each_address(two: Two) -> None:
    agent = await two.lab.start_agent()
    await two.lab.listener.registry.wait_for(GATEWAY_ID, 10)
    await two.b.registry.wait_for(GATEWAY_ID, 10)
    await poll(lambda: agent.tunnels_up == 2, what="two tunnels up")
    status = agent.status()
    assert status["state"] == "connected" and status["degraded"] is False
    assert sorted(t["state"] for t in status["tunnels"]) == ["connected", "connected"]


async def test_each_gateway_event_reaches_the_brokers_once(two: Two) -> None:
    """One tunnel at a time carries the local audit copy: no event arrives twice."""
    agent = await two.lab.start_agent()
    await poll(lambda: agent.tunnels_up == 2, what="two tunnels up")
    conn = two.b.registry.connection(GATEWAY_ID)
    assert conn is not None
    r, w = await conn.open_connection("cobas-c503-1", two.lab.echo.port)
    w.write(b"ping")
    assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
    w.close()

    def opened() -> list[AuditEvent]:
        return two.lab.emitter.of_type("gateway.channel_opened") + two.b_events.of_type(
            "gateway.channel_opened"
        )

    await poll(lambda: len(opened()) >= 1, what="the channel_opened event")
    await poll(lambda: agent.audit.unacked == 0, what="every event acknowledged")
    assert len(opened()) == 1


async def test_losing_one_replica_leaves_the_other_tunnel_and_the_lost_one_redials(
    two: Two, record_property: Callable[[str, object], None]
) -> None:
    L = two.lab
    agent = await L.start_agent()
    await poll(lambda: agent.tunnels_up == 2, what="two tunnels up")
    port = L.listener.port
    await L.listener.close()  # replica A is gone
    await poll(lambda: agent.tunnels_up == 1, deadline_s=10, what="A's tunnel seen down")
    assert two.b.registry.connection(GATEWAY_ID) is not None  # the hospital stays reachable
    assert agent.state is AgentState.CONNECTED and agent.status()["degraded"] is True
    started = time.monotonic()
    L.listener = await start_tunnel_listener(_settings(port), L.broker_key, L.directory, L.emitter)
    await L.listener.registry.wait_for(GATEWAY_ID, 10)
    redial_s = time.monotonic() - started
    record_property("redial_s", round(redial_s, 2))
    print(f"FIGURE gateway redial to a restarted replica: {redial_s:.2f} s")
    assert redial_s < 10
    await poll(lambda: agent.tunnels_up == 2, what="both tunnels again")


def test_a_name_resolving_to_several_addresses_is_one_tunnel_per_address() -> None:
    table = {"brokers.internal": ["10.0.0.1", "10.0.0.2"], "one.internal": ["10.0.0.9"]}

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such name")
        return table[host]

    assert expand_addresses(
        [("brokers.internal", 2223), ("one.internal", 2223), ("unknown.internal", 2223)], resolve
    ) == [
        ("10.0.0.1", 2223),
        ("10.0.0.2", 2223),
        ("one.internal", 2223),
        ("unknown.internal", 2223),
    ]


BASE = '[gateway]\nname = "gw"\nstate_dir = "/tmp/x"\n'


def test_the_broker_addresses_are_checked() -> None:
    cfg = parse_config(BASE + '[broker]\naddresses = ["a:2223", "[::1]:2224"]\n')
    assert cfg.addresses == (("a", 2223), ("::1", 2224)) and cfg.min_tunnels == 2
    old = parse_config(BASE + '[broker]\ntunnel_host = "b"\ntunnel_port = 2300\n')
    assert (old.addresses, old.tunnel_host, old.tunnel_port, old.min_tunnels) == ((), "b", 2300, 1)
    for bad, msg in [
        ('addresses = ["a"]', "not host:port"),
        ('addresses = ["a:0"]', "not host:port"),
        ('addresses = ["a:1", "a:1"]', "twice"),
        ('addresses = ["a:1"]\ntunnel_host = "b"', "not both"),
        ('addresses = ["a:1"]\nmin_tunnels = 0', "min_tunnels"),
        ('addresses = "a:1"', "wrong type"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_config(BASE + "[broker]\n" + bad + "\n")


async def test_window_only_mode_checks_through_another_replica_when_one_is_down(
    tmp_path: Path,
) -> None:
    """Window-only: no tunnel outside a window, and the window check moves on to the
    next address when the first one does not answer."""
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw", mode="window-only") as L:
        dead = free_port()
        L.config_path.write_text(
            L.config_path.read_text().replace(
                'api = "http://127.0.0.1:1"',
                f'api = "http://127.0.0.1:1"\naddresses = ["127.0.0.1:{dead}", '
                f'"127.0.0.1:{L.listener.port}"]',
            )
        )
        agent = await L.start_agent()
        await poll(
            lambda: GATEWAY_ID in L.directory.inventory,
            deadline_s=15,
            what="a window check (with the inventory) through the live replica",
        )
        assert L.listener.registry.connection(GATEWAY_ID) is None  # no window: no tunnel
        await poll(lambda: agent.state is AgentState.IDLE, what="idle between checks")


def test_status_shows_each_tunnel_and_a_degraded_gateway(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.cli import _print_status

    _print_status(
        {
            "state": "connected",
            "tunnels_up": 1,
            "min_tunnels": 2,
            "degraded": True,
            "tunnels": [
                {"broker": "a:2223", "state": "connected", "last_error": None},
                {"broker": "b:2223", "state": "backing_off", "last_error": "cannot connect"},
            ],
        }
    )
    out = capsys.readouterr().out
    assert "tunnels:    1 of 2 up (min_tunnels 2)  DEGRADED" in out
    assert "  b:2223: backing_off (cannot connect)" in out
