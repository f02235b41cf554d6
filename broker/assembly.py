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
from dataclasses import dataclass

import asyncssh

from audit.service import AuditRuntime, build_audit
from audit.shipper import Sink
from broker.api.routes.audit import build_router as build_audit_router
from broker.runtime import Runtime, build_runtime
from broker.settings import BrokerSettings
from broker.ssh.frontdoor import FrontDoorOptions
from broker.ssh.ports import TunnelConnector
from broker.ssh.tunnel import (
    TunnelListener,
    TunnelRegistry,
    TunnelSettings,
    start_tunnel_listener,
)
from broker.ssh.wiring import FrontDoorHandle, attach_front_door
from broker.store.directory import StoreGatewayDirectory

log = logging.getLogger("hoshu.broker")

AUDIT_TICK_S = 5.0


@dataclass
class SshParts:
    """The SSH listeners: the front door's handle, and the tunnel listener once started."""

    door: FrontDoorHandle
    tunnels: TunnelListener | None = None




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
    try:
        routers = [
            build_audit_router(index=audit.index, reports=audit.reports,
                               recordings_dir=settings.recordings_dir, emitter=audit.log,
                               sink_status=audit.status),
        ]
        rt = build_runtime(settings, emitter=audit.log, extra_routers=routers)
    except Exception:
        audit.stop()
        raise
    audit.start()
    rt.closers.insert(0, audit.stop)  # closers run in reverse: the log closes last
    directory = StoreGatewayDirectory(rt.control.services)
    registry = TunnelRegistry()
    parts = SshParts(door=attach_front_door(rt, TunnelConnector(registry),
                                            options=front_door_options, sessions_routes=True))

    async def run_tunnels() -> None:
        parts.tunnels = await start_tunnel_listener(
            TunnelSettings.from_broker(settings),
            asyncssh.read_private_key(settings.host_key_path), directory, audit.log,
            registry=registry)
        log.info("gateway tunnels on %s:%d", settings.tunnel_host, parts.tunnels.port)
        try:
            await asyncio.Event().wait()
        finally:
            await parts.tunnels.close()

    rt.tasks.append(run_tunnels)
    rt.tasks.append(lambda: _audit_ticks(audit))
    return rt
