"""Admin commands on the broker host write their audit events where the broker does.

With ``HOSHU_AUDIT_STORE=postgres`` (real PostgreSQL, the real ``hoshu`` CLI as a
process), ``hoshu admin bootstrap`` and ``hoshu admin keys rotate`` put their events in
the PostgreSQL store (chain ``<replica id>.admin``, signed and closed), none of them
in a file on the broker's disk, and ``hoshu audit verify --store`` passes over every
chain with the public keys an auditor pinned.  The forgotten path: with the store
unreachable the rotation is refused, nothing is rotated, and no local log appears.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]
HOSHU = str(Path(sys.executable).parent / "hoshu")
PASSWORD = "Correct-Horse-Battery-9"


def _env(tmp: Path, db: str) -> dict[str, str]:
    env = {
        **os.environ,
        "HOSHU_DATA_DIR": str(tmp / "data"),
        "HOSHU_CONFIG_DIR": str(tmp / "cfg"),
        "HOSHU_DATABASE_URL": db,
        "HOSHU_AUDIT_STORE": "postgres",
        "HOSHU_REPLICA_ID": "replica-7",
    }
    env.pop("HOSHU_TOKEN", None)
    return env


def _hoshu(env: dict[str, str], *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HOSHU, *argv], env=env, input=stdin, capture_output=True, text=True, timeout=90
    )


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_admin_commands_write_the_durable_chain_and_no_local_file(tmp_path: Path, db: str) -> None:
    env = _env(tmp_path, db)
    data = tmp_path / "data"
    assert _hoshu(env, "db", "upgrade").returncode == 0
    r = _hoshu(
        env,
        *("--json", "admin", "bootstrap", "--name", "root", "--full-name", "Root"),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert r.returncode == 0, r.stderr
    r = _hoshu(env, "--json", "admin", "keys", "rotate", "--what", "signing")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rotated"] == {"signing": "2"}

    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT seq, record FROM audit_chain_events "
                    "WHERE chain_id = 'replica-7.admin' ORDER BY seq"
                )
            ).all()
    finally:
        engine.dispose()
    records = [json.loads(r.record) for r in rows]
    ops = [
        (e.get("Operation"), e.get("Object"))
        for e in records
        if e["EventType"] != "audit.checkpoint"
    ]
    assert ops == [("bootstrap", "root"), ("key_rotated", "signing")]
    # each command closed its run with a signed checkpoint
    assert [e["EventType"] for e in records][-1] == "audit.checkpoint"
    assert sum(e["EventType"] == "audit.checkpoint" for e in records) == 2
    # nothing of it lives only on the broker's disk
    assert not (data / "audit" / "audit.log").exists()
    for e in records:
        assert _files_holding(data, e["EventUid"].encode()) == []

    pins = tmp_path / "auditor"
    assert _hoshu(env, "admin", "keys", "public", "--out", str(pins)).returncode == 0
    trusted = [a for p in sorted(pins.iterdir()) for a in ("--trusted-key", str(p))]
    r = _hoshu(env, "--json", "audit", "verify", "--store", db, *trusted)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "replica-7.admin" in r.stdout


def test_with_the_store_unreachable_nothing_is_rotated_or_logged_locally(
    tmp_path: Path, db: str
) -> None:
    env = _env(tmp_path, db)
    data = tmp_path / "data"
    assert _hoshu(env, "admin", "keys", "public", "--out", str(tmp_path / "p1")).returncode == 0
    env["HOSHU_DATABASE_URL"] = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    r = _hoshu(env, "--json", "admin", "keys", "rotate", "--what", "signing")
    assert r.returncode != 0
    assert "audit store is unreachable" in r.stderr
    assert not (data / "keys" / "audit_signing_key.v2").exists()
    assert not (data / "audit" / "audit.log").exists()
