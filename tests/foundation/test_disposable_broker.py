"""A broker replica is disposable: kill it, delete its disk, start a new one, nothing is lost.

The whole system runs as in the demo (``hoshu serve``, an enrolled gateway, a real
sshd instrument, stock OpenSSH as the engineer), but the broker keeps what it
cannot lose where the reference deployment keeps it: keys in a Key Vault
(stand-in on the documented REST contract, reached over HTTPS as the managed
identity), recordings in Blob storage (a real Azurite), the store and the audit
chain in a real PostgreSQL.  After a recorded session the broker is killed with
SIGKILL and its data directory deleted; a new broker on an empty disk must then:

- be accepted by the gateway, which pinned the tunnel host key at enrolment;
- be accepted by the engineer's ``ssh`` with ``StrictHostKeyChecking=yes``
  (same front-door host key) and sign them in with key + TOTP (the TOTP secret
  was sealed by the vault), then log in to the instrument with the credential
  the hospital stored (sealed too);
- play the old session's recording from Blob storage, with the SHA-256 its
  ``session.ended`` event holds;
- verify the whole audit chain, written by both brokers, with the public keys
  an auditor pinned from the vault.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hoshu_demo.demo import Demo
from tests.fixtures.azurite import Azurite
from tests.fixtures.postgres import create_database
from tests.support import poll_sync
from tests.support.demoflow import Totp, request_approved, sign_in
from tests.support.identity import IdentityEndpoint
from tests.support.keyvault import IdentityTokens, KeyVault
from tests.support.stockssh import engineer_ssh

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.timeout(480),
    pytest.mark.xdist_group("disposable"),
]
WAIT_S = 60.0  # a whole system on two cores: broker, gateway, sshd, Azurite, PostgreSQL
INSTRUMENT = "cobas-c503-1"


@pytest.fixture
def cloud(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Key Vault, Blob storage, PostgreSQL and the managed identity the broker signs in as;
    the broker settings that point at them."""
    root = tmp_path_factory.mktemp("cloud")
    with IdentityEndpoint() as identity:
        for k, v in identity.env().items():
            monkeypatch.setenv(k, v)  # the environment Container Apps give the container
        vault = KeyVault(root / "kv", tokens=IdentityTokens(identity)).start()
        blob = Azurite(root / "azurite").start()
        try:
            from broker.identity import azure_credential

            container = blob.new_container(azure_credential(identity.client_id))
            bundle = root / "ca.pem"  # the stand-ins' self-signed certificates
            bundle.write_bytes(vault.cert_path.read_bytes() + blob.cert.read_bytes())
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
            db = create_database(postgres_url, f"disposable_{uuid.uuid4().hex[:8]}")
            yield {
                "HOSHU_DATABASE_URL": db,
                "HOSHU_KEY_VAULT_URL": vault.url,
                "HOSHU_RECORDINGS_URL": container,
                "HOSHU_AUDIT_STORE": "postgres",
                "HOSHU_REPLICA_ID": "broker-a",
            }
        finally:
            blob.stop()
            vault.close()


@pytest.fixture
def system(tmp_path_factory: pytest.TempPathFactory, cloud: dict[str, str]) -> Iterator[Demo]:
    # a short folder: the gateway's control socket path must fit AF_UNIX's 108 bytes
    # ports the kernel picks: the demo's usual ones may be taken by a demo test running
    # beside this one (it is not in their group, so the two run at once)
    d = Demo(
        tmp_path_factory.mktemp("disp") / ".hoshu-demo",
        api_port=0,
        ssh_port=0,
        tunnel_port=0,
        broker_env=dict(cloud),
    )
    try:
        d.start()
        yield d
    finally:
        d.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _gateway_connected(d: Demo) -> bool:
    config = d.root / "gateway" / "gateway.toml"
    tool = str(Path(sys.executable).parent / "hoshu-gateway")
    st = subprocess.run(
        [tool, "--config", str(config), "status", "--json"],
        capture_output=True,
        timeout=30,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")},
    )
    try:
        return st.returncode == 0 and json.loads(st.stdout)["state"] == "connected"
    except (ValueError, KeyError):
        return False


def _ssh(d: Demo, codes: Totp, known: Path, strict: str, command: str) -> str:
    argv, env = engineer_ssh(
        d.root,
        d.env("tanaka"),
        codes.code(),
        d.ssh_port,
        f"tanaka+{INSTRUMENT}",
        command,
        known_hosts=known,
        strict=strict,
        connect_timeout_s=20,
    )
    r = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode(errors="replace")


def _ended(d: Demo) -> dict[str, dict[str, Any]]:
    found = d.hoshu("suzuki", "audit", "search", "--type", "session.ended", "--limit", "50")
    rows = found["events"] if isinstance(found, dict) else found
    return {str(e["TargetSessionId"]): e for e in rows}


def _recording(d: Demo, session_id: str) -> bytes:
    token = json.loads((d.root / "users" / "suzuki" / "token.json").read_text())["access_token"]
    r = httpx.get(
        f"{d.api}/v1/recordings/{session_id}",
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    return r.content


def test_a_broker_started_on_an_empty_disk_loses_nothing(system: Demo) -> None:
    d = system
    codes = sign_in(d, ("tanaka", "sato", "suzuki"))
    request_approved(d, INSTRUMENT, reason="disposable broker", ticket="INC-7", plan="one command")

    known = d.root / "known_hosts"
    out = _ssh(d, codes["tanaka"], known, "accept-new", "echo before-$((6*7))")
    assert "before-42" in out
    [(first_sid, first)] = poll_sync(
        lambda: list(_ended(d).items()) or None,
        WAIT_S,
        what="session.ended of the first session",
        interval_s=0.5,
    )
    assert not list((d.root / "broker").rglob("*.cast")), "recordings belong in Blob storage"

    broker = d.procs["broker"]
    os.killpg(broker.pid, signal.SIGKILL)
    broker.wait(timeout=10)
    shutil.rmtree(d.root / "broker")  # the container's disk is gone

    d.restart_broker()
    poll_sync(
        lambda: _listening(d.api_port) and _listening(d.ssh_port),
        WAIT_S,
        what="the new broker",
        interval_s=0.2,
    )
    # the gateway pinned the tunnel host key at enrolment: it reconnects only to the same key
    poll_sync(
        lambda: _gateway_connected(d),
        WAIT_S,
        what="the gateway back on the new broker",
        interval_s=0.5,
    )

    # same front-door host key, TOTP secret and instrument credential still open
    out = _ssh(d, codes["tanaka"], known, "yes", "echo after-$((6*7))")
    assert "after-42" in out

    # the first session's recording plays from Blob storage with its recorded hash
    data = _recording(d, first_sid)
    assert b"before-42" in data
    assert hashlib.sha256(data).hexdigest() == first["RecordingSHA256"]
    assert len(data) == first["RecordingSize"]

    ended = poll_sync(
        lambda: e if len(e := _ended(d)) >= 2 else None,
        WAIT_S,
        what="session.ended of the second session",
        interval_s=0.5,
    )
    assert first_sid in ended  # the first broker's events are still searchable

    # one chain written by both brokers, verified with the keys an auditor pinned; a
    # clean stop (SIGTERM: drain) first signs its tail
    d.procs["broker"].terminate()
    assert d.procs["broker"].wait(timeout=60) == 0
    keys = sorted((d.root / "auditor").glob("audit-signing-*.pem"))
    assert keys, "the auditor pinned the vault's public signing keys at set-up"
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "hoshu"),
            "--json",
            "audit",
            "verify",
            "--store",
            d.broker_env["HOSHU_DATABASE_URL"],
            *[a for k in keys for a in ("--trusted-key", str(k))],
        ],
        env=d.env(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    report = json.loads(r.stdout)
    chains = {c["log"]: c for c in report["chains"]}
    # the broker's own chain, and the admin commands' (bootstrap) beside it
    assert report["ok"] and set(chains) == {"postgres:broker-a", "postgres:broker-a.admin"}
    own = chains["postgres:broker-a"]
    # the killed broker left its last events unsigned; the new broker's drain checkpoint
    # covers them and its own (one more checkpoint only when a 60 s interval passed)
    assert own["signatures_checked"] and own["unsigned_tail"] == 0 and own["checkpoints"] >= 1
