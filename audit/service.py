"""Wiring: the hash-chained log, the shippers, the index and the reports, built once.

The broker calls :func:`build_audit` at start-up with an :class:`AuditConfig`
(the CLI derives one from ``BrokerSettings``), passes ``runtime.log`` as the
emitter to every component, includes the API router built from
``runtime.index``/``runtime.reports``, calls ``runtime.start()``, then
``runtime.tick()`` every few seconds (time-based checkpoints, lag alerts,
unsigned-report alerts, retention) and ``runtime.stop()`` on shutdown.

The chain is the file log (``store="file"``, the default) or this replica's chain
in PostgreSQL (``store="postgres"``: :mod:`audit.pgchain`, cursors as rows too).

Failure policy: if the log (or the PostgreSQL store) or the signing key cannot be
opened, ``build_audit`` raises and the broker must not start (no audit, no access).  A sink or the
index being down never blocks emitters; it shows in ``runtime.status()`` and
as ``audit.sink_lag`` events.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from audit.chain import ChainLog, VerifyResult, verify
from audit.events import new_event
from audit.index import AuditIndex, IndexSink
from audit.masking import Masker
from audit.outbox import CursorStore, FileOutbox
from audit.pgchain import PgChainLog, PgCursorStore, PgOutbox, store_engine, verify_chain
from audit.pgship import OrphanChains
from audit.retention import Retention, RetentionPolicy
from audit.shipper import Cursors, Shipper, ShippingService, Sink, Source
from audit.signing import CheckpointSigner, TrustedKeys
from audit.workreports import ReportService


@dataclass(frozen=True)
class SinkConfig:
    """One SIEM destination. ``kind``: fluentd, syslog or azure."""

    kind: str
    name: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False
    ca_file: str | None = None
    endpoint: str = ""  # azure: https://<dce>.ingest.monitor.azure.com
    rule_id: str = ""  # azure: the DCR immutable id
    stream: str = "Custom-HoshuAudit"
    client_id: str | None = None  # azure: user-assigned managed identity
    mask: bool = True  # mask patient identifiers before sending


@dataclass(frozen=True)
class AuditConfig:
    log_path: Path
    signing_key_path: Path
    cursor_dir: Path
    index_url: str
    recordings_dir: Path
    sinks: Sequence[SinkConfig] = ()
    # PostgreSQL sign-in without a password in index_url (an Entra ID token per new
    # connection: broker.identity.database_password); None: the URL's password
    index_password: Callable[[], str] | None = None
    mask_rules: Sequence[Mapping[str, Any]] = ()
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 60.0
    fsync: bool = False
    lag_alert_s: float = 300.0
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    # where recordings are (an audit.recstore.RecordingStore: retention deletes there);
    # None: files in recordings_dir
    recordings: Any = None
    unsigned_after_days: int = 7
    hostname: str = "hoshu-broker"
    # where the chain and the shipping cursors live: "file" (log_path, cursor_dir) or
    # "postgres" (store_url, default index_url; one chain per replica, docs/architecture.md)
    store: str = "file"
    store_url: str = ""
    store_password: Callable[[], str] | None = None
    replica_id: str = ""  # the chain's id; empty: hostname
    commit_timeout_s: float = 20.0  # postgres: an emit fails if not committed by then
    orphan_every_s: float = 30.0  # postgres: how often chains left behind are looked for


def _tls(cfg: SinkConfig) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    return (
        ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.ca_file
        else ssl.create_default_context()
    )


def make_sink(cfg: SinkConfig, *, hostname: str = "hoshu-broker", credential: Any = None) -> Sink:
    if cfg.kind == "fluentd":
        from audit.sinks.fluent import FluentForwardSink

        return FluentForwardSink(cfg.host, cfg.port, name=cfg.name or "fluentd", tls=_tls(cfg))
    if cfg.kind == "syslog":
        from audit.sinks.syslog import SyslogSink

        return SyslogSink(
            cfg.host, cfg.port, name=cfg.name or "syslog", tls=_tls(cfg), hostname=hostname
        )
    if cfg.kind == "azure":
        from audit.sinks.azure import AzureLogsSink, production_credential

        return AzureLogsSink(
            cfg.endpoint,
            cfg.rule_id,
            credential or production_credential(cfg.client_id),
            stream=cfg.stream,
            name=cfg.name or "sentinel",
        )
    raise ValueError(f"unknown sink kind {cfg.kind!r} (fluentd, syslog, azure)")


@dataclass
class AuditRuntime:
    log: ChainLog | PgChainLog
    signer: CheckpointSigner
    index: AuditIndex
    shipping: ShippingService
    reports: ReportService
    retention: Retention
    orphans: OrphanChains | None = None  # postgres: chains other replicas left behind

    def start(self) -> None:
        self.log.add_listener(self.shipping.wake)
        self.shipping.start()
        if self.orphans is not None:
            self.orphans.start()

    def tick(self) -> None:
        """Periodic duties: time-based checkpoint, reports of ended grants, unsigned
        reports, retention.  Call every few seconds to a minute."""
        self.log.maybe_checkpoint()
        self.reports.generate_due()
        self.reports.check_unsigned()
        self.retention.run()

    def verify(self) -> VerifyResult:
        """Verify the log up to now (signatures included) and record the outcome.

        Writes ``audit.verified`` or ``audit.verification_failed`` (severity High,
        naming the first bad position); run it daily and at shutdown.
        """
        keys = TrustedKeys(self.signer.public_keys)  # every version: rotations keep verifying
        # checkpoints are required as the auditor's check requires them: a file re-hashed
        # under the running broker cannot drop the ones it cannot sign again
        if isinstance(self.log, PgChainLog):
            result = verify_chain(
                self.log.engine,
                self.log.chain_id,
                keys=keys,
                upto=self.log.seq,
                checkpoint_every=self.log.checkpoint_every,
            )
        else:
            result = verify(
                self.log.path,
                keys=keys,
                upto=self.log.seq,
                checkpoint_every=self.log.checkpoint_every,
            )
        if result.ok:
            self.log.emit(
                new_event(
                    "audit.verified",
                    DvcRole="broker",
                    DvcHostname=self.log.hostname,
                    EventMessage=f"audit log verified: {result.count} events",
                    details={
                        "count": result.count,
                        "checkpoints": result.checkpoints,
                        "last_hash": result.last_hash,
                    },
                )
            )
        else:
            self.log.emit(
                new_event(
                    "audit.verification_failed",
                    DvcRole="broker",
                    DvcHostname=self.log.hostname,
                    EventResult="Failure",
                    EventResultDetails=result.reason[:500],
                    EventMessage=f"audit log tampered at position {result.first_bad}",
                    details={"position": result.first_bad, "reason": result.reason[:500]},
                )
            )
        return result

    def status(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.shipping.status()]

    def stop(self) -> None:
        if self.orphans is not None:
            self.orphans.stop()
        self.shipping.stop()
        self.log.checkpoint()
        self.log.close()
        self.index.engine.dispose()
        if isinstance(self.log, PgChainLog):
            self.log.engine.dispose()


def build_audit(
    config: AuditConfig,
    *,
    clock: Callable[[], datetime] | None = None,
    credential: Any = None,
    sinks: Sequence[Sink] | None = None,
    signer: CheckpointSigner | None = None,
) -> AuditRuntime:
    """Open the log (verified), the signing key, the index and one shipper per sink.

    ``sinks`` overrides the configured ones (tests); the index is always fed.
    ``signer``: the broker's key store's (``KeyStore.checkpoint_signer()``: a key
    file or Key Vault); None: the Ed25519 key file at ``config.signing_key_path``.
    """
    from audit.events import utc_now

    now = clock or utc_now
    if signer is None:
        signer = CheckpointSigner.load_or_create(config.signing_key_path)
    log, source, cursors = _open_chain(config, signer, now)
    try:
        index = AuditIndex.from_url(config.index_url, password=config.index_password)
        masker = Masker.from_config(config.mask_rules)
        built = (
            list(sinks)
            if sinks is not None
            else [
                make_sink(c, hostname=config.hostname, credential=credential) for c in config.sinks
            ]
        )
        masks = [True] * len(built) if sinks is not None else [c.mask for c in config.sinks]
        shippers = [
            Shipper(
                IndexSink(index),
                source,
                cursors,
                emitter=log,
                clock=now,
                lag_alert_s=config.lag_alert_s,
                batch_size=1000,
            )
        ]
        shippers += [
            Shipper(
                s,
                source,
                cursors,
                masker=masker if m else None,
                emitter=log,
                clock=now,
                lag_alert_s=config.lag_alert_s,
            )
            for s, m in zip(built, masks, strict=True)
        ]
    except Exception:
        log.close()
        if isinstance(log, PgChainLog):
            log.engine.dispose()
        raise
    reports = ReportService(index, log, clock=now, unsigned_after_days=config.unsigned_after_days)
    retention = Retention(
        config.retention,
        log,
        index=index,
        recordings=config.recordings,
        recordings_dir=config.recordings_dir,
        clock=now,
    )
    orphans = None
    if isinstance(log, PgChainLog):

        def make_shippers(outbox: PgOutbox, store: PgCursorStore) -> list[Shipper]:
            fresh = (
                []
                if sinks is not None
                else [  # a connection of their own
                    (make_sink(c, hostname=config.hostname, credential=credential), c.mask)
                    for c in config.sinks
                ]
            )
            return [
                Shipper(IndexSink(index), outbox, store, emitter=log, clock=now, batch_size=1000)
            ] + [
                Shipper(s, outbox, store, masker=masker if m else None, emitter=log, clock=now)
                for s, m in fresh
            ]

        orphans = OrphanChains(
            log.engine,
            log.chain_id,
            sinks=[s.sink.name for s in shippers],
            make_shippers=make_shippers,
            signer=signer,
            hostname=config.hostname,
            every_s=config.orphan_every_s,
        )
    return AuditRuntime(log, signer, index, ShippingService(shippers), reports, retention, orphans)


def _open_chain(
    config: AuditConfig,
    signer: CheckpointSigner,
    now: Callable[[], datetime],
) -> tuple[ChainLog | PgChainLog, Source, Cursors]:
    """The chain, what shippers read and where their cursors are, for ``config.store``."""
    if config.store == "file":
        return (
            ChainLog(
                config.log_path,
                fsync=config.fsync,
                signer=signer,
                checkpoint_every=config.checkpoint_every,
                checkpoint_interval_s=config.checkpoint_interval_s,
                clock=now,
                hostname=config.hostname,
            ),
            FileOutbox(config.log_path),
            CursorStore(config.cursor_dir),
        )
    if config.store != "postgres":
        raise ValueError(f"unknown audit store {config.store!r} (file, postgres)")
    chain_id = config.replica_id or config.hostname
    engine = store_engine(config.store_url or config.index_url, password=config.store_password)
    try:
        log = PgChainLog(
            engine,
            chain_id,
            signer=signer,
            checkpoint_every=config.checkpoint_every,
            checkpoint_interval_s=config.checkpoint_interval_s,
            clock=now,
            hostname=config.hostname,
            commit_timeout_s=config.commit_timeout_s,
            lock_wait_s=15.0,
        )  # another broker may be finishing this chain
    except Exception:
        engine.dispose()
        raise
    return log, PgOutbox(engine, chain_id), PgCursorStore(engine, chain_id)
