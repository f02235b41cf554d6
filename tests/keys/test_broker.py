"""The assembled broker (build_broker, what ``hoshu serve`` runs) on Key Vault: its
keys come from the vault through the managed identity, nothing lands in the data
directory's keys, and an unreachable vault stops ``hoshu serve`` with one line."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit import new_event
from audit.chain import read_events
from audit.signing import ES256, Checkpoint, TrustedKeys
from broker.assembly import build_broker
from broker.cli.main import main
from broker.identity import azure_credential
from broker.keys import public_line
from broker.keys.vault import SECRET_NAMES, VaultKeyStore
from broker.runtime import Runtime
from broker.settings import BrokerSettings
from tests.support import free_port
from tests.support.identity import IdentityEndpoint
from tests.support.keyvault import IdentityTokens, KeyVault


def _close(rt: Runtime) -> None:
    async def close() -> None:
        for closer in reversed(rt.closers):
            result = closer()
            if inspect.isawaitable(result):
                await result

    asyncio.run(close())


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEndpoint]:
    with IdentityEndpoint() as endpoint:
        for k, v in endpoint.env().items():
            monkeypatch.setenv(k, v)
        yield endpoint


def test_broker_takes_every_key_from_the_vault(
    tmp_path: Path, identity: IdentityEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = KeyVault(tmp_path / "kv", tokens=IdentityTokens(identity)).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(vault.cert_path))  # as for a subprocess
    settings = BrokerSettings(data_dir=tmp_path / "data", key_vault_url=vault.url)
    try:
        rt = build_broker(settings)
        try:
            tunnel = vault.secrets[SECRET_NAMES["tunnel"]][-1].value.encode()
            assert rt.control.services.ctx.config.broker_host_key == public_line(tunnel)
            assert rt.control.services.ctx.secrets.seal("x").startswith("hoshu-seal-v1:kv:")
            assert not settings.keys_dir.exists() or not any(settings.keys_dir.iterdir())
            rt.control.services.ctx.emitter.emit(
                new_event("session.command", details={"command": "ls"})
            )
        finally:
            _close(rt)
        cps = [
            e.details for e in read_events(settings.audit_log_path) if e.type == "audit.checkpoint"
        ]
        assert cps and all(cp["alg"] == ES256 for cp in cps)  # the final one, at least
        store = VaultKeyStore(vault.url, azure_credential(identity.client_id))
        trusted = TrustedKeys.from_pems(p for _, p in store.signing_public_pems())
        assert all(trusted.check(Checkpoint.from_details(cp)) is None for cp in cps)
        store.close()
    finally:
        vault.close()


def test_serve_refuses_to_start_when_the_vault_cannot_be_reached(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    identity: IdentityEndpoint,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HOSHU_KEY_VAULT_URL", url)
    monkeypatch.setenv("HOSHU_DATA_DIR", str(tmp_path / "data"))
    assert main(["serve"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"hoshu: Key Vault {url} cannot be reached while reading")
    assert not (tmp_path / "data" / "audit" / "audit.log").exists()  # nothing started
