"""The Key Vault stand-in and key stores on it, as each test needs them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.keys.vault import VaultKeyStore
from tests.support.keyvault import KeyVault


@pytest.fixture
def key_vault(tmp_path: Path) -> Iterator[KeyVault]:
    vault = KeyVault(tmp_path / "kv").start()
    yield vault
    vault.close()


@pytest.fixture
def vault_store(key_vault: KeyVault) -> Iterator[Callable[..., VaultKeyStore]]:
    """A new VaultKeyStore on the stand-in each call: one per simulated replica/process."""
    made: list[VaultKeyStore] = []

    def make(credential: Any = None, **kw: Any) -> VaultKeyStore:
        kw.setdefault("settle_s", 0.2)
        store = VaultKeyStore(
            key_vault.url,
            credential or key_vault.tokens.credential(),
            connection_verify=str(key_vault.cert_path),
            **kw,
        )
        made.append(store)
        return store

    yield make
    for s in made:
        s.close()
