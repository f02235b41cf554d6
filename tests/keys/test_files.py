"""The key-file backend: existing data directories keep working byte for byte, first
start creates every key 0600, and rotation keeps old versions opening and verifying."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from audit import new_event
from audit.chain import ChainLog, verify
from audit.signing import CheckpointSigner, TrustedKeys
from broker.access.crypto import PREFIX, SecretBox
from broker.access.errors import AccessError
from broker.keys import KeyMaterialError, open_key_store
from broker.keys.files import FileKeyStore
from broker.settings import BrokerSettings
from tests.support import FakeClock

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


def _settings(tmp_path: Path) -> BrokerSettings:
    return BrokerSettings(data_dir=tmp_path / "data")


def _fp(private: bytes) -> str:
    fp: str = asyncssh.import_private_key(private).get_fingerprint()
    return fp


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _old_data_dir(s: BrokerSettings) -> dict[str, object]:
    """Key files exactly as hoshu wrote them before the key store existed."""
    s.keys_dir.mkdir(parents=True)
    tunnel = ed25519.Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
    )
    s.host_key_path.write_bytes(tunnel)
    front = asyncssh.generate_private_key("ssh-ed25519")
    s.front_door_host_key_path.write_bytes(front.export_private_key())
    ca = asyncssh.generate_private_key("ssh-ed25519")
    s.user_ca_key_path.write_bytes(ca.export_private_key())
    fernet = Fernet.generate_key()
    s.credential_key_path.write_bytes(fernet)
    signer = CheckpointSigner.load_or_create(s.audit_signing_key_path)
    for p in s.keys_dir.iterdir():
        p.chmod(0o600)
    return {
        "tunnel": asyncssh.import_private_key(tunnel),
        "front": front,
        "ca": ca,
        "sealed": SecretBox(fernet).seal("instrument-password"),
        "signer": signer,
    }


def test_existing_key_files_load_unchanged(tmp_path: Path) -> None:
    """A data directory from before the key store: the same keys come back, an old
    sealed credential opens, an old checkpoint verifies, and no file is rewritten."""
    s = _settings(tmp_path)
    old = _old_data_dir(s)
    before = _digests(s.keys_dir)
    store = open_key_store(s)
    assert isinstance(store, FileKeyStore)
    store.check()
    assert _fp(store.tunnel_host_key()) == old["tunnel"].get_fingerprint()  # type: ignore[attr-defined]
    assert _fp(store.front_door_host_key()) == old["front"].get_fingerprint()  # type: ignore[attr-defined]
    assert _fp(store.user_ca_key()) == old["ca"].get_fingerprint()  # type: ignore[attr-defined]
    assert store.secret_box().open(str(old["sealed"])) == "instrument-password"
    old_cp = old["signer"].sign(7, "h" * 64)  # type: ignore[attr-defined]
    assert TrustedKeys.from_pems([p for _, p in store.signing_public_pems()]).check(old_cp) is None
    assert store.checkpoint_signer().key_id == old_cp.key_id
    # still version 1: new values are plain Fernet tokens an older broker could open
    new = store.secret_box().seal("x")
    assert (
        not new.startswith(PREFIX)
        and SecretBox(s.credential_key_path.read_bytes().strip()).open(new) == "x"
    )
    assert _digests(s.keys_dir) == before


def test_first_start_creates_every_key_once_mode_0600(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    first = open_key_store(s)
    first.check()
    names = sorted(p.name for p in s.keys_dir.iterdir())
    assert names == sorted(
        [
            "broker_host_key",
            "ssh_front_door_host_key",
            "ssh_front_door_host_key.pub",
            "ssh_user_ca",
            "credentials.key",
            "audit_signing_key",
            "audit_signing_key.pub",
        ]
    )
    for p in s.keys_dir.iterdir():
        if not p.name.endswith(".pub"):
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    again = open_key_store(s)
    assert _fp(again.tunnel_host_key()) == _fp(first.tunnel_host_key())
    assert _fp(again.user_ca_key()) == _fp(first.user_ca_key())
    assert again.secret_box().open(first.secret_box().seal("s")) == "s"


def test_sealing_rotation_keeps_old_values_open(tmp_path: Path) -> None:
    """seal, rotate, seal: both open after a restart; a broker still running on the
    old version opens the new value too (it picks up the new key file)."""
    s = _settings(tmp_path)
    running = open_key_store(s)
    a = running.secret_box().seal("before")
    assert open_key_store(s).rotate("sealing") == "2"
    assert (s.keys_dir / "credentials.key.v2").exists()
    restarted = open_key_store(s)
    b = restarted.secret_box().seal("after")
    assert b.startswith(f"{PREFIX}:file:2:") and not a.startswith(PREFIX)
    assert restarted.secret_box().open(a) == "before"
    assert restarted.secret_box().open(b) == "after"
    assert running.secret_box().open(b) == "after"
    with pytest.raises(AccessError, match="cannot be opened"):
        restarted.secret_box().open(f"{PREFIX}:file:9:" + b.rsplit(":", 1)[1])


def test_signing_rotation_checkpoints_before_and_after_verify(tmp_path: Path) -> None:
    """A log signed with version 1, then (after rotation and restart) version 2,
    verifies end to end against the public keys the store exports."""
    s = _settings(tmp_path)
    log_path = tmp_path / "audit" / "audit.log"
    clock = FakeClock(T0)

    def write(n: int) -> None:
        signer = open_key_store(s).checkpoint_signer()
        with ChainLog(
            log_path, signer=signer, checkpoint_every=5, checkpoint_interval_s=3600, clock=clock
        ) as log:
            for i in range(n):
                log.emit(new_event("session.command", details={"command": f"ls {i}"}))

    write(7)
    v1 = open_key_store(s).checkpoint_signer().key_id
    assert open_key_store(s).rotate("signing") == "2"
    signer2 = open_key_store(s).checkpoint_signer()
    assert signer2.key_id != v1 and len(signer2.public_keys) == 2
    write(7)
    pems = open_key_store(s).signing_public_pems()
    assert [v for v, _ in pems] == ["2", "1"]
    result = verify(log_path, keys=TrustedKeys.from_pems(p for _, p in pems), checkpoint_every=5)
    assert result.ok and result.signatures_checked and result.checkpoints >= 4
    only_new = verify(log_path, keys=TrustedKeys.from_pems([pems[0][1]]), checkpoint_every=5)
    assert not only_new.ok and "unknown key" in only_new.reason


def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    s.keys_dir.mkdir(parents=True)
    s.user_ca_key_path.write_bytes(b"not a key")
    with pytest.raises(KeyMaterialError, match="ssh_user_ca"):
        open_key_store(s).check()
