"""The control plane seals with, and tells gateways the tunnel key of, the key store
it is given: with Key Vault, nothing of it lands on the replica's disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from broker.keys import public_line
from broker.keys.vault import VaultKeyStore
from broker.services import ControlPlane
from broker.settings import BrokerSettings
from tests.support.keyvault import KeyVault


def test_control_plane_uses_the_vault_key_store(
    tmp_path: Path, key_vault: KeyVault, vault_store: Callable[..., VaultKeyStore]
) -> None:
    settings = BrokerSettings(data_dir=tmp_path, key_vault_url=key_vault.url)
    keys = vault_store()
    cp = ControlPlane.open(settings, keys=keys)
    try:
        assert cp.keys is keys
        assert cp.services.ctx.config.broker_host_key == public_line(keys.tunnel_host_key())
        sealed = cp.services.ctx.secrets.seal("totp-secret")
        assert sealed.startswith("hoshu-seal-v1:kv:")
        assert vault_store().secret_box().open(sealed) == "totp-secret"
    finally:
        cp.close()
    assert not (tmp_path / "keys").exists()
