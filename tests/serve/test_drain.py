"""SIGTERM drains a real broker: the engineer is told, the session ends cleanly.

The whole system runs as in the demo (``hoshu serve``, a gateway, a real sshd
instrument) with ``HOSHU_DRAIN_GRACE_S=10``; stock OpenSSH runs a long recorded
command through the front door; the broker gets SIGTERM.  Then: /readyz is 503
``draining`` and the front door takes no new connection, the engineer's
terminal shows the restart notice, the session ends with ``session.ended``
carrying the size and SHA-256 of the recording on disk, the process exits 0
within the grace, and the audit log verifies with its final checkpoint signed
(no open tail).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hoshu_demo.demo import Demo
from tests.support import listening, poll_sync
from tests.support.demoflow import request_approved, sign_in
from tests.support.stockssh import engineer_ssh

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo"), pytest.mark.timeout(300)]
WAIT_S = 30.0
GRACE_S = 10.0  # its last 2 s are kept for ending sessions (hash, end events)
HOSHU = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hoshu"


@pytest.fixture
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    # ports the kernel picks: another test may hold the demo's usual ones
    d = Demo(
        tmp_path_factory.mktemp("drain") / ".hoshu-demo", api_port=0, ssh_port=0, tunnel_port=0
    )
    demo_env = d.env
    d.env = lambda user=None: {**demo_env(user), "HOSHU_DRAIN_GRACE_S": str(GRACE_S)}  # type: ignore[method-assign]
    try:
        d.start()
        yield d
    finally:
        d.stop()


def _events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_sigterm_tells_the_engineer_ends_the_session_cleanly_and_exits_0(system: Demo) -> None:
    d = system
    codes = sign_in(d, ("tanaka", "sato"))
    request_approved(d, "cobas-c503-1", reason="drain test", ticket="INC-2", plan="run a command")

    root = d.root
    argv, env = engineer_ssh(
        root,
        d.env("tanaka"),
        codes["tanaka"].code(),
        d.ssh_port,
        "tanaka+cobas-c503-1",
        "echo drain-marker-$((6*7)); sleep 300",
    )
    terminal = root / "engineer-terminal.txt"
    with terminal.open("wb") as out:
        ssh = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    recordings = root / "broker" / "recordings"
    api = f"http://127.0.0.1:{d.api_port}"
    try:
        cast = poll_sync(
            lambda: next(
                (p for p in recordings.glob("*.cast") if b"drain-marker-42" in p.read_bytes()), None
            ),
            WAIT_S,
            what="the recorded output",
            interval_s=0.1,
        )
        assert httpx.get(f"{api}/readyz", timeout=5).status_code == 200
        broker = d.procs["broker"]
        sigterm_at = time.monotonic()
        broker.send_signal(signal.SIGTERM)

        ready = poll_sync(
            lambda: r if (r := httpx.get(f"{api}/readyz", timeout=5)).status_code == 503 else None,
            GRACE_S,
            what="/readyz to say draining",
            interval_s=0.05,
        )
        assert ready.json()["status"] == "draining"
        assert not listening(d.ssh_port)  # no new engineer connection while draining

        code = broker.wait(timeout=GRACE_S + 10)
        took = time.monotonic() - sigterm_at
        print(f"SIGTERM to exit: {took:.1f} s (grace {GRACE_S:g} s)")
        assert code == 0
        assert took < GRACE_S + 3, f"the broker took {took:.1f} s to stop"
        assert ssh.wait(timeout=10) != 0  # the session was ended under the engineer
    finally:
        if ssh.poll() is None:
            ssh.kill()
            ssh.wait(timeout=10)

    seen = terminal.read_text(errors="replace")
    assert "the broker is restarting" in seen
    assert "session ended: broker shutdown" in seen

    sid = cast.stem
    events = [
        e
        for e in _events(root / "broker" / "audit" / "audit.log")
        if e.get("TargetSessionId") == sid
    ]
    kinds = [e["EventType"] for e in events]
    assert (
        kinds.index("session.warning")
        < kinds.index("session.terminated")
        < kinds.index("session.ended")
    )
    [ended] = [e for e in events if e["EventType"] == "session.ended"]
    data = cast.read_bytes()
    assert ended["EventResultDetails"] == "broker_shutdown"
    assert ended["RecordingSize"] == len(data)
    assert ended["RecordingSHA256"] == hashlib.sha256(data).hexdigest()
    header = json.loads(data.splitlines()[0])
    assert header["version"] == 2  # asciicast v2, playable
    assert not list((recordings / ".live").glob("*.json"))  # nothing left for a restart

    verify = subprocess.run(
        [
            str(HOSHU),
            "audit",
            "verify",
            "--log",
            str(root / "broker" / "audit" / "audit.log"),
            "--key",
            str(root / "auditor" / "audit_signing_key.pub"),
        ],
        env=d.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "(signatures checked)" in verify.stdout
