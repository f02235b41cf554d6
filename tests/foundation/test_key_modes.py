"""Private keys and secrets are born 0600: no umask and no earlier file widens them.

Each writer runs with ``umask(0)`` (the most permissive) and with ``chmod``
disabled, so a file that is only made private *after* it was written shows
its real, world-readable mode here.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.keyfiles import create_secret, replace_secret


@pytest.fixture(autouse=True)
def permissive(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    chmods: list[str] = []
    monkeypatch.setattr(os, "chmod", lambda path, mode, **kw: chmods.append(str(path)))
    monkeypatch.setattr(Path, "chmod", lambda self, mode, **kw: chmods.append(str(self)))
    old = os.umask(0)
    try:
        yield chmods
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_secret_is_0600_and_refuses_a_file_or_symlink_already_there(tmp_path: Path) -> None:
    create_secret(tmp_path / "k", b"secret")
    assert _mode(tmp_path / "k") == 0o600 and (tmp_path / "k").read_bytes() == b"secret"
    with pytest.raises(FileExistsError):
        create_secret(tmp_path / "k", b"other")
    assert (tmp_path / "k").read_bytes() == b"secret"
    target = tmp_path / "elsewhere"
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(FileExistsError):
        create_secret(tmp_path / "link", b"secret")
    assert not target.exists()  # nothing written through the planted link


def test_replace_secret_gives_a_wide_old_file_a_private_successor(tmp_path: Path) -> None:
    old = tmp_path / "token.json"
    old.write_text("old")
    os.umask(0)
    old_fd = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(old_fd)
    assert _mode(tmp_path / "probe") == 0o644  # the umask really is permissive
    replace_secret(old, b"new")
    assert _mode(old) == 0o600 and old.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe", "token.json"]


def test_audit_signing_key(tmp_path: Path) -> None:
    from audit.signing import CheckpointSigner

    key = tmp_path / "keys" / "audit_signing_key"
    CheckpointSigner.load_or_create(key)
    assert _mode(key) == 0o600


def test_ssh_user_ca_key(tmp_path: Path, permissive: list[str]) -> None:
    from broker.frontdoor.ca import UserCA

    key = tmp_path / "keys" / "user_ca"
    UserCA.load_or_create(key)
    assert _mode(key) == 0o600 and not permissive
    assert UserCA.load_or_create(key).public_line() == UserCA.load_or_create(key).public_line()


def test_front_door_host_key(tmp_path: Path, permissive: list[str]) -> None:
    from broker.assembly import load_or_create_host_key

    key = tmp_path / "keys" / "ssh_front_door_host_key"
    load_or_create_host_key(key)
    assert _mode(key) == 0o600 and not permissive


def test_credential_key_and_tunnel_host_key(tmp_path: Path) -> None:
    from broker.access.crypto import SecretBox
    from broker.services import broker_host_public_key

    SecretBox.from_file(tmp_path / "keys" / "credentials.key")
    broker_host_public_key(tmp_path / "keys" / "broker_host_key")
    assert _mode(tmp_path / "keys" / "credentials.key") == 0o600
    assert _mode(tmp_path / "keys" / "broker_host_key") == 0o600


def test_cli_token_replaces_an_old_world_readable_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.cli.client import save_token

    monkeypatch.setenv("HOSHU_CONFIG_DIR", str(tmp_path))
    old = tmp_path / "token.json"
    fd = os.open(old, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    save_token(
        "http://127.0.0.1:8440",
        "tanaka",
        {"access_token": "tok", "expires_at": "2026-12-01T00:00:00Z"},
    )
    assert _mode(old) == 0o600 and json.loads(old.read_text())["access_token"] == "tok"


def test_gateway_key_and_enrolment(tmp_path: Path) -> None:
    from gateway.enroll import _write_private, load_or_create_key

    key = tmp_path / "state" / "gateway_key"
    # a temporary file planted where the old writer put its own is not written through
    key.parent.mkdir()
    planted = key.with_name(key.name + ".tmp")
    fd = os.open(planted, os.O_WRONLY | os.O_CREAT, 0o666)
    os.close(fd)
    load_or_create_key(key)
    assert _mode(key) == 0o600 and planted.read_bytes() == b""
    enrolment = tmp_path / "state" / "enrollment.json"
    fd = os.open(enrolment, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    _write_private(enrolment, b"{}")
    assert _mode(enrolment) == 0o600
