"""Sessions end first and are audited after: an audit log that refuses a write cannot keep a
session alive; an expiry reads as an expiry, on the terminal and in the log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from audit.events import AuditEvent
from audit.testing import CapturingEmitter
from broker.live.sessions import LiveSession, SessionRegistry
from tests.frontdoor.harness import (
    T0,
    FakePolicy,
    World,
    open_shell,
    paramiko_client,
    read_until,
    shell_ready,
)
from tests.support import FakeClock, poll, poll_sync

ROOT = Path(__file__).resolve().parents[2]


class _AuditDown:
    """Refuses the first ``n`` events of ``kind`` (a full disk under the audit log)."""

    def __init__(self, inner: CapturingEmitter, kind: str, n: int) -> None:
        self.inner, self.kind, self.left = inner, kind, n
        self._lock = threading.Lock()

    def emit(self, event: AuditEvent) -> AuditEvent:
        with self._lock:
            if event.type == self.kind and self.left > 0:
                self.left -= 1
                raise OSError(28, "No space left on device")
        return self.inner.emit(event)


async def test_revocation_ends_the_session_even_when_the_audit_write_fails(
    granted: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = granted
    real = CapturingEmitter()
    real.events = w.events.events  # the same list the test reads
    down = _AuditDown(real, "session.terminated", 2)
    monkeypatch.setattr(w.events, "emit", down.emit)
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    w.policy.revoke("g1")
    took = await poll(chan.exit_status_ready, deadline_s=3)
    assert took < 1.0  # told to end although the audit log refused the event
    out = await asyncio.to_thread(read_until, chan, b"session ended")
    assert b"grant revoked" in out
    t.close()
    alerts = w.events.of_type("alert.raised")
    assert alerts and alerts[0].get("EventResultDetails") == "audit_write_failed"
    # the refused event is written once the log takes it again (retried with backoff)
    await poll(lambda: bool(w.events.of_type("session.terminated")), deadline_s=5)
    assert [e.get("EventResultDetails") for e in w.events.of_type("session.terminated")] == [
        "grant_revoked"
    ]
    await poll(lambda: bool(w.events.of_type("session.ended")))
    assert w.events.of_type("session.ended")[0].get("EventResultDetails") == "grant_revoked"


def test_an_event_the_log_keeps_refusing_is_retried_a_bounded_number_of_times() -> None:
    events = CapturingEmitter()
    down = _AuditDown(events, "session.terminated", 100)
    clock, policy = FakeClock(T0), FakePolicy()
    eng, _ = policy.add_engineer("alice", "ssh-ed25519 AAAAkey")
    g = policy.grant(eng, "cobas-c503-1", (22,), ends=T0 + timedelta(minutes=10))
    reg = SessionRegistry(policy, down, clock, retry_delays=(0.01, 0.01, 0.01))
    told: list[str] = []
    reg.add(
        LiveSession(
            "s1",
            "shell",
            eng.user_id,
            "alice",
            "cobas-c503-1",
            "h-1",
            g.grant_id,
            22,
            T0,
            on_terminate=told.append,
        )
    )
    assert reg.terminate("s1", by="approver", reason="terminated_by_approver")
    assert told == ["terminated_by_approver"]
    poll_sync(lambda: reg.retries_pending() == 0, 5, "the retries to end", interval_s=0.01)
    assert reg.retries_pending() == 0
    assert down.left == 100 - 4  # the first try and three retries, then it gives up
    assert [e.type for e in events.events] == ["alert.raised"]


async def test_an_expired_grant_says_expired_on_the_terminal(granted: World) -> None:
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    w.clock.advance(3600)
    out = await asyncio.to_thread(read_until, chan, b"session ended: grant expired")
    t.close()
    assert b"grant expired" in out and b"revoked" not in out
    await poll(lambda: bool(w.events.of_type("session.ended")))
    assert w.events.of_type("session.ended")[0].get("EventResultDetails") == "grant_expired"
    assert [e.get("EventResultDetails") for e in w.events.of_type("session.terminated")] == [
        "grant_expired"
    ]


async def test_a_session_that_ends_normally_leaves_no_journal_entry(granted: World) -> None:
    """While it runs a recorded session is in the journal; once ended, it is not."""
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    journal = w.tmp / "recordings" / ".live"
    assert [p.stem for p in journal.glob("*.json")] == [w.door.sessions.list()[0].session_id]
    chan.send(b"exit\n")
    await poll(lambda: bool(w.events.of_type("session.ended")))
    t.close()
    await poll(lambda: not list(journal.glob("*.json")))


def test_a_starting_broker_ends_only_sessions_no_live_broker_holds(tmp_path: Path) -> None:
    """Replicas sharing the recordings volume: a live session's journal entry is locked."""
    from broker.live.journal import LiveJournal, end_lost_sessions

    (tmp_path / "s-live.cast").write_bytes(b"live")
    (tmp_path / "s-lost.cast").write_bytes(b"partial recording")
    running = LiveJournal(tmp_path)
    cols = {"ActorUsername": "alice", "TargetHostname": "cobas-c503-1"}
    running.opened(
        "s-live", {"columns": cols, "details": {"kind": "shell", "recording": "s-live.cast"}}
    )
    # another broker journals a session and dies (a real process, so the OS drops its lock)
    lost = {"columns": cols, "details": {"kind": "exec", "recording": "s-lost.cast"}}
    crashed = (
        f"import json, os, sys; from pathlib import Path; "
        f"from {LiveJournal.__module__} import LiveJournal; "
        "LiveJournal(Path(sys.argv[1])).opened('s-lost', json.loads(sys.argv[2])); "
        "os._exit(0)"
    )
    subprocess.run(
        [sys.executable, "-c", crashed, str(tmp_path), json.dumps(lost)],
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    events = CapturingEmitter()
    assert end_lost_sessions(tmp_path, events, FakeClock(T0)) == ["s-lost"]
    [ended] = events.of_type("session.ended")
    assert ended.get("TargetSessionId") == "s-lost"
    assert ended.get("EventResultDetails") == "broker_lost"
    assert ended.get("RecordingSize") == len(b"partial recording")
    assert ended.get("RecordingSHA256") == hashlib.sha256(b"partial recording").hexdigest()
    assert [p.stem for p in (tmp_path / ".live").glob("*.json")] == ["s-live"]
    running.closed("s-live")
    assert end_lost_sessions(tmp_path, events, FakeClock(T0)) == []


async def test_until_gone_returns_when_the_session_leaves_or_at_its_bound() -> None:
    """What the console's terminate waits on before it shows the list again."""
    reg = SessionRegistry(FakePolicy(), CapturingEmitter(), FakeClock(T0))
    s = LiveSession("s1", "shell", "u1", "alice", "an-1", "h1", "g1", 22, T0)
    reg.add(s)
    assert await reg.until_gone("s1", 0.05) is False  # still live: the bound
    waiting = asyncio.ensure_future(reg.until_gone("s1", 10))
    await asyncio.sleep(0)
    assert not waiting.done()
    reg.remove("s1")
    assert await asyncio.wait_for(waiting, 5) is True
    assert await reg.until_gone("s1", 0) is True  # gone already
    assert await reg.until_gone("never-there", 0) is True
    assert reg._gone == {}
