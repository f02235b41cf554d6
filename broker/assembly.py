"""The whole broker process: audit, control plane, gateway tunnels, SSH front door.

:func:`build_broker` is what ``hoshu serve`` runs.  Order matters and fails
closed: the audit log (verified, with its signing key) opens first and is the
one emitter every part writes to; if it cannot open, the broker does not
start.  The control plane, the tunnel endpoint for gateways and the engineers'
SSH front door are built on top; on shutdown the front door closes first
(ending live sessions, which writes their end events), then the tunnels, then
the audit log (a final signed checkpoint).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from audit.service import AuditRuntime, build_audit
from audit.shipper import Sink
from broker.api.routes.audit import build_router as build_audit_router
from broker.api.routes.audit import default_authenticate
from broker.api.routes.sessions import build_sessions_router
from broker.runtime import Runtime, build_runtime
from broker.settings import BrokerSettings
from broker.ssh.ca import UserCA
from broker.ssh.frontdoor import FrontDoor, FrontDoorOptions, start_front_door
from broker.ssh.ports import AccessPolicy, TunnelConnector
from broker.ssh.tunnel import TunnelListener, TunnelSettings, start_tunnel_listener
from broker.store.directory import StoreAccessPolicy, StoreGatewayDirectory

log = logging.getLogger("hoshu.broker")

AUDIT_TICK_S = 5.0


@dataclass
class SshParts:
    """The SSH listeners, once started (None before)."""

    door: FrontDoor | None = None
    tunnels: TunnelListener | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def load_or_create_key(path: Path) -> asyncssh.SSHKey:
    """An Ed25519 host key kept in ``path`` (created 0600 when missing)."""
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(path)
    path.chmod(0o600)
    return key


def audit_config(settings: BrokerSettings):  # type: ignore[no-untyped-def]
    from broker.cli.audit import audit_config as from_settings

    return from_settings(settings)


async def _audit_ticks(audit: AuditRuntime) -> None:
    while True:
        try:
            await asyncio.to_thread(audit.tick)
        except Exception:  # retried next tick; failures show in sink status and events
            log.exception("audit duties failed")
        await asyncio.sleep(AUDIT_TICK_S)


def build_broker(settings: BrokerSettings, *, sinks: Sequence[Sink] | None = None,
                 front_door_options: FrontDoorOptions | None = None) -> Runtime:
    """Assemble every part of the broker; :func:`broker.runtime.serve` runs it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    audit = build_audit(audit_config(settings), sinks=sinks)
    ssh = SshParts()
    try:
        routers = [
            build_audit_router(index=audit.index, reports=audit.reports,
                               recordings_dir=settings.recordings_dir, emitter=audit.log,
                               sink_status=audit.status),
            build_sessions_router(lambda: ssh.door.sessions if ssh.door else None,
                                  default_authenticate),  # type: ignore[arg-type]
        ]
        rt = build_runtime(settings, emitter=audit.log, extra_routers=routers)
    except Exception:
        audit.stop()
        raise
    audit.start()
    rt.closers.insert(0, audit.stop)  # closers run in reverse: the log closes last
    policy: AccessPolicy = StoreAccessPolicy(rt.control.services)  # type: ignore[assignment]
    directory = StoreGatewayDirectory(rt.control.services)
    keys = settings.data_dir / "keys"

    async def run_ssh() -> None:
        tunnels = await start_tunnel_listener(
            TunnelSettings.from_broker(settings),
            asyncssh.read_private_key(settings.host_key_path), directory, audit.log)
        ssh.tunnels = tunnels
        ssh.door = await start_front_door(
            settings, policy, TunnelConnector(tunnels.registry), audit.log,
            settings.recordings_dir, load_or_create_key(keys / "frontdoor_host_key"),
            ca=UserCA.load_or_create(keys / "user_ca"), options=front_door_options)
        ssh.ready.set()
        log.info("front door on %s:%d, gateway tunnels on %s:%d", settings.ssh_host,
                 ssh.door.port, settings.tunnel_host, tunnels.port)
        await asyncio.Event().wait()

    async def close_ssh() -> None:
        if ssh.door is not None:
            await ssh.door.close()
        if ssh.tunnels is not None:
            await ssh.tunnels.close()

    rt.tasks.append(run_ssh)
    rt.tasks.append(lambda: _audit_ticks(audit))
    rt.closers.append(close_ssh)
    return rt
