"""A real ``hoshu serve`` signs in to PostgreSQL as its managed identity, as on Azure
Container Apps: only IDENTITY_ENDPOINT/IDENTITY_HEADER/AZURE_CLIENT_ID (the identity
endpoint stand-in) and a password-less HOSHU_DATABASE_URL with
HOSHU_DATABASE_AUTH=entra.  After the token rotates and the server drops its
connections, the broker reconnects with the new token; no token is in its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.entra import PG_RESOURCE, EntraDb
from tests.support import free_port, poll_sync

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]
HOSHU = str(Path(sys.executable).parent / "hoshu")
WAIT_S = 30.0


def test_hoshu_serve_signs_in_with_the_identity_and_survives_a_rotation(
    entra_db: EntraDb, tmp_path: Path
) -> None:
    ep = entra_db.endpoint
    first = ep.token(PG_RESOURCE)
    api = f"http://127.0.0.1:{free_port()}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("HOSHU_", "IDENTITY_", "AZURE_"))
    }
    env |= entra_db.env() | {
        "HOSHU_DATA_DIR": str(tmp_path / "data"),
        "HOSHU_API_PORT": api.rsplit(":", 1)[1],
        "HOSHU_SSH_PORT": str(free_port()),
        "HOSHU_TUNNEL_PORT": str(free_port()),
    }
    up = subprocess.run(
        [HOSHU, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert up.returncode == 0, up.stderr
    out = tmp_path / "serve.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [HOSHU, "serve"], env=env, stdout=log, stderr=log, start_new_session=True
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, out.read_text()
            try:
                return httpx.get(f"{api}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        poll_sync(ready, WAIT_S, "hoshu serve to be ready (database signed in)", interval_s=0.1)
        assert ep.requests[PG_RESOURCE] >= 1 and ep.refused == 0

        ep.lifetime_s = 3600
        ep.rotate()
        second = ep.token(PG_RESOURCE)
        entra_db.set_password(second)  # the old token no longer signs in

        def reconnected() -> bool:
            entra_db.drop_connections()  # as a failover would
            return ready() and ep.requests[PG_RESOURCE] >= 2

        poll_sync(
            reconnected, WAIT_S, "the broker to sign in again with the new token", interval_s=0.2
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    text = out.read_text()
    assert "database token fetched" in text
    assert first not in text and second not in text
