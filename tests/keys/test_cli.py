"""``hoshu admin keys rotate`` and ``hoshu admin keys public`` on the broker host (key
files here; the same commands work on Key Vault through the same KeyStore)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.chain import read_events
from audit.signing import TrustedKeys
from broker.cli.main import build_parser, main
from broker.keys import open_key_store
from broker.settings import BrokerSettings


def test_rotate_all_then_old_and_new_data_open_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    settings = BrokerSettings(data_dir=data)
    before = open_key_store(settings)
    sealed = before.secret_box().seal("old credential")
    old_cp = before.checkpoint_signer().sign(3, "a" * 64)

    assert main(["--json", "admin", "keys", "rotate", "--data-dir", str(data)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rotated"] == {"sealing": "2", "signing": "2"}
    events = [e for e in read_events(settings.audit_log_path) if e.type == "admin.change"]
    assert [(e.record["Operation"], e.record["Object"]) for e in events] == [
        ("key_rotated", "sealing"),
        ("key_rotated", "signing"),
    ]

    after = open_key_store(settings)
    new_sealed = after.secret_box().seal("new credential")
    assert after.secret_box().open(sealed) == "old credential"
    assert after.secret_box().open(new_sealed) == "new credential"
    new_cp = after.checkpoint_signer().sign(9, "b" * 64)

    pins = tmp_path / "pinned"
    assert main(["admin", "keys", "public", "--out", str(pins), "--data-dir", str(data)]) == 0
    files = sorted(pins.iterdir())
    assert [f.name for f in files] == ["audit-signing-1.pem", "audit-signing-2.pem"]
    trusted = TrustedKeys.from_pem_files(files)
    assert trusted.check(old_cp) is None and trusted.check(new_cp) is None

    assert main(["admin", "keys", "rotate", "--what", "sealing", "--data-dir", str(data)]) == 0
    assert (settings.keys_dir / "credentials.key.v3").exists()
    assert not (settings.keys_dir / "audit_signing_key.v3").exists()


def test_engineers_keys_command_is_unchanged() -> None:
    parser = build_parser()
    assert parser.parse_args(["keys", "list"]).func.__name__ == "cmd_keys_list"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["admin", "keys", "rotate", "--what", "everything"])
    assert exc.value.code == 2
