"""A broker killed mid-session (SIGKILL) ends that session when it starts again.

The whole system runs as in the demo (``hoshu serve``, a gateway, a real sshd
instrument); stock OpenSSH runs a recorded command through it; the broker is
killed with SIGKILL while the command runs, then started again on the same
data directory.  The audit log must then hold ``session.ended`` with reason
``broker_lost`` and the size and SHA-256 of the partial recording on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoshu_demo.demo import Demo
from tests.support import listening, poll_sync
from tests.support.demoflow import request_approved, sign_in
from tests.support.stockssh import engineer_ssh

pytestmark = [pytest.mark.xdist_group("demo"), pytest.mark.timeout(300)]
WAIT_S = 30.0  # a whole system on two cores: broker, gateway, sshd


@pytest.fixture
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    # a short folder: the gateway's control socket path must fit AF_UNIX's 108 bytes
    # ports the kernel picks: another test may hold the demo's usual ones
    d = Demo(
        tmp_path_factory.mktemp("crash") / ".hoshu-demo", api_port=0, ssh_port=0, tunnel_port=0
    )
    try:
        d.start()
        yield d
    finally:
        d.stop()


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line the kill cut short
    return out


def test_a_session_left_open_by_a_killed_broker_is_ended_at_restart(system: Demo) -> None:
    d = system
    codes = sign_in(d, ("tanaka", "sato"))
    request_approved(d, "cobas-c503-1", reason="crash test", ticket="INC-1", plan="run a command")

    root = d.root
    known = root / "known_hosts"
    argv, env = engineer_ssh(
        root,
        d.env("tanaka"),
        codes["tanaka"].code(),
        d.ssh_port,
        "tanaka+cobas-c503-1",
        "echo crash-marker-$((6*7)); sleep 300",
        known_hosts=known,
    )
    ssh = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    recordings = root / "broker" / "recordings"
    try:
        # the output is on disk within a second (timed flush), before the kill
        cast = poll_sync(
            lambda: next(
                (p for p in recordings.glob("*.cast") if b"crash-marker-42" in p.read_bytes()), None
            ),
            WAIT_S,
            what="the recorded output",
            interval_s=0.1,
        )
        broker = d.procs["broker"]
        os.killpg(broker.pid, signal.SIGKILL)
        broker.wait(timeout=10)
    finally:
        if ssh.poll() is None:
            ssh.kill()
        ssh.wait(timeout=10)
    sid = cast.stem
    log = root / "broker" / "audit" / "audit.log"
    assert not [e for e in _events(log) if e.get("EventType") == "session.ended"]

    d.restart_broker()
    poll_sync(
        lambda: listening(d.api_port) and listening(d.ssh_port),
        WAIT_S,
        what="the restarted broker",
        interval_s=0.1,
    )

    def lost() -> list[dict[str, Any]]:
        return [
            e
            for e in _events(log)
            if e.get("EventType") == "session.ended" and e.get("TargetSessionId") == sid
        ]

    [ended] = poll_sync(lost, WAIT_S, what="session.ended of the lost session", interval_s=0.1)
    data = cast.read_bytes()
    assert ended["EventResultDetails"] == "broker_lost"
    assert ended["RecordingSize"] == len(data)
    assert ended["RecordingSHA256"] == hashlib.sha256(data).hexdigest()
    assert ended["ActorUsername"] == "tanaka" and ended["TargetHostname"] == "cobas-c503-1"
    started = [
        e
        for e in _events(log)
        if e.get("EventType") == "session.started" and e.get("TargetSessionId") == sid
    ]
    assert len(started) == 1
    assert not list((recordings / ".live").glob("*.json"))  # accounted for once only


def test_recordings_inside_the_audit_directory_are_refused(tmp_path: Path) -> None:
    from broker.assembly import check_storage_apart
    from broker.settings import BrokerSettings

    data = tmp_path / "data"
    check_storage_apart(BrokerSettings(data_dir=data))  # the defaults are apart
    for inside in (data / "audit", data / "audit" / "rec", data):
        with pytest.raises(ValueError, match="must not be in or around the audit log"):
            check_storage_apart(BrokerSettings(data_dir=data, recordings_path=inside))
    check_storage_apart(BrokerSettings(data_dir=data, recordings_path=tmp_path / "volume"))


def test_the_shared_filesystem_warning_only_where_both_live_on_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Recordings and the audit log on one filesystem are warned about; with the
    recordings in Blob storage or the chain in PostgreSQL nothing of the kind is true."""
    from broker.assembly import check_storage_apart
    from broker.settings import BrokerSettings

    data = tmp_path / "data"
    caplog.set_level(logging.WARNING, logger="broker.assembly")
    check_storage_apart(BrokerSettings(data_dir=data))
    assert "share a filesystem" in caplog.text
    for durable in (
        {"recordings_url": "https://acct.blob.core.windows.net/recordings"},
        {"audit_store": "postgres", "database_url": "postgresql://u@127.0.0.1/hoshu"},
    ):
        caplog.clear()
        check_storage_apart(BrokerSettings(data_dir=data, **durable))  # type: ignore[arg-type]
        assert "share a filesystem" not in caplog.text, durable


def test_forward_captures_inside_the_audit_directory_are_refused(tmp_path: Path) -> None:
    from broker.assembly import check_storage_apart
    from broker.settings import BrokerSettings

    data = tmp_path / "data"
    check_storage_apart(BrokerSettings(data_dir=data, forward_capture_path=tmp_path / "cap"))
    with pytest.raises(ValueError, match="forward captures"):
        check_storage_apart(BrokerSettings(data_dir=data, forward_capture_path=data / "audit"))
