"""A flood of failed SSH logins from one source is written as a few events and one sum."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import paramiko
import pytest

from audit.events import AuditEvent
from broker.access.floods import FloodGate
from broker.frontdoor.door import source_key
from tests.frontdoor.harness import World, run
from tests.support import poll

FLOOD = 200
BURST = 10  # FrontDoorOptions.failures_written_per_minute


def _bad_login(port: int, login: str, key: paramiko.PKey) -> None:
    """An unregistered key for an unknown user: refused."""
    t = paramiko.Transport(("127.0.0.1", port))
    try:
        t.start_client(timeout=10)
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_publickey(login, key)
    finally:
        t.close()


def _failures(w: World) -> list[AuditEvent]:
    return [e for e in w.events.of_type("ssh.login") if e.get("EventResult") == "Failure"]


def _accounted(w: World) -> int:
    return sum(int(e.details.get("count") or 1) for e in _failures(w))


async def test_a_login_flood_writes_a_few_events_and_one_count(granted: World) -> None:
    w = granted
    key = paramiko.ECDSAKey.generate()
    login = f"mallory+{w.instrument}"
    with ThreadPoolExecutor(4) as pool:
        await asyncio.gather(
            *(
                asyncio.get_running_loop().run_in_executor(
                    pool, _bad_login, w.door.port, login, key
                )
                for _ in range(FLOOD)
            )
        )
    await poll(lambda: w.door.connection_count == 0)  # the broker has seen every one end
    w.clock.advance(61)  # the minute is over: its sum is written (checked every second)
    await poll(lambda: _accounted(w) == FLOOD, deadline_s=10)
    events = _failures(w)
    assert len(events) <= BURST + 2  # not one per attempt
    sums = [e for e in events if e.details.get("count")]
    assert sums and sums[0].details["count"] >= FLOOD - BURST - 1
    assert sums[0].get("SrcIpAddr") == "127.0.0.1"
    assert sums[0].details["window_s"] == 60
    single = [e for e in events if not e.details.get("count")]
    assert single and all(e.get("EventResultDetails") == "unknown user or key" for e in single)
    # the flood does not lock out or silence the real engineer from elsewhere in time
    r = await run(w.ssh_argv(extra=(w.login(), "echo still-in")), w.env())
    assert r.rc == 0 and r.out == b"still-in\n", r.err
    assert [e for e in w.events.of_type("ssh.login") if e.get("EventResult") == "Success"]


def test_flood_gate_counts_everything_past_the_burst_and_per_source() -> None:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    gate = FloodGate(window_s=60, burst=3)
    written = [gate.admit("ip:a", t0 + timedelta(seconds=i), "bad").write for i in range(10)]
    assert written == [True] * 3 + [False] * 7
    assert gate.admit("ip:b", t0, "bad").write  # another source has its own burst
    assert gate.flush(t0 + timedelta(seconds=30)) == []  # the minute is not over
    later = gate.admit("ip:a", t0 + timedelta(seconds=61), "bad")
    assert later.write and [(s.key, s.count) for s in later.summaries] == [("ip:a", 7)]
    rest = gate.flush(t0 + timedelta(seconds=200), everything=True)
    assert rest == []  # b stayed under its burst; a's new window too


def test_flood_gate_memory_is_bounded() -> None:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    gate = FloodGate(window_s=60, burst=1, max_sources=2)
    for n in range(50):
        gate.admit(f"ip:{n}", t0)
    summary = gate.flush(t0, everything=True)
    assert sum(s.count for s in summary) == 48 - 1  # 48 shared "*"; its first one written


def test_ipv6_sources_are_counted_per_64() -> None:
    assert source_key("2001:db8:1:2::5") == source_key("2001:db8:1:2:ffff::1")
    assert source_key("2001:db8:1:3::5") != source_key("2001:db8:1:2::5")
    assert source_key("192.0.2.1") == "ip:192.0.2.1"
    assert source_key("") == "ip:unknown"
