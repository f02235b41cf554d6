"""Broker settings: built once per process (``BrokerSettings()``) and passed down.

Every value can come from the environment with the ``HOSHU_`` prefix
(``HOSHU_DATABASE_URL=postgresql+psycopg://...``).  Defaults are the embedded
all-in-one setup: SQLite and local files under ``data_dir``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOSHU_", extra="forbid")

    data_dir: Path = Path(".hoshu")
    database_url: str = ""  # empty: sqlite:///<data_dir>/hoshu.db

    # control plane (HTTPS behind a proxy in production; plain HTTP on loopback here)
    api_host: str = "127.0.0.1"
    api_port: int = 8440
    public_api_url: str = ""  # what the CLI and gateways are told; default from host/port

    # SSH front door for engineers, and the tunnel endpoint for gateways
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 2222
    tunnel_host: str = "127.0.0.1"
    tunnel_port: int = 2223

    # tokens, sessions, limits
    access_token_ttl_s: int = 900
    login_timeout_s: int = 120  # SSH sign-in time limit, as OpenSSH's LoginGraceTime
    max_body_bytes: int = 64 * 1024
    body_timeout_s: int = 30  # an HTTP request body must arrive whole within this
    lockout_failures: int = 5  # sign-in failures (password or TOTP) ...
    lockout_window_s: int = 900  # ... within this window lock the account ...
    lockout_s: int = 900  # ... for this long
    source_failures: int = 20  # failed sign-ins from one address (IPv6: one /64) in the window
    # Peers whose X-Forwarded-For is believed (CIDRs; the ingress in front of the API).
    # Empty: the TCP peer is the caller, whatever headers it sends.
    trusted_proxies: list[str] = []
    sweep_interval_s: float = 15.0  # how often pending requests and grant windows are swept
    # file transfer: uploads and downloads are spooled whole at the broker, in
    # <data_dir>/spools (never beside the audit log); writes past a total are refused
    spool_session_max_bytes: int = 4 * 1024**3  # all open spools of one sftp/scp session
    spool_broker_max_bytes: int = 16 * 1024**3  # all open spools of this broker
    # raw capture of port-forward bytes (e.g. a vendor's HL7 port) into this folder; off unset
    forward_capture_path: Path | None = None
    forward_capture_max_bytes: int = 1024**3  # per forward; at the cap the forward ends

    # audit: signing, shipping to SIEMs, masking, retention, reports (docs/auditor.md)
    audit_index_url: str = ""  # empty: the broker database
    audit_fsync: bool = False  # fsync the hash-chained log on every append
    audit_checkpoint_every: int = 1000  # signed checkpoint every N events ...
    audit_checkpoint_interval_s: float = 60.0  # ... or this often, whichever comes first
    audit_sinks: list[dict[str, Any]] = []  # [{"kind": "fluentd", "host": ..., "port": ...}]
    audit_mask_rules: list[dict[str, Any]] = []  # extra patient-identifier patterns
    audit_lag_alert_s: float = 300.0
    audit_events_retention_days: int | None = None  # None: keep forever
    recordings_retention_days: int | None = None
    # session recordings: their own directory (ideally their own volume, so a full
    # recording disk never stops the audit log); empty: <data_dir>/recordings
    recordings_path: Path | None = None
    recording_max_mib: int = 512  # per session; a session whose recording reaches it ends
    report_unsigned_days: int = 7

    # Where the broker keeps what it cannot lose (docs/deploy-azure.md).  Each is
    # empty in the embedded default: files under data_dir.
    key_vault_url: str = ""  # https://<vault>.vault.azure.net: host keys, CA, sealing, signing
    recordings_url: str = ""  # https://<account>.blob.core.windows.net/<container>
    # the user-assigned managed identity every Azure client signs in as (Key Vault,
    # Blob, PostgreSQL, Logs Ingestion); empty: azure-identity's own defaults
    azure_client_id: str = ""
    # "password": the URL carries it; "entra": an Entra ID token is the password,
    # refreshed before it expires (PostgreSQL Flexible Server, as infra/bicep sets up)
    database_auth: Literal["password", "entra"] = "password"
    # the hash-chained audit log: "file" (audit_log_path) or "postgres" (the broker
    # database, or audit_store_url; one chain per replica, survives the container)
    audit_store: Literal["file", "postgres"] = "file"
    audit_store_url: str = ""
    replica_id: str = ""  # names this replica's audit chain and tunnels; empty: host name
    drain_grace_s: float = 20.0  # on SIGTERM, live sessions are ended cleanly within this

    # Azure Monitor Logs Ingestion (Sentinel): set by the reference deployment
    # (infra/bicep); the credential is the managed identity (AZURE_CLIENT_ID).
    azure_logs_endpoint: str = ""  # https://<dce>.<region>.ingest.monitor.azure.com
    azure_dcr_immutable_id: str = ""
    azure_dcr_stream: str = "Custom-HoshuAudit"

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, values: list[str]) -> list[str]:
        """Networks only, and never everyone: trusting every peer's X-Forwarded-For
        would let any caller pick the address it is throttled and checked under."""
        out = []
        for v in values:
            try:
                net = ipaddress.ip_network(v.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {v!r} is not an IP network") from exc
            if net.prefixlen == 0:
                raise ValueError(f"trusted_proxies: {v!r} would trust every caller")
            out.append(str(net))
        return out

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'hoshu.db'}"

    @property
    def api_url(self) -> str:
        return self.public_api_url or f"http://{self.api_host}:{self.api_port}"

    # Every path under data_dir is built here, and only here.

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def host_key_path(self) -> Path:
        return self.keys_dir / "broker_host_key"

    @property
    def credential_key_path(self) -> Path:
        return self.keys_dir / "credentials.key"

    @property
    def front_door_host_key_path(self) -> Path:
        return self.keys_dir / "ssh_front_door_host_key"

    @property
    def user_ca_key_path(self) -> Path:
        return self.keys_dir / "ssh_user_ca"

    @property
    def audit_signing_key_path(self) -> Path:
        return self.keys_dir / "audit_signing_key"

    @property
    def recordings_dir(self) -> Path:
        return self.recordings_path or self.data_dir / "recordings"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spools"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def audit_log_path(self) -> Path:
        return self.audit_dir / "audit.log"

    @property
    def audit_cursor_dir(self) -> Path:
        return self.audit_dir / "cursors"
