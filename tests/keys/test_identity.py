"""The product's own path: open_key_store(settings) signs in as the managed identity
(broker.identity.azure_credential, the real ManagedIdentityCredential against the
Container Apps identity stand-in) and the vault accepts only that identity's tokens."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.keys import KeyStoreUnavailable, open_key_store
from broker.settings import BrokerSettings
from tests.support.identity import IdentityEndpoint
from tests.support.keyvault import IdentityTokens, KeyVault


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEndpoint]:
    with IdentityEndpoint() as endpoint:
        for k, v in endpoint.env().items():
            monkeypatch.setenv(k, v)
        yield endpoint


def test_broker_signs_in_to_the_vault_as_its_managed_identity(
    tmp_path: Path, identity: IdentityEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vault = KeyVault(tmp_path / "kv", tokens=IdentityTokens(identity)).start()
    try:
        settings = BrokerSettings(data_dir=tmp_path / "data", key_vault_url=vault.url)
        store = open_key_store(settings, connection_verify=str(vault.cert_path), settle_s=0.2)
        store.check()
        assert store.secret_box().open(store.secret_box().seal("pw")) == "pw"
        store.close()
        assert set(identity.requests) == {"https://vault.azure.net"}
        assert identity.issued and all(t not in caplog.text for t in identity.issued)
        identity.revoke()
        identity.rotate()
        again = open_key_store(settings, connection_verify=str(vault.cert_path))
        with pytest.raises(KeyStoreUnavailable, match=f"Key Vault {vault.url}: sign-in refused"):
            again.check()
    finally:
        vault.close()
