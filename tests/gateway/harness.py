"""Loopback harness for gateway tests: a broker tunnel endpoint, a gateway, instruments."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncssh

from audit.testing import CapturingEmitter
from broker.tunnel.endpoint import TunnelListener, TunnelSettings, start_tunnel_listener
from gateway.agent import AgentState, GatewayAgent
from gateway.auditlog import LocalAudit
from gateway.config import GatewayConfig, load_config
from gateway.enroll import load_enrollment
from wire import GatewayRecord, InventoryItem

GATEWAY_ID = "gw0001"
HOSPITAL_ID = "hosp01"


class MemoryDirectory:
    """The control plane's GatewayDirectory, in memory."""

    def __init__(self) -> None:
        self.keys: dict[str, GatewayRecord] = {}
        self.windows: list[tuple[datetime, datetime]] = []
        self.inventory: dict[str, list[InventoryItem]] = {}

    def gateway_for_key(self, openssh_public_key: str) -> GatewayRecord | None:
        blob = openssh_public_key.split()[:2]
        for k, rec in self.keys.items():
            if k.split()[:2] == blob:
                return rec
        return None

    def windows_for(self, gateway_id: str, now: datetime) -> list[tuple[datetime, datetime]]:
        return list(self.windows)

    def record_inventory(self, gateway_id: str, instruments: list[InventoryItem]) -> None:
        self.inventory[gateway_id] = instruments


class EchoServer:
    """A stand-in instrument: echoes bytes, counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> EchoServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError):
            while data := await r.read(4096):
                w.write(data)
                await w.drain()
        w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


def write_gateway(
    tmp: Path,
    *,
    broker_key: asyncssh.SSHKey,
    tunnel_port: int,
    instruments: list[dict[str, Any]],
    mode: str = "always",
    tunnel: dict[str, float] | None = None,
) -> tuple[Path, asyncssh.SSHKey]:
    """A configured and enrolled gateway state directory; returns (config path, key)."""
    state = tmp / "state"
    state.mkdir(mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519")
    (state / "gateway_key").write_bytes(key.export_private_key())
    (state / "gateway_key").chmod(0o600)
    (state / "enrollment.json").write_text(
        json.dumps(
            {
                "gateway_id": GATEWAY_ID,
                "hospital_id": HOSPITAL_ID,
                "hospital": "st-mary",
                "broker_host_key": broker_key.export_public_key().decode(),
                "tunnel_host": "127.0.0.1",
                "tunnel_port": tunnel_port,
                "protocol_version": 1,
            }
        )
    )
    t = {
        "heartbeat_s": 1,
        "heartbeat_misses": 3,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 2,
        "connect_timeout_s": 5,
        "check_interval_s": 0.5,
        "inventory_interval_s": 60,
    }
    t.update(tunnel or {})
    lines = [
        "[gateway]",
        'name = "stmary-gw1"',
        f'state_dir = "{state}"',
        f'mode = "{mode}"',
        "[broker]",
        'api = "http://127.0.0.1:1"',
        "[tunnel]",
    ]
    lines += [f"{k} = {v}" for k, v in t.items()]
    for inst in instruments:
        lines.append("[[instrument]]")
        for k, v in inst.items():
            lines.append(f"{k} = {json.dumps(v)}")
    path = tmp / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, key


@dataclass
class Lab:
    tmp: Path
    broker_key: asyncssh.SSHKey
    directory: MemoryDirectory
    emitter: CapturingEmitter
    listener: TunnelListener
    echo: EchoServer
    config_path: Path
    gateway_key: asyncssh.SSHKey
    agents: list[tuple[GatewayAgent, asyncio.Task[None], LocalAudit]] = field(default_factory=list)

    @property
    def config(self) -> GatewayConfig:
        return load_config(self.config_path)

    def allow_port(self, port: int) -> None:
        """List ``port`` as well for the lab's instrument (read when an agent starts)."""
        self.config_path.write_text(
            self.config_path.read_text().replace(
                f"ports = [{self.echo.port}]", f"ports = [{self.echo.port}, {port}]"
            )
        )

    async def start_agent(self, **kw: Any) -> GatewayAgent:
        config = self.config
        enrollment, key = load_enrollment(config)
        audit = LocalAudit(
            config.audit_path,
            gateway_name=config.name,
            version="test",
            clock=kw.get("clock") or _now,
            gateway_id=enrollment.gateway_id,
        )
        agent = GatewayAgent(config, enrollment, key, audit, version="test", **kw)
        task = asyncio.create_task(agent.run())
        self.agents.append((agent, task, audit))
        return agent

    async def stop_agent(self, agent: GatewayAgent) -> None:
        for a, task, audit in list(self.agents):
            if a is agent:
                a.stop()
                await asyncio.wait_for(task, 5)
                audit.close()
                self.agents.remove((a, task, audit))

    async def restart_broker(self) -> None:
        port = self.listener.port
        await self.listener.close()
        self.listener = await start_tunnel_listener(
            TunnelSettings(port=port, heartbeat_s=1, login_timeout_s=5),
            self.broker_key,
            self.directory,
            self.emitter,
        )


class _OpenInstrument(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # a stand-in SSH instrument: no authentication


@contextlib.asynccontextmanager
async def ssh_instrument(
    process_factory: Callable[[Any], object], *, encoding: str | None = "utf-8"
) -> AsyncIterator[int]:
    """A stand-in SSH instrument on a loopback port that asks for no login and runs
    ``process_factory`` for each session; its port."""
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=_OpenInstrument,
        process_factory=process_factory,
        encoding=encoding,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def _now() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)


@contextlib.asynccontextmanager
async def lab(
    tmp: Path,
    *,
    mode: str = "always",
    enrolled: bool = True,
    broker_key: asyncssh.SSHKey | None = None,
    tunnel: dict[str, float] | None = None,
) -> AsyncIterator[Lab]:
    bkey = asyncssh.generate_private_key("ssh-ed25519")
    directory = MemoryDirectory()
    emitter = CapturingEmitter()
    listener = await start_tunnel_listener(
        TunnelSettings(port=0, heartbeat_s=1, login_timeout_s=5), bkey, directory, emitter
    )
    echo = await EchoServer().start()
    pinned = broker_key or bkey
    path, gkey = write_gateway(
        tmp,
        broker_key=pinned,
        tunnel_port=listener.port,
        instruments=[
            {
                "name": "cobas-c503-1",
                "host": "127.0.0.1",
                "ports": [echo.port],
                "protocol": "tcp",
                "department": "chemistry",
                "model": "c503",
            }
        ],
        mode=mode,
        tunnel=tunnel,
    )
    if enrolled:
        directory.keys[gkey.export_public_key().decode()] = GatewayRecord(
            GATEWAY_ID, HOSPITAL_ID, "stmary-gw1"
        )
    the_lab = Lab(tmp, bkey, directory, emitter, listener, echo, path, gkey)
    try:
        yield the_lab
    finally:
        for agent, task, audit in list(the_lab.agents):
            agent.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            audit.close()
        await the_lab.listener.close()
        await echo.close()


__all__ = ["GATEWAY_ID", "AgentState", "Lab", "MemoryDirectory", "lab"]
