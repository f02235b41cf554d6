"""The Key Vault backend, driven through the real Azure SDK clients against the
stand-in (tests.support.keyvault): SSH keys shared by replicas, envelope sealing,
ES256 checkpoints, rotation, and start-up failures that name the vault."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import asyncssh
import pytest
from azure.core.credentials import AccessToken
from cryptography.hazmat.primitives.asymmetric import ec

from audit.signing import ED25519, ES256, CheckpointSigner, TrustedKeys
from broker.access.crypto import PREFIX, SecretBox
from broker.access.errors import AccessError, Unavailable
from broker.keys import KeyStoreError, KeyStoreUnavailable, open_key_store
from broker.keys.vault import SEALING_KEY, SECRET_NAMES, SIGNING_KEY, VaultKeyStore, vault_scope
from broker.settings import BrokerSettings
from tests.support import free_port
from tests.support.keyvault import KeyVault

Make = Callable[..., VaultKeyStore]


def _fingerprints(store: VaultKeyStore) -> tuple[str, str, str]:
    return (
        _fp(store.tunnel_host_key()),
        _fp(store.front_door_host_key()),
        _fp(store.user_ca_key()),
    )


def _fp(private: bytes) -> str:
    fp: str = asyncssh.import_private_key(private).get_fingerprint()
    return fp


def test_two_replicas_starting_at_once_get_the_same_ssh_keys(
    key_vault: KeyVault, vault_store: Make
) -> None:
    """Both replicas find the vault empty at the same moment and both write a key;
    each settles on the same one, and a later replica reads it without writing."""
    key_vault.race_on_missing(2)
    a, b = vault_store(), vault_store()
    with ThreadPoolExecutor(2) as pool:
        fa, fb = pool.submit(a.tunnel_host_key), pool.submit(b.tunnel_host_key)
        assert fa.result(20) == fb.result(20)
    assert len(key_vault.secret_versions(SECRET_NAMES["tunnel"])) == 2  # the race happened
    assert _fingerprints(a) == _fingerprints(b)
    writes = key_vault.calls["secrets/setSecret/action"]
    c = vault_store()
    c.check()
    assert _fingerprints(c) == _fingerprints(a)
    assert key_vault.calls["secrets/setSecret/action"] == writes
    # what the vault holds is OpenSSH private key text
    assert key_vault.secrets[SECRET_NAMES["ca"]][-1].value.startswith(
        "-----BEGIN OPENSSH PRIVATE KEY-----"
    )


def test_envelope_sealing_unwraps_once_per_data_key(key_vault: KeyVault, vault_store: Make) -> None:
    """Values sealed by one process open in another with one unwrap in the vault for
    all of them; the sealed form names the key version and carries the wrapped key."""
    writer = vault_store()
    sealed = [writer.secret_box().seal(f"secret-{i}") for i in range(5)]
    version = key_vault.key_versions(SEALING_KEY)[-1]
    assert all(s.startswith(f"{PREFIX}:kv:{version}:") for s in sealed)
    assert all("secret-" not in s for s in sealed)
    reader = vault_store()
    before = key_vault.calls["keys/unwrap/action"]
    for _ in range(3):
        assert [reader.secret_box().open(s) for s in sealed] == [f"secret-{i}" for i in range(5)]
    assert key_vault.calls["keys/unwrap/action"] - before == 1
    assert reader.sealer().unwraps == 1
    # damaged values are refused, not half-opened
    bad = sealed[0][:-4] + ("AAAA" if not sealed[0].endswith("AAAA") else "BBBB")
    with pytest.raises(AccessError, match="cannot be opened"):
        reader.secret_box().open(bad)
    with pytest.raises(AccessError):
        reader.secret_box().open(f"{PREFIX}:kv:{'0' * 32}:{sealed[0].split(':', 4)[3]}:x")


def test_sealing_rotation_old_and_new_values_both_open(
    key_vault: KeyVault, vault_store: Make
) -> None:
    first = vault_store()
    a = first.secret_box().seal("before rotation")
    new_version = vault_store().rotate("sealing")
    assert key_vault.key_versions(SEALING_KEY)[-1] == new_version
    restarted = vault_store()
    b = restarted.secret_box().seal("after rotation")
    assert f":kv:{new_version}:" in b and f":kv:{new_version}:" not in a
    later = vault_store()
    assert later.secret_box().open(a) == "before rotation"
    assert later.secret_box().open(b) == "after rotation"
    assert first.secret_box().open(b) == "after rotation"  # a replica not yet restarted


def test_es256_checkpoints_verify_and_tampering_fails(
    key_vault: KeyVault, vault_store: Make
) -> None:
    signer = vault_store().checkpoint_signer()
    cp = signer.sign(1000, "a" * 64)
    assert cp.alg == ES256 and cp.key_version == key_vault.key_versions(SIGNING_KEY)[-1]
    assert len(base64.b64decode(cp.signature)) == 64  # JWS r || s
    trusted = TrustedKeys.from_pems(p for _, p in vault_store().signing_public_pems())
    assert trusted.check(cp) is None
    assert trusted.check(replace(cp, hash="b" * 64)) == "checkpoint at 1000 has a bad signature"
    assert trusted.check(replace(cp, seq=999)) is not None
    sig = bytearray(base64.b64decode(cp.signature))
    sig[10] ^= 1
    assert trusted.check(replace(cp, signature=base64.b64encode(sig).decode())) is not None
    assert "says Ed25519" in (trusted.check(replace(cp, alg=ED25519)) or "")
    # an Ed25519 key trusted beside it changes nothing for ES256 checkpoints
    both = TrustedKeys([*signer.public_keys, CheckpointSigner.generate().public_key])
    assert both.check(cp) is None


def test_signing_rotation_checkpoints_before_and_after_verify(
    key_vault: KeyVault, vault_store: Make
) -> None:
    before = vault_store().checkpoint_signer().sign(10, "c" * 64)
    vault_store().rotate("signing")
    after_signer = vault_store().checkpoint_signer()
    after = after_signer.sign(20, "d" * 64)
    assert before.key_id != after.key_id and len(after_signer.public_keys) == 2
    pems = vault_store().signing_public_pems()
    assert next(v for v, _ in pems) == after.key_version and len(pems) == 2
    trusted = TrustedKeys.from_pems(p for _, p in pems)
    assert trusted.check(before) is None and trusted.check(after) is None


def test_signature_from_the_vault_is_checked_before_use(
    key_vault: KeyVault, vault_store: Make
) -> None:
    """The SDK checks nothing; a vault (or a path to it) returning a wrong signature
    gets no checkpoint written."""
    from audit.errors import ChainError

    signer = vault_store().checkpoint_signer()
    key_vault.keys[SIGNING_KEY][-1].private = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ChainError, match="does not verify"):
        signer.sign(1, "e" * 64)


def test_unreachable_vault_stops_the_start_with_one_clear_line() -> None:
    url = f"https://127.0.0.1:{free_port()}"

    class Cred:
        def get_token(self, *scopes: str, **kw: Any) -> AccessToken:
            return AccessToken("t", int(time.time()) + 3600)

    store = VaultKeyStore(url, Cred(), retry_total=0)
    started = time.monotonic()
    with pytest.raises(KeyStoreUnavailable) as exc:
        store.check()
    message = str(exc.value)
    assert message.startswith(f"Key Vault {url} cannot be reached while reading the tunnel")
    assert "\n" not in message and time.monotonic() - started < 10


def test_permission_denied_names_the_vault_and_the_roles(
    key_vault: KeyVault, vault_store: Make
) -> None:
    key_vault.forbid("keys/sign/action")
    store = vault_store()
    store.check()  # reading and creating is allowed
    from audit.errors import ChainError

    with pytest.raises(ChainError, match=f"Key Vault {key_vault.url}: permission denied"):
        store.checkpoint_signer().sign(1, "f" * 64)
    key_vault.forbid("secrets/getSecret/action")
    with pytest.raises(KeyStoreUnavailable) as exc:
        vault_store().check()
    assert f"Key Vault {key_vault.url}: permission denied while reading the tunnel host key" in str(
        exc.value
    ) and "Key Vault Secrets User" in str(exc.value)


def test_unwrap_refused_means_unavailable_not_a_wrong_secret(
    key_vault: KeyVault, vault_store: Make
) -> None:
    sealed = vault_store().secret_box().seal("pw")
    key_vault.forbid("keys/unwrap/action")
    with pytest.raises(Unavailable, match="permission denied"):
        vault_store().secret_box().open(sealed)


def test_expired_or_foreign_tokens_are_refused(key_vault: KeyVault, vault_store: Make) -> None:
    with pytest.raises(KeyStoreUnavailable, match="sign-in refused"):
        vault_store(credential=key_vault.tokens.credential(ttl_s=-10)).check()

    class Foreign:  # a token for another resource, whatever is asked
        def get_token(self, *scopes: str, **kw: Any) -> AccessToken:
            token: AccessToken = key_vault.tokens.issue("https://management.azure.com")
            return token

    with pytest.raises(KeyStoreUnavailable, match="sign-in refused"):
        vault_store(credential=Foreign()).check()


def test_only_a_vault_token_is_ever_asked_for(key_vault: KeyVault, vault_store: Make) -> None:
    """Challenge-resource verification is off only for a loopback vault; even there the
    credential hands out nothing but a token for https://vault.azure.net."""
    key_vault.resource = "https://management.azure.com"
    with pytest.raises(
        KeyStoreUnavailable,
        match=re.escape("refusing a token for https://management.azure.com/.default"),
    ):
        vault_store().check()
    assert "https://management.azure.com/.default" not in key_vault.tokens.scopes_asked
    assert vault_scope("https://corp-kv.vault.azure.net") == "https://vault.azure.net/.default"
    assert vault_scope("https://corp-kv.vault.azure.cn/") == "https://vault.azure.cn/.default"
    with pytest.raises(KeyStoreError, match=re.escape("not https://<name>.vault")):
        vault_scope("https://vault.example.com")
    with pytest.raises(KeyStoreError, match="must be https"):
        VaultKeyStore("http://127.0.0.1:1", object())


def test_no_token_or_key_material_in_logs(
    key_vault: KeyVault, vault_store: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = vault_store()
    store.check()
    sealed = store.secret_box().seal("hunter2-instrument")
    assert vault_store().secret_box().open(sealed) == "hunter2-instrument"
    store.checkpoint_signer().sign(1, "0" * 64)
    text = caplog.text
    assert caplog.records  # the SDK did log its requests
    for token in key_vault.tokens.issued:
        assert token not in text
    for versions in key_vault.secrets.values():
        body = versions[-1].value.splitlines()[1]  # a line of the private key text
        assert body not in text
    assert "hunter2-instrument" not in text


def test_settings_choose_the_backend(tmp_path: Any, key_vault: KeyVault) -> None:
    files = open_key_store(BrokerSettings(data_dir=tmp_path))
    assert files.where == f"files in {tmp_path / 'keys'}"
    vault = open_key_store(
        BrokerSettings(data_dir=tmp_path, key_vault_url=key_vault.url),
        credential=key_vault.tokens.credential(),
        connection_verify=str(key_vault.cert_path),
    )
    assert vault.where == f"Key Vault {key_vault.url}"
    assert isinstance(vault.secret_box(), SecretBox)
    vault.close()
    assert not (tmp_path / "keys").exists()  # nothing written to the replica's disk


def test_reference_deployment_vault_with_a_read_only_identity(
    key_vault: KeyVault, vault_store: Make
) -> None:
    """As infra/bicep deploys it: HSM keys made by the deployment, the host key added by
    an operator, and the broker with the 'User' roles only (no create, no set)."""
    from azure.keyvault.keys import KeyClient
    from azure.keyvault.secrets import SecretClient

    from broker.keys.store import new_ssh_key

    opts: dict[str, Any] = {
        "connection_verify": str(key_vault.cert_path),
        "verify_challenge_resource": False,
    }
    operator = key_vault.tokens.credential()
    keys = KeyClient(key_vault.url, operator, **opts)
    keys.create_ec_key(SIGNING_KEY, curve="P-256", hardware_protected=True)
    keys.create_rsa_key(SEALING_KEY, size=3072, hardware_protected=True)
    secrets = SecretClient(key_vault.url, operator, **opts)
    secrets.set_secret(SECRET_NAMES["tunnel"], new_ssh_key().decode())
    key_vault.forbid("keys/create/action", "secrets/setSecret/action")
    with pytest.raises(KeyStoreUnavailable) as exc:
        vault_store().check()
    assert (
        f"permission denied while creating the front-door host key (secret "
        f"{SECRET_NAMES['front_door']})"
    ) in str(exc.value)
    for which in ("front_door", "ca"):
        key_vault.allow("secrets/setSecret/action")
        secrets.set_secret(SECRET_NAMES[which], new_ssh_key().decode())
    key_vault.forbid("secrets/setSecret/action")
    store = vault_store()
    store.check()
    assert store.checkpoint_signer().sign(1, "a" * 64).alg == ES256
    assert store.secret_box().open(store.secret_box().seal("x")) == "x"
    with pytest.raises(
        KeyStoreUnavailable,
        match="permission denied while making a new version of key audit-signing",
    ):
        store.rotate("signing")
    keys.close()
    secrets.close()


def test_challenge_resource_verification_stays_on_for_real_vaults() -> None:
    """The SDK's check (a vault's challenge may only name the vault's own resource) is
    switched off for a loopback address alone, where it cannot pass."""

    class Cred:
        def get_token(self, *scopes: str, **kw: Any) -> AccessToken:
            raise AssertionError("no call is made")

    for url, verify in (
        ("https://kv-hoshu.vault.azure.net", True),
        ("https://kv.vault.usgovcloudapi.net", True),
        ("https://127.0.0.1:8443", False),
        ("https://localhost:1", False),
        ("https://[::1]:8443", False),
    ):
        store = VaultKeyStore(url, Cred())
        assert store._options["verify_challenge_resource"] is verify, url
        store.close()


def test_moving_from_key_files_values_sealed_there_keep_opening(
    tmp_path: Any, key_vault: KeyVault, vault_store: Make
) -> None:
    """credentials.key imported as the secret credentials-key-file: the database's plain
    Fernet tokens open with it; without it they are refused, saying why."""
    from azure.keyvault.secrets import SecretClient

    from broker.keys.vault import LEGACY_SECRET

    files = open_key_store(BrokerSettings(data_dir=tmp_path))
    old = files.secret_box().seal("totp-from-files")
    with pytest.raises(AccessError, match=LEGACY_SECRET):
        vault_store().secret_box().open(old)
    SecretClient(
        key_vault.url,
        key_vault.tokens.credential(),
        connection_verify=str(key_vault.cert_path),
        verify_challenge_resource=False,
    ).set_secret(LEGACY_SECRET, (tmp_path / "keys" / "credentials.key").read_text())
    store = vault_store()
    assert store.secret_box().open(old) == "totp-from-files"
    assert store.secret_box().seal("new").startswith(f"{PREFIX}:kv:")


def test_vault_signing_outage_refuses_events_and_leaves_no_gap(
    tmp_path: Any, key_vault: KeyVault, vault_store: Make
) -> None:
    """When a checkpoint falls due and the vault cannot sign, the event is refused (the
    action that needed it fails) rather than written past an unsigned stretch; once
    the vault signs again the log goes on and verifies end to end."""
    from datetime import UTC, datetime

    from audit import new_event
    from audit.chain import ChainLog, verify
    from audit.errors import ChainError
    from tests.support import FakeClock

    signer = vault_store().checkpoint_signer()
    path = tmp_path / "audit.log"
    log = ChainLog(
        path,
        signer=signer,
        checkpoint_every=3,
        checkpoint_interval_s=3600,
        clock=FakeClock(datetime(2026, 4, 1, tzinfo=UTC)),
    )
    log.emit(new_event("session.command", details={"command": "a"}))
    log.emit(new_event("session.command", details={"command": "b"}))
    key_vault.forbid("keys/sign/action")
    with pytest.raises(ChainError, match="permission denied while signing"):
        log.emit(new_event("session.command", details={"command": "refused"}))
    key_vault.allow("keys/sign/action")
    log.emit(new_event("session.command", details={"command": "c"}))
    log.close()
    result = verify(path, keys=TrustedKeys(signer.public_keys), checkpoint_every=3)
    assert result.ok and result.signatures_checked
    from audit.chain import read_events

    commands = [e.details["command"] for e in read_events(path) if e.type == "session.command"]
    assert commands == ["a", "b", "c"]
