"""Broker settings: built once per process (``BrokerSettings()``) and passed down.

Every value can come from the environment with the ``HOSHU_`` prefix
(``HOSHU_DATABASE_URL=postgresql+psycopg://...``).  Defaults are the embedded
all-in-one setup: SQLite and local files under ``data_dir``.

Settings exist or fail: :meth:`BrokerSettings.from_env` (what ``hoshu serve``
uses) refuses any ``HOSHU_*`` variable in the environment that is neither a
setting nor in :data:`OTHER_VARIABLES` (read by the CLI, the gateway or the
project's tooling), naming it and the setting it was probably meant to be.
Values are checked together too: Entra sign-in needs a password-less PostgreSQL
URL, the Azure endpoints must be HTTPS, a setting that would be ignored is refused.

Errors: :class:`UnknownSettingError` (a ``ValueError``) for unknown variables;
pydantic's ``ValidationError`` (also a ``ValueError``) for bad values.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "HOSHU_"

# HOSHU_* variables that are not broker settings but are read by other hoshu programs
# (or the project's own tooling) and may share the broker's environment.  The one list:
# the start-up check and tests/infra read it.
OTHER_VARIABLES: Mapping[str, str] = MappingProxyType(
    {
        "HOSHU_API": "hoshu CLI: the control-plane URL",
        "HOSHU_TOKEN": "hoshu CLI: a bearer token instead of the cached one",
        "HOSHU_CONFIG_DIR": "hoshu CLI: where the token cache lives",
        "HOSHU_USER": "hoshu login: the user name",
        "HOSHU_GATEWAY_CONFIG": "hoshu-gateway: its configuration file",
        "HOSHU_ENROLL_TOKEN": "hoshu-gateway enroll: the one-time enrolment token",
        "HOSHU_PYTHON": "./run: the Python interpreter of the venv",
        "HOSHU_IMAGE_CACHE": "deploy/image/build.sh: where built image layers are cached",
        "HOSHU_DEBIAN_SUITE": "deploy/image/build.sh: the Debian release of the image",
        "HOSHU_DEBIAN_MIRROR": "deploy/image/build.sh: the Debian mirror it fetches from",
        "HOSHU_PG_BIN": "tests: the PostgreSQL server binaries",
        "HOSHU_TEST_CODE": "tests: the one-time code the ssh askpass script types",
        "HOSHU_BENCH_CODE": "bench: the one-time code the ssh askpass script types",
    }
)


class UnknownSettingError(ValueError):
    """``HOSHU_*`` variables in the environment that no hoshu program reads."""

    def __init__(self, names: list[str], hints: Mapping[str, str]) -> None:
        self.names = names
        parts = [f"{n} (did you mean {hints[n]}?)" if n in hints else n for n in names]
        super().__init__(
            "unknown setting" + ("s" if len(names) > 1 else "") + " in the "
            "environment: " + ", ".join(parts) + " (docs/admin.md lists the HOSHU_* settings)"
        )


_REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _https_url(name: str, value: str, *, path: bool) -> str:
    """An Azure endpoint URL: HTTPS, a host, a path only where one is expected (a
    container), no credentials (the managed identity signs in, never a key in a URL)."""
    value = value.strip()
    parts = urlsplit(value)
    host = parts.hostname or ""
    if parts.scheme != "https":
        raise ValueError(f"{name}: {value!r} must be an https:// URL")
    if not host or parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(
            f"{name}: {value!r} must be a plain URL (a host, no credentials, no query)"
        )
    has_path = parts.path.strip("/") != ""
    if path and not has_path:
        raise ValueError(
            f"{name}: {value!r} must name the container "
            "(https://<account>.blob.core.windows.net/<container>)"
        )
    if not path and has_path:
        raise ValueError(f"{name}: {value!r} must have no path")
    return value.rstrip("/")


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
    # gateway logins (key exchange to welcome) the tunnel endpoint runs at a time; a
    # gateway dialling past them is told "busy, retry in N s" at once, N at least
    # tunnel_busy_retry_s and growing with the crowd (broker.tunnel.admission)
    tunnel_max_logins: int = Field(default=64, ge=1, le=4096)
    tunnel_busy_retry_s: float = Field(default=2.0, ge=1, le=300)
    # the event loop of hoshu serve: auto takes uvloop (libuv) when it is installed,
    # uvloop requires it, asyncio is the standard library's loop
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    # asyncssh's own log lines: warning keeps its per-connection and per-channel INFO
    # lines out of the log (a cost on every session); info or debug bring them back
    ssh_log_level: Literal["warning", "info", "debug"] = "warning"

    # approver notification mail (broker.console.notify); empty host: no mail is sent
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_from: str = ""  # the From address; required with a host
    smtp_user: str = ""
    smtp_password_file: Path | None = None  # read at send time, never logged
    smtp_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # notifications through the durable outbox (broker.console.notify): the key the
    # generic JSON webhooks are signed with (HMAC-SHA256; read at send time, never logged),
    # how often the delivery worker looks for due messages, the longest wait between
    # attempts, each webhook call's time limit, how long before its end an engineer is
    # told a grant is about to end (0: not told)
    notify_webhook_secret_file: Path | None = None
    notify_poll_s: float = Field(default=2.0, gt=0, le=60)
    notify_backoff_max_s: float = Field(default=900.0, ge=1, le=86400)
    notify_timeout_s: float = Field(default=10.0, gt=0, le=120)
    notify_grant_ending_s: int = Field(default=900, ge=0, le=86400)
    # plain http:// webhook and Teams URLs (tests and labs only; production: https:// only)
    notify_allow_http: bool = False

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
    # database calls of the SSH front door and the tunnels run off the event loop, on a
    # bounded pool of this many threads (a slow database queues them, never the loop)
    db_threads: int = Field(default=8, ge=1, le=64)
    # the change feed (broker.live.changes): the version is re-read this often as the
    # safety net under LISTEN/NOTIFY; a replica whose view is not confirmed current for
    # view_confirm_s ends its live sessions (view_unconfirmed) and refuses new logins
    change_reread_s: float = Field(default=2.0, gt=0, le=30)
    view_confirm_s: float = Field(default=10.0, gt=0, le=120)
    # singleton jobs (broker.jobs): reports of ended grants, unsigned reports, retention
    jobs_interval_s: float = Field(default=5.0, gt=0, le=3600)
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
    # Blob recordings are appended at least this often, and whenever this much waits
    # (a killed broker loses at most the last interval)
    recordings_flush_s: float = Field(default=1.0, gt=0, le=60)
    recordings_flush_kib: int = Field(default=256, ge=4, le=4096)
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
    # postgres store: how often a replica looks for chains a dead replica left unshipped
    audit_orphan_every_s: float = Field(default=30.0, gt=0, le=3600)
    # the link between replicas (docs/architecture.md, "Replicas"): a replica that holds
    # no tunnel to an instrument's gateway forwards through the one that does, over SSH
    # to this port, each replica's key pinned in the database.  0: no link (one replica)
    peer_host: str = "127.0.0.1"
    peer_port: int = 0
    advertise_host: str = ""  # the address other replicas dial; empty: peer_host
    drain_grace_s: float = 20.0  # on SIGTERM, live sessions are ended cleanly within this
    # on SIGTERM, /readyz fails this long before the drain starts while everything still
    # serves, so the load balancer stops sending new connections first (0: drain at once)
    drain_lead_s: float = 0.0

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

    @field_validator("key_vault_url")
    @classmethod
    def _vault_url(cls, value: str) -> str:
        return _https_url("key_vault_url", value, path=False) if value else value

    @field_validator("recordings_url")
    @classmethod
    def _recordings_url(cls, value: str) -> str:
        return _https_url("recordings_url", value, path=True) if value else value

    @field_validator("azure_client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                uuid.UUID(value)
            except ValueError as exc:
                raise ValueError(
                    f"azure_client_id: {value!r} is not a client id (a GUID: "
                    "the managed identity's clientId)"
                ) from exc
        return value

    @field_validator("replica_id")
    @classmethod
    def _replica(cls, value: str) -> str:
        if value and not _REPLICA_ID.fullmatch(value):
            raise ValueError(
                f"replica_id: {value!r} must be 1-63 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        return value

    @field_validator("drain_grace_s")
    @classmethod
    def _drain(cls, value: float) -> float:
        if not 0 <= value <= 3600:
            raise ValueError(f"drain_grace_s: {value} must be between 0 and 3600 seconds")
        return value

    @field_validator("drain_lead_s")
    @classmethod
    def _lead(cls, value: float) -> float:
        if not 0 <= value <= 300:
            raise ValueError(f"drain_lead_s: {value} must be between 0 and 300 seconds")
        return value

    @model_validator(mode="after")
    def _together(self) -> Self:
        """Values that only make sense with others, checked once at start-up."""
        if self.database_auth == "entra":
            url = self.database_url
            scheme = url.split("://", 1)[0] if "://" in url else ""
            if not scheme.startswith("postgres"):
                raise ValueError(
                    "database_auth 'entra' needs database_url of a PostgreSQL "
                    "server (postgresql://<identity name>@<server>/<db>"
                    "?sslmode=require)"
                )
            if urlsplit(url).password is not None:
                raise ValueError(
                    "database_auth 'entra' signs in with a token: "
                    "database_url must carry no password"
                )
        if self.audit_store_url and self.audit_store != "postgres":
            raise ValueError(
                "audit_store_url is set but audit_store is not 'postgres': it would be ignored"
            )
        if self.azure_logs_endpoint:
            _https_url("azure_logs_endpoint", self.azure_logs_endpoint, path=False)
            if not self.azure_dcr_immutable_id:
                raise ValueError("azure_logs_endpoint is set but azure_dcr_immutable_id is not")
        return self

    @classmethod
    def field_variables(cls) -> frozenset[str]:
        """The environment variable of every setting (``HOSHU_DATA_DIR``, ...)."""
        return frozenset(ENV_PREFIX + name.upper() for name in cls.model_fields)

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str]) -> list[str]:
        """``HOSHU_*`` names in ``environ`` that are neither settings nor other
        programs' variables (case-insensitive, as the settings are read)."""
        known = cls.field_variables() | OTHER_VARIABLES.keys()
        return sorted(
            k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
        )

    @classmethod
    def from_env(cls, **values: Any) -> Self:
        """The settings of a broker process: the environment (``HOSHU_*``) with
        ``values`` on top; an unknown ``HOSHU_*`` variable stops it here, named."""
        unknown = cls.unknown_variables(os.environ)
        if unknown:
            choices = sorted(cls.field_variables())
            hints = {}
            for name in unknown:
                close = difflib.get_close_matches(name.upper(), choices, n=1, cutoff=0.8)
                if close:
                    hints[name] = close[0]
            raise UnknownSettingError(unknown, hints)
        return cls(**values)

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
    def drives_dir(self) -> Path:
        """RDP desktop sessions' drives (rdpdr), one folder a session, removed at its end."""
        return self.data_dir / "drives"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def audit_log_path(self) -> Path:
        return self.audit_dir / "audit.log"

    @property
    def audit_cursor_dir(self) -> Path:
        return self.audit_dir / "cursors"
