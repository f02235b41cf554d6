"""The whole broker process: audit, control plane, gateway tunnels, SSH front door.

Every part is composed here, and only here: the packages below know one another
only through the Protocols they declare (the front door's
:class:`~broker.access.door.AccessPolicy` and
:class:`~broker.tunnel.connector.InstrumentConnector`, the API's
:mod:`broker.api.services`).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncssh
from fastapi import APIRouter

from audit.emitter import Emitter, FanOut
from audit.engines import PasswordSource
from audit.keyfiles import create_secret
from audit.recstore import RecordingStore
from audit.recstore.files import FileStore
from audit.retention import RetentionPolicy
from audit.service import AuditConfig, AuditRuntime, SinkConfig, build_audit
from audit.shipper import Sink
from broker.access.door import AccessPolicy
from broker.access.grants import latest_grant_end
from broker.access.passwords import Hasher
from broker.access.ports import utc_now
from broker.api.app import create_app
from broker.api.routes.audit import build_router as build_audit_router
from broker.api.routes.certs import build_cert_router
from broker.api.routes.health import cached
from broker.api.routes.holds import build_holds_router
from broker.api.routes.sessions import build_sessions_router
from broker.console.audit import AuditDesk, deployment_facts
from broker.console.audit import router as console_audit_router
from broker.console.gateway import RegistryTunnelStates
from broker.console.notify import Notifier
from broker.desktop.pins import CertificatePins
from broker.desktop.session import DesktopGate
from broker.frontdoor.ca import UserCA
from broker.frontdoor.context import FrontDoorOptions
from broker.frontdoor.door import FrontDoor, start_front_door
from broker.frontdoor.sshconfig import SshConfigRequest, known_hosts_line
from broker.frontdoor.sshconfig import render as render_ssh_config
from broker.identity import azure_credential, database_password
from broker.jobs import Jobs
from broker.keys import KeyStore, open_key_store
from broker.live.changes import ChangeFeed, DbCalls
from broker.live.clusterholds import ClusterHolds
from broker.live.directory import ClusterSessions, SessionDirectory
from broker.live.journal import end_lost_sessions
from broker.live.recorder import store_opener
from broker.runtime import Runtime, sweep_forever
from broker.services import ControlPlane
from broker.settings import BrokerSettings
from broker.store.directory import StoreAccessPolicy, StoreGatewayDirectory
from broker.tunnel.cluster import DEAD_AFTER_S
from broker.tunnel.connector import InstrumentConnector, TunnelConnector
from broker.tunnel.endpoint import TunnelRegistry, TunnelSettings, start_tunnel_listener
from broker.tunnel.peer import build_peer_link, replica_id, run_peer_link

log = logging.getLogger(__name__)

AUDIT_TICK_S = 5.0
READY_CACHE_S = 30.0


def _azure_sink(settings: BrokerSettings) -> list[SinkConfig]:
    """The Sentinel sink the reference deployment configures through the environment."""
    if not settings.azure_logs_endpoint:
        return []
    if not settings.azure_dcr_immutable_id:
        raise ValueError("HOSHU_AZURE_LOGS_ENDPOINT is set but HOSHU_AZURE_DCR_IMMUTABLE_ID is not")
    return [
        SinkConfig(
            kind="azure",
            name="sentinel",
            endpoint=settings.azure_logs_endpoint,
            rule_id=settings.azure_dcr_immutable_id,
            stream=settings.azure_dcr_stream,
        )
    ]


def recording_store(settings: BrokerSettings, credential: Any = None) -> RecordingStore:
    """Where session recordings go: the Blob container ``recordings_url`` names (signed
    in as the managed identity, ``credential``), else files in ``recordings_dir``.
    Checked at start: an unusable store stops the broker with one line naming it
    (:class:`audit.recstore.StoreUnavailable`), before any session could go unrecorded."""
    store: RecordingStore
    if settings.recordings_url:
        from audit.recstore.blob import BlobStore

        store = BlobStore(
            settings.recordings_url,
            credential if credential is not None else azure_credential(settings),
            flush_interval_s=settings.recordings_flush_s,
            flush_bytes=settings.recordings_flush_kib * 1024,
        )
    else:
        store = FileStore(settings.recordings_dir)
    store.check()
    return store


def audit_config(
    settings: BrokerSettings,
    *,
    db_password: PasswordSource | None = None,
    recordings: RecordingStore | None = None,
) -> AuditConfig:
    """The :class:`audit.service.AuditConfig` for a broker's settings; ``db_password``
    (Entra sign-in) is used for the index too when it is on PostgreSQL."""
    index_url = settings.audit_index_url or settings.db_url
    store_url = settings.audit_store_url or settings.db_url  # audit_store="postgres" only
    return AuditConfig(
        log_path=settings.audit_log_path,
        signing_key_path=settings.audit_signing_key_path,
        cursor_dir=settings.audit_cursor_dir,
        index_url=index_url,
        index_password=db_password if index_url.startswith("postgres") else None,
        recordings_dir=settings.recordings_dir,
        recordings=recordings,
        sinks=[SinkConfig(**s) for s in settings.audit_sinks] + _azure_sink(settings),
        mask_rules=settings.audit_mask_rules,
        checkpoint_every=settings.audit_checkpoint_every,
        checkpoint_interval_s=settings.audit_checkpoint_interval_s,
        fsync=settings.audit_fsync,
        lag_alert_s=settings.audit_lag_alert_s,
        retention=RetentionPolicy(
            settings.audit_events_retention_days, settings.recordings_retention_days
        ),
        unsigned_after_days=settings.report_unsigned_days,
        hostname=socket.gethostname(),
        store=settings.audit_store,
        store_url=store_url,
        store_password=db_password if store_url.startswith("postgres") else None,
        replica_id=settings.replica_id or socket.gethostname(),
        orphan_every_s=settings.audit_orphan_every_s,
    )


async def _audit_ticks(audit: AuditRuntime) -> None:
    """This replica's own audit duty: time-based checkpoints of its own chain (reports
    and retention are singleton jobs: :func:`add_audit_jobs`)."""
    while True:
        try:
            await asyncio.to_thread(audit.log.maybe_checkpoint)
        except Exception:  # retried next tick; failures show in sink status and events
            log.exception("audit duties failed")
        await asyncio.sleep(AUDIT_TICK_S)


def check_storage_apart(settings: BrokerSettings) -> None:
    """Refuse recordings (and file-transfer spools) inside the audit log's directory or
    around it: an engineer filling one must not stop the other.  A warning when they
    share a filesystem (give recordings their own volume: ``HOSHU_RECORDINGS_PATH``), when
    both really live there: not with recordings in Blob storage or the chain in PostgreSQL."""
    audit_dir = settings.audit_log_path.parent.resolve()
    rec = settings.recordings_dir.resolve()
    apart = [("recordings", rec), ("file-transfer spools", settings.spool_dir.resolve())]
    if settings.forward_capture_path is not None:
        apart.append(("forward captures", settings.forward_capture_path.resolve()))
    for what, d in apart:
        if d == audit_dir or audit_dir in d.parents or d in audit_dir.parents:
            raise ValueError(
                f"{what} ({d}) must not be in or around the audit log's "
                f"directory ({audit_dir}); give them a directory of their own"
            )
    rec.mkdir(parents=True, exist_ok=True)
    audit_dir.mkdir(parents=True, exist_ok=True)
    on_disk = not settings.recordings_url and settings.audit_store == "file"
    if on_disk and os.stat(rec).st_dev == os.stat(audit_dir).st_dev:
        log.warning(
            "recordings and the audit log share a filesystem: a full recording "
            "disk would stop the audit log too (see docs/admin.md)"
        )


def build_runtime(
    settings: BrokerSettings,
    *,
    emitter: Emitter | None = None,
    extra_routers: Sequence[APIRouter] = (),
    clock: Callable[[], datetime] = utc_now,
    hasher: Hasher | None = None,
    db_password: PasswordSource | None = None,
    keys: KeyStore | None = None,
) -> Runtime:
    """Open the store and keys, build the API and the background tasks (not started).

    ``emitter`` is the audit log (``audit.service.build_audit(...).log`` in the full
    broker); without it the control plane opens ``settings.audit_log_path`` itself.
    ``keys``: the process's key store (None: the one ``settings`` name)."""
    control = ControlPlane.open(
        settings, emitter=emitter, clock=clock, hasher=hasher, db_password=db_password, keys=keys
    )
    app = create_app(settings, services=control.services, extra_routers=extra_routers)
    rt = Runtime(settings, control, app)
    # the database off the event loop, the change feed and the singleton jobs
    rt.db = DbCalls(settings.db_threads)
    rt.closers.append(rt.db.close)
    feed = ChangeFeed(
        control.store, reread_s=settings.change_reread_s, confirm_s=settings.view_confirm_s
    )
    rt.feed = feed
    rt.tasks.append(feed.run)
    rt.readiness.add("change_feed", _view_probe(feed))
    jobs = Jobs(control.store.engine, settings.replica_id or socket.gethostname())
    jobs.add("grants.sweep", settings.sweep_interval_s, control.services.grants.sweep)
    rt.jobs = jobs
    rt.tasks.append(jobs.run)
    rt.tasks.append(lambda: sweep_forever(control, settings.sweep_interval_s, grants=False))
    rt.closers.append(control.close)
    return rt


def _view_probe(feed: ChangeFeed) -> Callable[[], None]:
    """/readyz: not ready while this replica cannot confirm its view of the database."""

    def check() -> None:
        if feed.started and not feed.current():
            raise RuntimeError("the change feed has not confirmed the database view")

    return check


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    create_secret(path, key.export_private_key())  # born 0600, a planted file is refused
    key.write_public_key(path.with_name(path.name + ".pub"))
    return key


def store_grants_end(services: Any) -> Callable[[str, datetime], datetime | None]:
    """When the user's live grants end (the latest), from the control plane's store; a
    grant counts only as :func:`broker.access.grants.grant_holds` says."""

    def grants_end(user_id: str, now: datetime) -> datetime | None:
        with services.ctx.uow() as tx:
            end: datetime | None = latest_grant_end(tx, user_id, now)
            return end

    return grants_end


@dataclass
class FrontDoorHandle:
    """Filled in once the task has started: ``door`` (port, sessions, ca)."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    door: FrontDoor | None = None


def console_ssh_config(
    settings: BrokerSettings, host_key_line: str
) -> Callable[[str, list[str]], str]:
    """The console's ssh_config download (``broker.console.engineer``): the text
    ``hoshu ssh-config`` prints for a user and instruments, with the pinned broker key.

    The host is the front door's address, or the public API URL's host when the
    front door listens on every interface."""
    pinned = known_hosts_line(host_key_line)
    host = settings.ssh_host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104
        host = urlsplit(settings.api_url).hostname or "127.0.0.1"

    def make(user: str, instruments: list[str]) -> str:
        req = SshConfigRequest(user, host, settings.ssh_port, tuple(instruments))
        return (
            render_ssh_config(req)
            + f"# pin the broker key: put this line in {req.known_hosts_file}\n# {pinned}\n"
        )

    return make


def attach_front_door(
    rt: Runtime,
    connector: InstrumentConnector,
    *,
    policy: AccessPolicy | None = None,
    options: FrontDoorOptions | None = None,
    port: int | None = None,
    sessions_routes: bool = False,
    recordings: RecordingStore | None = None,
    cluster: ClusterSessions | None = None,
    holds: ClusterHolds | None = None,
) -> FrontDoorHandle:
    """Register the front door as a task of ``rt`` and its routes on ``rt.app``.

    Routes: ``/v1/ssh/certificate`` (:mod:`broker.api.routes.certs`) and, with
    ``sessions_routes``, ``/v1/sessions`` (:mod:`broker.api.routes.sessions`).
    Returns a handle whose ``door`` is set once the listener runs.
    """

    settings = rt.settings
    services = rt.control.services
    handle = FrontDoorHandle()
    keys = rt.control.keys if rt.control.keys is not None else open_key_store(settings)
    host_key = asyncssh.import_private_key(keys.front_door_host_key())
    rt.app.state.ssh_config = console_ssh_config(
        settings, host_key.export_public_key().decode("ascii")
    )
    ca = UserCA(asyncssh.import_private_key(keys.user_ca_key()))
    the_policy = policy if policy is not None else StoreAccessPolicy(services)
    emitter = services.ctx.emitter
    if sessions_routes:
        rt.app.include_router(
            build_sessions_router(
                lambda: handle.door.sessions if handle.door is not None else None,
                emitter,
                cluster=lambda: cluster,
            )
        )
        rt.app.include_router(
            build_holds_router(
                lambda: handle.door.sessions if handle.door is not None else None,
                emitter,
                board=lambda: holds,
            )
        )
        rt.app.state.hold_board = lambda: holds  # the cluster's held lines (clusterholds)
        rt.app.state.cluster_sessions = lambda: cluster  # other replicas' (broker.live.directory)
        # the console's live-session pages (broker.console.live) ask the same registry
        rt.app.state.live_sessions = lambda: (
            handle.door.sessions if handle.door is not None else None
        )
    # desktop sessions in the console (broker.console.desktop): the front door's live
    # sessions and route to instruments, recordings in the same store as terminal ones
    desktop_store = recordings if recordings is not None else FileStore(settings.recordings_dir)
    desktops: list[DesktopGate] = []
    rt.app.state.desktop_gate = lambda: desktops[0] if desktops else None
    rt.app.state.desktop_recordings = desktop_store
    rt.app.include_router(
        build_cert_router(
            lambda: ca, the_policy, store_grants_end(services), emitter, services.ctx.now
        )
    )

    async def run() -> None:
        door = await start_front_door(
            settings,
            the_policy,
            connector,
            emitter,
            settings.recordings_dir,
            host_key,
            ca=ca,
            options=options,
            clock=services.ctx.now,
            port=port,
            recording_opener=store_opener(recordings) if recordings is not None else None,
            # the store's policy: the change feed drives the watcher (a given one polls)
            feed=rt.feed if policy is None else None,
            db=rt.db,
        )
        if cluster is not None:  # the database accounts for its sessions, not the disk
            door.sessions.journal = None
            door.sessions.rows = cluster.directory
            cluster.local = door.sessions
        door.holds = holds
        handle.door = door
        desktops.append(
            DesktopGate(
                the_policy,
                connector,
                door.sessions,
                emitter,
                desktop_store,
                services.ctx.now,
                door.ids,
                max_bytes=door.options.max_recording_bytes,
                clipboard_allowed=StoreAccessPolicy(services).clipboard_allowed,
                drive_allowed=StoreAccessPolicy(services).drive_allowed,
                drives_dir=settings.drives_dir,
                scan_command=door.options.scan_command,
                scan_timeout_s=door.options.scan_timeout_s,
                pin_certificate=CertificatePins(services),
            )
        )
        # a broker that was killed left its sessions' drive folders: none is live now
        await asyncio.to_thread(desktops[-1].sweep_drives)
        handle.ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await door.close()

    async def drain(grace_s: float) -> None:
        if handle.door is not None:
            await handle.door.drain(grace_s)

    rt.tasks.append(run)
    rt.drainers.append(drain)
    return handle


def build_broker(
    settings: BrokerSettings,
    *,
    sinks: Sequence[Sink] | None = None,
    front_door_options: FrontDoorOptions | None = None,
) -> Runtime:
    """Assemble every part of the broker; :func:`broker.runtime.serve` runs it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    check_storage_apart(settings)
    # one managed-identity credential for every Azure client (broker.identity), built
    # only when something signs in to Azure
    credential = (
        azure_credential(settings)
        if (
            settings.database_auth == "entra"
            or settings.azure_logs_endpoint
            or settings.recordings_url
            or settings.key_vault_url
        )
        else None
    )
    # the keys first: without them nothing can be signed, sealed or served (fails closed,
    # one line naming the store and why: broker.keys.errors)
    keys = open_key_store(settings, credential=credential)
    keys.check()
    recordings = recording_store(settings, credential)
    db_password = database_password(settings, credential)
    audit = build_audit(
        audit_config(settings, db_password=db_password, recordings=recordings),
        sinks=sinks,
        credential=credential,
        signer=keys.checkpoint_signer(),
    )
    try:
        routers = [
            build_audit_router(
                index=audit.index,
                reports=audit.reports,
                recordings_dir=settings.recordings_dir,
                emitter=audit.log,
                recordings=recordings,
                sink_status=audit.status,
            ),
        ]
        # notifications (mail, Teams, signed webhooks) through the database's outbox:
        # beside the audit log, after it; each organisation's channels decide
        notifier = Notifier(settings)
        rt = build_runtime(
            settings,
            emitter=FanOut([audit.log, notifier]),
            extra_routers=routers,
            db_password=db_password,
            keys=keys,
        )
    except Exception:
        audit.stop()
        raise
    notifier.bind(rt.control.services, audit.log, rt.control.store.engine)
    rt.app.state.notification_store = rt.control.store.engine  # PUT /v1/notifications/{org}
    notifier.start()
    rt.closers.append(notifier.stop)  # closers run in reverse: before the log closes
    # the approver's work-report pages (broker.console.approver): the API's report service
    rt.app.state.work_reports = audit.reports
    audit.start()
    rt.closers.insert(0, audit.stop)  # closers run in reverse: the log closes last
    rt.closers.insert(0, keys.close)  # after the log's final (signed) checkpoint
    # /readyz: the stores this replica cannot work without (a passing check is kept 30 s)
    rt.readiness.add("key_store", cached(keys.check, READY_CACHE_S))
    rt.readiness.add("recording_store", cached(recordings.check, READY_CACHE_S))
    # before the front door listens: sessions a killed broker left open end now
    end_lost_sessions(
        settings.recordings_dir, audit.log, rt.control.services.ctx.now, store=recordings
    )
    # PostgreSQL: every live session has a row (broker.live.directory), so any replica
    # lists, follows and terminates it and a survivor ends a dead replica's sessions
    sessions_cluster = None
    hold_board = None
    if settings.db_url.startswith("postgres"):
        rows = SessionDirectory(
            rt.control.store.engine,
            replica_id(settings),
            clock=rt.control.services.ctx.now,
            emitter=audit.log,
            store=recordings,
            dead_after_s=DEAD_AFTER_S,
        )
        rows.end_own_leftovers()  # before the front door listens, as the journal's
        sessions_cluster = ClusterSessions(rows, feed=rt.feed)  # woken by terminate requests
        rt.tasks.append(sessions_cluster.run)
        rt.closers.append(rows.close)
        # held shell lines: listed and answered from any replica (broker.live.clusterholds)
        hold_board = ClusterHolds(
            rt.control.store.engine,
            replica_id(settings),
            clock=rt.control.services.ctx.now,
            feed=rt.feed,
            dead_after_s=DEAD_AFTER_S,
        )
        hold_board.end_own_leftovers()
        rt.tasks.append(hold_board.run)
        rt.closers.append(hold_board.close)
    directory = StoreGatewayDirectory(rt.control.services)
    registry = TunnelRegistry()
    # several replicas (HOSHU_PEER_PORT): gateways tunnelled to another replica are
    # reached through it; the tunnels held here are claimed in the database
    peers = build_peer_link(
        settings, rt.control.store.engine, registry, audit.log, rt.control.services.ctx.now
    )
    attach_front_door(
        rt,
        TunnelConnector(registry, peers),
        options=front_door_options,
        sessions_routes=True,
        recordings=recordings,
        cluster=sessions_cluster,
        holds=hold_board,
    )
    # the console's gateway page (broker.console.gateway) reads the tunnels held here and,
    # with several replicas, the database's tunnel registry
    rt.app.state.gateway_tunnels = RegistryTunnelStates(
        registry, peers.cluster.holders if peers is not None else None
    )
    # the console's auditor pages (broker.console.audit) read this broker's audit trail
    rt.app.state.audit_desk = AuditDesk(
        index=audit.index,
        recordings=recordings,
        verify=audit.verify,
        deployment=lambda: deployment_facts(settings, audit.index),
    )
    rt.app.include_router(console_audit_router)
    if peers is not None:
        the_peers = peers
        rt.tasks.append(lambda: run_peer_link(the_peers))
        # on SIGTERM, after the drain: the others stop routing here (tunnel rows dropped)
        rt.leavers.append(the_peers.leave)

    async def run_tunnels() -> None:
        tunnels = await start_tunnel_listener(
            TunnelSettings.from_broker(settings),
            asyncssh.import_private_key(keys.tunnel_host_key()),
            directory,
            audit.log,
            registry=registry,
            offload=rt.db,
        )
        log.info("gateway tunnels on %s:%d", settings.tunnel_host, tunnels.port)
        try:
            await asyncio.Event().wait()
        finally:
            await tunnels.close()

    rt.tasks.append(run_tunnels)
    rt.tasks.append(lambda: _audit_ticks(audit))
    if rt.jobs is not None:
        add_audit_jobs(rt.jobs, audit, settings.jobs_interval_s)
    return rt


def add_audit_jobs(jobs: Jobs, audit: AuditRuntime, interval_s: float) -> None:
    """Reports of ended grants, the unsigned-report check and retention: once per period
    across the replicas (they read and write the shared index and recordings)."""

    def reports() -> None:
        audit.reports.generate_due()
        audit.reports.check_unsigned()

    jobs.add("audit.reports", interval_s, reports)
    jobs.add("audit.retention", interval_s, audit.retention.run)
