"""`./run demo` end to end: it starts, writes demo.json, and its walkthrough works.

The test runs the demo as a person would (one process, Ctrl-C to stop) and
then follows the printed walkthrough with the real tools: the `hoshu` CLI for
the engineer, the approver and the auditor, and stock OpenSSH `ssh` (key +
TOTP through keyboard-interactive) through the broker and the hospital gateway
to the simulated analyzer PC (a real `sshd`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.support import poll_sync
from tests.support.demoflow import Totp

# The demo starts three processes, and TOTP codes are single use: a second sign-in
# in one 30 s step waits for the next, so these tests get more time than the default.
pytestmark = [pytest.mark.xdist_group("demo"), pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cwd = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    out = open(cwd / "demo.out", "wb")
    argv = [sys.executable, "-m", "hoshu_demo", "--root", ".hoshu-demo", "--any-ports"]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    info_path = cwd / ".hoshu-demo" / "demo.json"

    def started() -> bool:
        assert proc.poll() is None, (cwd / "demo.out").read_text()[-3000:]
        return info_path.exists() and b"Ctrl-C stops" in (cwd / "demo.out").read_bytes()

    try:
        poll_sync(started, 300, "the demo to start", interval_s=0.2)
        info = json.loads(info_path.read_text())
        info.update(_cwd=cwd, _env=env, _proc=proc, _started=time.time())
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        out.close()


def hoshu(demo: dict[str, Any], user: str, *args: str, stdin: str = "") -> Any:
    env = {
        **demo["_env"],
        "HOSHU_API": demo["broker"]["api_url"],
        "HOSHU_CONFIG_DIR": demo["users"][user]["config_dir"],
    }
    r = subprocess.run(
        [str(BIN / "hoshu"), "--json", *args],
        input=stdin,
        text=True,
        capture_output=True,
        env=env,
        cwd=demo["_cwd"],
        timeout=60,
    )
    assert r.returncode == 0, f"hoshu {args}: {r.stderr}"
    return json.loads(r.stdout) if r.stdout.strip()[:1] in "{[" else r.stdout


def test_demo_json_describes_a_running_system(demo: dict[str, Any]) -> None:
    assert set(demo["users"]) == {"admin", "tanaka", "sato", "suzuki"}
    assert {u["role"] for u in demo["users"].values()} == {
        "platform_admin",
        "engineer",
        "approver",
        "auditor",
    }
    for u in demo["users"].values():
        assert len(pyotp.TOTP(u["totp_secret"]).now()) == 6
    assert {"cobas-c503-1", "las-line-a", "lis-hl7"} <= set(demo["instruments"])
    assert Path(demo["engineer_key"]).exists()
    out = (demo["_cwd"] / "demo.out").read_text()
    assert "tanaka+cobas-c503-1@127.0.0.1" in out and "secret:" in out


def test_the_walkthrough_works_from_request_to_audit(demo: dict[str, Any]) -> None:
    users = demo["users"]
    codes = {u: Totp(users[u]["totp_secret"], demo["_started"]) for u in users}

    def login(user: str) -> None:
        hoshu(
            demo,
            user,
            "login",
            "--user",
            user,
            "--password-stdin",
            "--totp",
            codes[user].code(),
            stdin=users[user]["password"],
        )

    # 1. the engineer asks
    login("tanaka")
    port = demo["instruments"]["cobas-c503-1"]["ssh_port"]
    req = hoshu(
        demo,
        "tanaka",
        "request",
        "cobas-c503-1",
        "--port",
        str(port),
        "--duration",
        "1h",
        "--reason",
        "ALT calibration drift",
        "--ticket",
        "INC-1042",
        "--plan",
        "check QC log, recalibrate ALT",
    )
    # 2. the approver approves
    login("sato")
    pending = hoshu(demo, "sato", "requests")
    rows = pending["requests"] if isinstance(pending, dict) else pending
    assert req["id"] in [r["id"] for r in rows]
    hoshu(demo, "sato", "approve", req["id"], "--comment", "OK, lab staff present")

    # 3. stock ssh with key + TOTP, through broker and gateway to the real sshd
    cwd: Path = demo["_cwd"]
    code_file = cwd / "code.txt"
    askpass = cwd / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\ncat {code_file}\n")
    askpass.chmod(0o700)
    code_file.write_text(codes["tanaka"].code() + "\n")
    env = {
        **demo["_env"],
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": "none",
    }
    ssh = subprocess.Popen(
        [
            "ssh",
            "-i",
            demo["engineer_key"],
            "-o",
            "UserKnownHostsFile=.hoshu-demo/known_hosts",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=no",
            "-p",
            str(demo["broker"]["ssh_port"]),
            "tanaka+cobas-c503-1@127.0.0.1",
            "cat qc/2026-11-qc.csv; sleep 300",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        # 4. the approver sees the live session and ends it
        def sessions() -> Any:
            assert ssh.poll() is None, ssh.stderr.read() if ssh.stderr else ""
            return hoshu(demo, "sato", "sessions")

        live = poll_sync(sessions, 30, "the session to show as live", interval_s=0.2)
        assert [s["instrument"] for s in live] == ["cobas-c503-1"] and live[0]["user"] == "tanaka"
        hoshu(demo, "sato", "sessions", "terminate", live[0]["session_id"])
        out, _err = ssh.communicate(timeout=10)  # ended by the approver, not by sleep 300
    finally:
        if ssh.poll() is None:
            ssh.kill()
    qc = next((cwd / ".hoshu-demo" / "lab").rglob("2026-11-qc.csv")).read_text()
    assert out.decode() == qc and qc.count("\n") > 3
    assert not hoshu(demo, "sato", "sessions")

    # 5. the auditor finds the session and its recording
    login("suzuki")

    def terminated() -> Any:
        found = hoshu(
            demo,
            "suzuki",
            "audit",
            "search",
            "--engineer",
            "tanaka",
            "--type",
            "session.terminated",
        )
        return found["events"] if isinstance(found, dict) else found

    # the index is fed asynchronously from the log
    events = poll_sync(
        terminated, 30, "session.terminated to reach the audit index", interval_s=0.3
    )
    assert events, "session.terminated never reached the audit index"
    ended = events[0]
    assert ended["TargetHostname"] == "cobas-c503-1" and ended["Details"]["by"] == "sato"
    found = hoshu(
        demo,
        "suzuki",
        "audit",
        "search",
        "--session",
        ended["TargetSessionId"],
        "--type",
        "session.ended",
    )
    ended = (found["events"] if isinstance(found, dict) else found)[0]
    rec = next(
        (cwd / ".hoshu-demo" / "broker" / "recordings").rglob(f"{ended['TargetSessionId']}*.cast")
    )
    data = rec.read_bytes()
    assert hashlib.sha256(data).hexdigest() == ended["RecordingSHA256"]
    assert b"QC" in data or qc.splitlines()[1].encode() in data
    env = {
        **demo["_env"],
        "HOSHU_API": demo["broker"]["api_url"],
        "HOSHU_CONFIG_DIR": users["suzuki"]["config_dir"],
    }
    play = subprocess.run(
        [
            str(BIN / "hoshu"),
            "audit",
            "play",
            ended["TargetSessionId"],
            "--speed",
            "100",
            "--max-idle",
            "0.01",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert play.returncode == 0, play.stderr
    assert qc.splitlines()[1] in play.stdout  # the auditor sees what the engineer saw
    verify = subprocess.run(
        [
            str(BIN / "hoshu"),
            "audit",
            "verify",
            "--log",
            ".hoshu-demo/broker/audit/audit.log",
            "--key",
            ".hoshu-demo/auditor/audit_signing_key.pub",
            "--allow-open-tail",
        ],
        cwd=cwd,
        env=demo["_env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "(signatures checked)" in verify.stdout  # against the key pinned at set-up


def test_ctrl_c_stops_everything(demo: dict[str, Any]) -> None:
    proc: subprocess.Popen[bytes] = demo["_proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert "Stopped." in (demo["_cwd"] / "demo.out").read_text()
