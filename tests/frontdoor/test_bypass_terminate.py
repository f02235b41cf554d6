"""A command the broker terminates ends on the instrument too: SSH ``signal`` TERM,
KILL after a grace period, then the channel and the broker's connection close.

The instrument is a real OpenSSH sshd set up like an analyzer PC's (no forced
command: OpenSSH refuses ``signal`` requests for forced commands).
"""

from __future__ import annotations

import asyncio
import pwd
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

import broker.frontdoor.relay
from labsim.sshd import OpenSSHInstrument
from tests.frontdoor.harness import World, paramiko_client
from tests.support import poll

# the account a hospital gives the broker: an ordinary user with a shell (sshd serves
# root logins without privilege separation, and then refuses ``signal`` too)
SERVICE_ACCOUNT = "postgres"  # created by the postgresql package ./run installs


class _ServiceAccountSshd(OpenSSHInstrument):
    """sshd as an analyzer PC runs it for its service account: no forced command, not root."""

    def __init__(self, workdir: Path) -> None:
        account = pwd.getpwnam(SERVICE_ACCOUNT)
        wrapper = workdir / "sshd-as-service-account"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"chown -R {account.pw_uid}:{account.pw_gid} {shlex.quote(str(workdir))}\n"
            f"exec setpriv --reuid={account.pw_uid} --regid={account.pw_gid} --clear-groups "
            '/usr/sbin/sshd "$@"\n'
        )
        wrapper.chmod(0o755)
        super().__init__(workdir, sshd=wrapper, force_command=False)
        self.username = SERVICE_ACCOUNT


@pytest.fixture
def openssh_instrument() -> Iterator[OpenSSHInstrument]:
    workdir = Path(tempfile.mkdtemp(prefix="hoshu-terminate-"))
    workdir.chmod(0o755)
    try:
        with _ServiceAccountSshd(workdir) as instrument:
            yield instrument
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "State:\tZ" not in status  # a zombie has ended


def _start(w: World, command: str) -> tuple[paramiko.Transport, paramiko.Channel, int]:
    t = paramiko_client(w)
    chan = t.open_session(timeout=10)
    chan.settimeout(10)
    chan.exec_command(command)
    line = b""
    while not line.endswith(b"\n"):
        line += chan.recv(1)
    return t, chan, int(line)


async def test_terminated_exec_ends_the_command_on_the_instrument(granted: World) -> None:
    w = granted
    t, chan, pid = await asyncio.to_thread(_start, w, "echo $$; exec sleep 300")
    try:
        assert _running(pid)
        (live,) = w.door.sessions.list()
        assert w.door.sessions.terminate(live.session_id, by="approver:hanako", reason="approver")
        took = await poll(chan.exit_status_ready, deadline_s=3)
        assert took < 1.0  # the engineer's channel does not wait for the instrument
        await poll(lambda: not _running(pid), deadline_s=5)
    finally:
        t.close()
    assert w.events.of_type("session.ended")[0].get("EventResultDetails") == "approver"


async def test_a_command_ignoring_TERM_is_killed_after_the_grace_period(
    granted: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = granted
    monkeypatch.setattr(broker.frontdoor.relay, "TERM_GRACE_S", 0.5)
    t, chan, pid = await asyncio.to_thread(_start, w, "trap '' TERM; echo $$; exec sleep 300")
    try:
        w.policy.revoke("g1")  # the grant watcher ends the session
        await poll(chan.exit_status_ready, deadline_s=3)
        await poll(lambda: not _running(pid), deadline_s=5)
    finally:
        t.close()
    assert w.events.of_type("session.terminated")[0].get("EventResultDetails") == "grant_revoked"


async def test_the_brokers_connection_to_the_instrument_closes_after_termination(
    granted: World, openssh_instrument: OpenSSHInstrument
) -> None:
    """The engineer stays connected to the broker; the instrument sees the broker leave."""
    w = granted
    t, _chan, pid = await asyncio.to_thread(_start, w, "echo $$; exec sleep 300")
    log = openssh_instrument.log_path
    try:
        assert "Disconnected from user" not in log.read_text()
        (live,) = w.door.sessions.list()
        w.door.sessions.terminate(live.session_id, by="approver:hanako", reason="approver")
        await poll(lambda: not _running(pid), deadline_s=5)
        await poll(lambda: "Disconnected from user" in log.read_text(), deadline_s=5)
        assert t.is_active()
    finally:
        t.close()


def _exec(t: paramiko.Transport, command: str) -> tuple[paramiko.Channel, int]:
    chan = t.open_session(timeout=10)
    chan.settimeout(10)
    chan.exec_command(command)
    line = b""
    while not line.endswith(b"\n"):
        line += chan.recv(1)
    return chan, int(line)


async def test_the_connection_stays_while_another_channel_uses_it(
    granted: World, openssh_instrument: OpenSSHInstrument
) -> None:
    """Two commands on one engineer connection: ending one leaves the other running."""
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    log = openssh_instrument.log_path
    try:
        first, pid1 = await asyncio.to_thread(_exec, t, "echo $$; exec sleep 300")
        second, pid2 = await asyncio.to_thread(_exec, t, "echo $$; read x; echo got-$x")
        ids = sorted(s.session_id for s in w.door.sessions.list())
        assert len(ids) == 2
        w.door.sessions.terminate(ids[0], by="approver:hanako", reason="approver")  # the first
        await poll(first.exit_status_ready, deadline_s=3)
        await poll(lambda: not _running(pid1), deadline_s=5)
        assert _running(pid2)
        second.sendall(b"42\n")
        out = b""
        while b"got-42" not in out:
            out += await asyncio.to_thread(second.recv, 100)
        assert "Disconnected from user" not in log.read_text()
    finally:
        t.close()
