"""Composition of the control plane from settings: store, keys, emitter, services.

``ControlPlane.open(settings)`` is what ``hoshu serve`` and the CLI's
database commands use; tests build :class:`broker.access.services.Services`
directly with their own clock, emitter and store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_ssh_private_key,
)

from audit.chain import ChainLog
from audit.emitter import Emitter
from audit.engines import PasswordSource
from broker.access.passwords import Hasher
from broker.access.ports import Config, Context, utc_now
from broker.access.services import Services
from broker.identity import database_password
from broker.keys import KeyStore, open_key_store, public_line
from broker.settings import BrokerSettings
from broker.store.db import Store


def broker_host_public_key(path: Path) -> str:
    """The OpenSSH public key line of the tunnel host key, created (0600) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    key = load_ssh_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def config_from(settings: BrokerSettings, keys: KeyStore | None = None) -> Config:
    """``keys``: the broker's key store, whose tunnel host key gateways are told to pin;
    None: the key file at ``settings.host_key_path``."""
    host_key = (
        public_line(keys.tunnel_host_key())
        if keys is not None
        else broker_host_public_key(settings.host_key_path)
    )
    return Config(
        access_token_ttl_s=settings.access_token_ttl_s,
        tunnel_host=settings.tunnel_host,
        tunnel_port=settings.tunnel_port,
        lockout_failures=settings.lockout_failures,
        lockout_window_s=settings.lockout_window_s,
        lockout_s=settings.lockout_s,
        source_failures=settings.source_failures,
        broker_host_key=host_key,
    )


@dataclass
class ControlPlane:
    settings: BrokerSettings
    store: Store
    services: Services
    owned_log: ChainLog | None = None  # the audit log opened here (closed by close())
    keys: KeyStore | None = None  # the key store the services seal with (files or Key Vault)

    @classmethod
    def open(
        cls,
        settings: BrokerSettings,
        *,
        emitter: Emitter | None = None,
        clock: Callable[[], datetime] = utc_now,
        migrate: bool = True,
        hasher: Hasher | None = None,
        db_password: PasswordSource | None = None,
        keys: KeyStore | None = None,
    ) -> ControlPlane:
        """Open the store (``db_password``: where new connections get their password;
        None: :func:`broker.identity.database_password` of the settings) and build the
        services.  ``keys``: the process's key store (one per process: it caches
        unwrapped data keys); None: :func:`broker.keys.open_key_store` of the settings."""
        if db_password is None:
            db_password = database_password(settings)
        store = Store(settings.db_url, migrate=migrate, password=db_password)
        owned = None
        if emitter is None:
            settings.audit_log_path.parent.mkdir(parents=True, exist_ok=True)
            emitter = owned = ChainLog(settings.audit_log_path)
        try:
            if keys is None:
                keys = open_key_store(settings)
            ctx = Context(
                uow=store.uow,
                emitter=emitter,
                secrets=keys.secret_box(),
                clock=clock,
                config=config_from(settings, keys),
                hasher=hasher or Hasher(),
            )
        except Exception:
            store.close()
            if owned is not None:
                owned.close()
            raise
        return cls(settings, store, Services.build(ctx), owned, keys)

    def close(self) -> None:
        self.store.close()
        if self.owned_log is not None:
            self.owned_log.close()
