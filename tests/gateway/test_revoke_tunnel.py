"""Revoking a gateway closes its live tunnel at once, and it cannot come back."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import asyncssh

from audit.testing import CapturingEmitter
from broker.access.services import Services
from broker.store.db import Store
from broker.store.directory import StoreGatewayDirectory
from broker.tunnel.endpoint import TunnelSettings, start_tunnel_listener
from tests.control.conftest import T0, build_world, make_context
from tests.gateway.harness import AgentState, EchoServer, Lab, write_gateway
from tests.support import FakeClock, poll


async def test_revoking_a_gateway_closes_its_tunnel_and_refuses_it_again(tmp_path: Path) -> None:
    """The real gateway agent, the real store: the hospital admin revokes the gateway
    through the service; the broker closes the live tunnel (``gateway.disconnected``
    says revoked) and the agent's reconnects are refused (``gateway.refused``)."""
    events = CapturingEmitter()
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}", migrate=True)
    services = Services.build(make_context(store, events, FakeClock(T0)))
    world = build_world(services, services.ctx.clock)  # type: ignore[arg-type]
    broker_key = asyncssh.generate_private_key("ssh-ed25519")
    listener = await start_tunnel_listener(
        TunnelSettings(port=0, heartbeat_s=1, login_timeout_s=5, revocation_check_s=0.2),
        broker_key,
        StoreGatewayDirectory(services),
        events,
    )
    echo = await EchoServer().start()
    path, gateway_key = write_gateway(
        tmp_path,
        broker_key=broker_key,
        tunnel_port=listener.port,
        instruments=[
            {"name": "cobas-1", "host": "127.0.0.1", "ports": [echo.port], "protocol": "tcp"}
        ],
    )
    token = services.gateways.issue_token(world.actors["hadmin"], "hoshi-hospital").token
    gw_id = services.gateways.enroll(
        token, gateway_key.export_public_key().decode().strip(), "stmary-gw1", "1.0"
    ).gateway_id
    lab = Lab(
        tmp_path,
        broker_key,
        None,  # type: ignore[arg-type]  # only restart_broker reads it; never called here
        events,
        listener,
        echo,
        path,
        gateway_key,
    )
    try:
        agent = await lab.start_agent()
        conn = await listener.registry.wait_for(gw_id, 10)
        await poll(lambda: agent.state is AgentState.CONNECTED, what="connected")
        reader, writer = await conn.open_connection("cobas-1", echo.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"

        services.gateways.revoke(world.actors["hadmin"], gw_id)
        await poll(lambda: listener.registry.connection(gw_id) is None, 3, "the live tunnel closed")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # its channel ended too
        await poll(
            lambda: any(
                e.get("GatewayId") == gw_id for e in events.of_type("gateway.disconnected")
            ),
            3,
            "disconnect event",
        )
        gone = [e for e in events.of_type("gateway.disconnected") if e.get("GatewayId") == gw_id]
        assert gone[0].get("EventResultDetails", "").startswith("revoked")
        assert gone[0].get("EventResult") == "Failure"
        await poll(lambda: bool(events.of_type("gateway.refused")), 10, "the reconnect refused")
        assert listener.registry.connection(gw_id) is None
        assert agent.state is not AgentState.CONNECTED
    finally:
        for a, task, audit in list(lab.agents):
            a.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            audit.close()
        await listener.close()
        await echo.close()
        store.close()
