"""The broker's key store: one interface, two backends (files, Azure Key Vault).

``open_key_store(settings)`` picks the backend from ``settings.key_vault_url``:
empty, the key files under ``settings.keys_dir`` (:mod:`broker.keys.files`, the
embedded default, byte-compatible with existing data directories); set, the
vault (:mod:`broker.keys.vault`), so a replica that loses its disk loses no key.
Build one per process and hand it to every part (:class:`~broker.keys.store.KeyStore`
says what it gives); call ``check()`` before serving: a vault that cannot be
reached, or refuses this broker, stops the start with one line naming it.

Errors: :mod:`broker.keys.errors`.
"""

from __future__ import annotations

from typing import Any

from broker.keys.errors import KeyMaterialError, KeyStoreError, KeyStoreUnavailable
from broker.keys.store import ROTATABLE, KeyStore, Rotatable, public_line
from broker.settings import BrokerSettings


def open_key_store(
    settings: BrokerSettings, *, credential: Any = None, **client_options: Any
) -> KeyStore:
    """The key store ``settings`` name.  ``credential`` (Key Vault only): an azure-core
    TokenCredential; None: the broker's managed identity
    (:func:`broker.identity.azure_credential`).  ``client_options`` go to every Azure
    SDK client (tests pass ``connection_verify``)."""
    if not settings.key_vault_url:
        from broker.keys.files import FileKeyStore

        return FileKeyStore(settings)
    from broker.keys.vault import VaultKeyStore

    if credential is None:
        from broker.identity import azure_credential

        credential = azure_credential(settings)
    return VaultKeyStore(settings.key_vault_url, credential, **client_options)


__all__ = [
    "ROTATABLE",
    "KeyMaterialError",
    "KeyStore",
    "KeyStoreError",
    "KeyStoreUnavailable",
    "Rotatable",
    "open_key_store",
    "public_line",
]
