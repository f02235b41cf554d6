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
import os
import socket
from collections.abc import Sequence

import asyncssh

from audit.retention import RetentionPolicy
from audit.service import AuditConfig, AuditRuntime, SinkConfig, build_audit
from audit.shipper import Sink
from broker.api.routes.audit import build_router as build_audit_router
from broker.runtime import Runtime, build_runtime
from broker.settings import BrokerSettings
from broker.ssh.frontdoor import FrontDoorOptions
from broker.ssh.journal import end_lost_sessions
from broker.ssh.ports import TunnelConnector
from broker.ssh.tunnel import TunnelRegistry, TunnelSettings, start_tunnel_listener
from broker.ssh.wiring import attach_front_door
from broker.store.directory import StoreGatewayDirectory

log = logging.getLogger("hoshu.broker")

AUDIT_TICK_S = 5.0


def _azure_sink(settings: BrokerSettings) -> list[SinkConfig]:
    """The Sentinel sink the reference deployment configures through the environment."""
    if not settings.azure_logs_endpoint:
        return []
    if not settings.azure_dcr_immutable_id:
        raise ValueError("HOSHU_AZURE_LOGS_ENDPOINT is set but HOSHU_AZURE_DCR_IMMUTABLE_ID is not")
    return [SinkConfig(kind="azure", name="sentinel", endpoint=settings.azure_logs_endpoint,
                       rule_id=settings.azure_dcr_immutable_id,
                       stream=settings.azure_dcr_stream)]


def audit_config(settings: BrokerSettings) -> AuditConfig:
    """The :class:`audit.service.AuditConfig` for a broker's settings."""
    return AuditConfig(
        log_path=settings.audit_log_path,
        signing_key_path=settings.audit_signing_key_path,
        cursor_dir=settings.audit_cursor_dir,
        index_url=settings.audit_index_url or settings.db_url,
        recordings_dir=settings.recordings_dir,
        sinks=[SinkConfig(**s) for s in settings.audit_sinks] + _azure_sink(settings),
        mask_rules=settings.audit_mask_rules,
        checkpoint_every=settings.audit_checkpoint_every,
        checkpoint_interval_s=settings.audit_checkpoint_interval_s,
        fsync=settings.audit_fsync,
        lag_alert_s=settings.audit_lag_alert_s,
        retention=RetentionPolicy(settings.audit_events_retention_days,
                                  settings.recordings_retention_days),
        unsigned_after_days=settings.report_unsigned_days,
        hostname=socket.gethostname(),
    )


async def _audit_ticks(audit: AuditRuntime) -> None:
    while True:
        try:
            await asyncio.to_thread(audit.tick)
        except Exception:  # retried next tick; failures show in sink status and events
            log.exception("audit duties failed")
        await asyncio.sleep(AUDIT_TICK_S)


def check_storage_apart(settings: BrokerSettings) -> None:
    """Refuse recordings (and file-transfer spools) inside the audit log's directory or
    around it: an engineer filling one must not stop the other.  A warning when they
    share a filesystem (give recordings their own volume: ``HOSHU_RECORDINGS_PATH``)."""
    audit_dir = settings.audit_log_path.parent.resolve()
    rec = settings.recordings_dir.resolve()
    apart = [("recordings", rec), ("file-transfer spools", settings.spool_dir.resolve())]
    if settings.forward_capture_path is not None:
        apart.append(("forward captures", settings.forward_capture_path.resolve()))
    for what, d in apart:
        if d == audit_dir or audit_dir in d.parents or d in audit_dir.parents:
            raise ValueError(f"{what} ({d}) must not be in or around the audit log's "
                             f"directory ({audit_dir}); give them a directory of their own")
    rec.mkdir(parents=True, exist_ok=True)
    audit_dir.mkdir(parents=True, exist_ok=True)
    if os.stat(rec).st_dev == os.stat(audit_dir).st_dev:
        log.warning("recordings and the audit log share a filesystem: a full recording "
                    "disk would stop the audit log too (see docs/admin.md)")


def build_broker(settings: BrokerSettings, *, sinks: Sequence[Sink] | None = None,
                 front_door_options: FrontDoorOptions | None = None) -> Runtime:
    """Assemble every part of the broker; :func:`broker.runtime.serve` runs it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    check_storage_apart(settings)
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
    # before the front door listens: sessions a killed broker left open end now
    end_lost_sessions(settings.recordings_dir, audit.log, rt.control.services.ctx.now)
    directory = StoreGatewayDirectory(rt.control.services)
    registry = TunnelRegistry()
    attach_front_door(rt, TunnelConnector(registry), options=front_door_options,
                      sessions_routes=True)

    async def run_tunnels() -> None:
        tunnels = await start_tunnel_listener(
            TunnelSettings.from_broker(settings),
            asyncssh.read_private_key(settings.host_key_path), directory, audit.log,
            registry=registry)
        log.info("gateway tunnels on %s:%d", settings.tunnel_host, tunnels.port)
        try:
            await asyncio.Event().wait()
        finally:
            await tunnels.close()

    rt.tasks.append(run_tunnels)
    rt.tasks.append(lambda: _audit_ticks(audit))
    return rt
