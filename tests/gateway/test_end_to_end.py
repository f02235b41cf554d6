"""With the real control plane: enrol through the API, then window-only mode follows a grant.

The control plane's store answers the tunnel as its ``GatewayDirectory``; the
gateway enrols with a token the hospital admin issued, pins the broker key,
reports its inventory on a short check, and holds a tunnel only once a grant
on its instrument is approved.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
from fastapi.testclient import TestClient

from audit.testing import CapturingEmitter
from broker.access.crypto import SecretBox
from broker.access.passwords import Hasher
from broker.access.ports import Config, Context
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.api.app import create_app
from broker.settings import BrokerSettings
from broker.store.db import Store
from broker.store.directory import StoreGatewayDirectory
from broker.tunnel.endpoint import TunnelSettings, start_tunnel_listener
from gateway.agent import AgentState, GatewayAgent
from gateway.auditlog import LocalAudit
from gateway.config import load_config
from gateway.enroll import enroll, load_enrollment
from tests.control.conftest import build_world
from tests.gateway.harness import EchoServer
from tests.support import FakeClock, free_port, poll


async def test_enrolled_window_only_gateway_opens_for_an_approved_grant(tmp_path: Path) -> None:
    broker_key = asyncssh.generate_private_key("ssh-ed25519")
    port = free_port()
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}", migrate=True)
    emitter = CapturingEmitter()
    clock = FakeClock(datetime.now(UTC))
    services = Services.build(
        Context(
            uow=store.uow,
            emitter=emitter,
            secrets=SecretBox.generate(),
            clock=clock,
            hasher=Hasher(time_cost=1, memory_cost=64),
            config=Config(
                broker_host_key=broker_key.export_public_key().decode().strip(),
                tunnel_host="127.0.0.1",
                tunnel_port=port,
            ),
        )
    )
    world = build_world(services, clock)
    echo = await EchoServer().start()
    state = tmp_path / "state"
    cfg_path = tmp_path / "gateway.toml"
    cfg_path.write_text(f"""
[gateway]
name = "gw-hoshi-1"
state_dir = "{state}"
mode = "window-only"
[broker]
api = "http://testserver"
[tunnel]
heartbeat_s = 1
check_interval_s = 0.3
backoff_initial_s = 0.2
inventory_interval_s = 60
[[instrument]]
name = "cobas-1"
host = "127.0.0.1"
ports = [{echo.port}]
protocol = "tcp"
""")
    config = load_config(cfg_path)
    token = services.gateways.issue_token(world.actors["hadmin"], "hoshi-hospital").token
    with TestClient(create_app(BrokerSettings(), services=services)) as api:
        enrollment = await asyncio.to_thread(enroll, config, token, version="0.1.0", client=api)
    assert enrollment.tunnel_port == port and enrollment.hospital == "hoshi-hospital"
    assert emitter.of_type("gateway.enrolled")

    listener = await start_tunnel_listener(
        TunnelSettings(port=port, heartbeat_s=1, windows_interval_s=0.5),
        broker_key,
        StoreGatewayDirectory(services),
        emitter,
    )
    audit = LocalAudit(
        config.audit_path,
        gateway_name=config.name,
        version="t",
        clock=lambda: datetime.now(UTC),
        gateway_id=enrollment.gateway_id,
    )
    _, key = load_enrollment(config)
    agent = GatewayAgent(config, enrollment, key, audit)
    task = asyncio.create_task(agent.run())
    registry = listener.registry
    gw = enrollment.gateway_id
    try:
        # short checks only: the store learns the gateway serves cobas-1, no tunnel is held
        await poll(
            lambda: any(e.get("GatewayId") == gw for e in emitter.of_type("gateway.inventory")),
            what="inventory forwarded on a check",
        )
        assert registry.connection(gw) is None and agent.windows == []

        services.estate.update_instrument(world.admin, "cobas-1", {"gateway": gw})
        req = services.requests.create(world.actors["eng"], NewRequest(["cobas-1"], 3600, "fix"))
        grant = (
            services.requests.approve(world.actors["appr"], req.id).grant
            or services.requests.approve(world.actors["appr2"], req.id).grant
        )
        assert grant is not None
        conn = await registry.wait_for(gw, 10)
        await poll(lambda: agent.state is AgentState.CONNECTED, what="tunnel held")
        r, w = await conn.open_connection("cobas-1", echo.port)
        w.write(b"qc")
        assert await asyncio.wait_for(r.readexactly(2), 5) == b"qc"

        services.grants.revoke(world.actors["appr"], grant.id, "done early")
        registry.push_windows(gw)
        await registry.wait_gone(gw, 5)
        assert await asyncio.wait_for(r.read(10), 2) == b""
        await poll(lambda: agent.state is AgentState.IDLE, what="idle again")
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)
        audit.close()
        await listener.close()
        await echo.close()
        store.close()
