"""A broker replica that is killed and loses its disk loses no audit event.

Real ``hoshu serve`` processes with ``HOSHU_AUDIT_STORE=postgres`` on a real
PostgreSQL, shipping to a Fluentd forward server: admin API calls write events, the
sink goes down so some are not shipped, the broker is killed with SIGKILL and its
data directory deleted.  A new broker with the same ``HOSHU_REPLICA_ID`` (what a
fixed replica name gives) starts on an empty directory: every event whose API call
returned is in the chain, the sink receives the ones it had not acknowledged (from
the cursor row), and ``hoshu audit verify`` passes over every chain with the public
keys an auditor kept (the first broker's key file went with its disk).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from broker.access import totp
from tests.fixtures.siem import ForwardServer
from tests.support import free_port, poll_sync

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]
HOSHU = str(Path(sys.executable).parent / "hoshu")
PASSWORD = "Correct-Horse-Battery-9"
WAIT_S = 30.0


class Broker:
    def __init__(self, tmp: Path, db: str, sink_port: int) -> None:
        self.data = tmp / "data"
        self.api = f"http://127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "HOSHU_DATA_DIR": str(self.data),
            "HOSHU_CONFIG_DIR": str(tmp / "cfg"),
            "HOSHU_DATABASE_URL": db,
            "HOSHU_AUDIT_STORE": "postgres",
            "HOSHU_REPLICA_ID": "replica-1",
            "HOSHU_AUDIT_CHECKPOINT_EVERY": "10",
            "HOSHU_API_PORT": self.api.rsplit(":", 1)[1],
            "HOSHU_SSH_PORT": str(free_port()),
            "HOSHU_TUNNEL_PORT": str(free_port()),
            "HOSHU_AUDIT_SINKS": json.dumps(
                [{"kind": "fluentd", "name": "fluentd", "host": "127.0.0.1", "port": sink_port}]
            ),
        }
        self.env.pop("HOSHU_TOKEN", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [HOSHU, *argv], env=self.env, input=stdin, capture_output=True, text=True, timeout=60
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [HOSHU, "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                self.proc.stderr.read().decode() if self.proc and self.proc.stderr else ""
            )
            try:
                return httpx.get(f"{self.api}/v1/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        poll_sync(healthy, WAIT_S, "hoshu serve to come up", interval_s=0.05)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _chain(db: str) -> list[dict[str, Any]]:
    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            return [
                json.loads(r)
                for r in conn.scalars(
                    text(
                        "SELECT record FROM audit_chain_events WHERE chain_id = 'replica-1' "
                        "ORDER BY seq"
                    )
                )
            ]
    finally:
        engine.dispose()


def test_a_killed_replica_without_its_disk_loses_no_event_and_shipping_resumes(
    tmp_path: Path, db: str, forward_server: ForwardServer
) -> None:
    broker = Broker(tmp_path, db, forward_server.port)
    auditor = tmp_path / "auditor"  # what the auditor keeps, away from any broker
    auditor.mkdir()
    r = broker.run("db", "upgrade")
    assert r.returncode == 0, r.stderr
    r = broker.run(
        "--json",
        "admin",
        "bootstrap",
        "--name",
        "root",
        "--full-name",
        "Root",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert r.returncode == 0, r.stderr
    secret = json.loads(r.stdout)["totp_secret"]
    broker.start()
    try:
        shutil.copy(broker.data / "keys" / "audit_signing_key.pub", auditor / "first.pub")
        login = httpx.post(
            f"{broker.api}/v1/auth/login",
            timeout=10,
            json={
                "username": "root",
                "password": PASSWORD,
                "totp_code": totp.code_at(secret, datetime.now(UTC)),
            },
        )
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}

        def create(i: int) -> None:
            resp = httpx.post(
                f"{broker.api}/v1/orgs",
                headers=auth,
                timeout=10,
                json={"name": f"vendor-{i}", "kind": "vendor"},
            )
            assert resp.status_code == 201, resp.text

        for i in range(10):
            create(i)
        poll_sync(
            lambda: {f"vendor-{i}" for i in range(10)} <= _objects(forward_server),
            WAIT_S,
            "the first events at the sink",
            interval_s=0.1,
        )
        forward_server.stop()  # the SIEM is down: the next events wait in the outbox
        for i in range(10, 40):
            create(i)
        broker.kill()
    finally:
        broker.stop()
    shipped_before = {str(r["EventUid"]) for r in forward_server.records}
    shutil.rmtree(broker.data)  # the replica's disk is gone, its signing key with it

    created = [
        e
        for e in _chain(db)
        if e.get("EventType") == "admin.change" and e.get("ObjectType") == "org"
    ]
    assert sorted(e["Object"] for e in created) == sorted(f"vendor-{i}" for i in range(40))
    unshipped = {str(e["EventUid"]) for e in created} - shipped_before
    assert {e["Object"] for e in created if e["EventUid"] in unshipped} >= {
        f"vendor-{i}" for i in range(10, 40)
    }

    forward_server.start()  # the SIEM is back, on the same port
    broker.start()
    try:
        shutil.copy(broker.data / "keys" / "audit_signing_key.pub", auditor / "second.pub")
        poll_sync(
            lambda: unshipped <= {str(r["EventUid"]) for r in forward_server.records},
            WAIT_S,
            "the events not shipped before the kill at the sink",
            interval_s=0.1,
        )
    finally:
        broker.stop()  # a clean stop: the chain ends with a signed checkpoint
    # resumed from the stored cursor: what the sink had acknowledged is not sent again
    # (at least once allows a re-sent last batch; the first ten were acknowledged long ago)
    again = [r for r in forward_server.records if str(r["EventUid"]) in shipped_before]
    assert len(again) == len(shipped_before)

    verify = ["--json", "audit", "verify", "--store", db]
    keys = [
        "--trusted-key",
        str(auditor / "first.pub"),
        "--trusted-key",
        str(auditor / "second.pub"),
    ]
    r = broker.run(*verify, *keys)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    chains = {c["log"]: c for c in report["chains"]}
    # the bootstrap's event is in the admin commands' chain, not on the lost disk
    assert report["ok"] and set(chains) == {"postgres:replica-1", "postgres:replica-1.admin"}
    own = chains["postgres:replica-1"]
    assert own["checkpoints"] >= 2 and own["signatures_checked"] and own["unsigned_tail"] == 0
    # the first broker's key alone does not cover what the second one signed
    r = broker.run(*verify, "--trusted-key", str(auditor / "first.pub"))
    reasons = [str(c["reason"]) for c in json.loads(r.stdout)["chains"]]
    assert r.returncode == 1 and any("unknown key" in why for why in reasons)
    # (keys from the data directory, and no key at all, are refused: test_verify_strict)


def _objects(server: ForwardServer) -> set[str]:
    return {str(r.get("Object")) for r in list(server.records)}
