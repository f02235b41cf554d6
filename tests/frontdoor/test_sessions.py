"""Recorded sessions through the protocol break; no grant, no path; live control."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from broker.access.door import InstrumentTarget
from broker.tunnel.connector import TunnelConnector
from broker.tunnel.endpoint import TunnelRegistry
from tests.frontdoor.harness import World, open_shell, paramiko_client, read_until, run, shell_ready
from tests.support import poll


def _cast_events(path: Path) -> tuple[dict[str, object], list[list[object]]]:
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(x) for x in lines[1:]]


async def test_interactive_shell_is_recorded_and_plays_in_asciinema(granted: World) -> None:
    """Output, input and resizes land in an asciicast v2 file whose hash is in the end event."""
    w = granted
    from dataclasses import replace

    target = w.policy.instruments[w.instrument]  # input is recorded where the hospital asks
    w.policy.instruments[w.instrument] = replace(target, record_input=True)
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t, 100, 30)
    chan.send(b"echo rec-$((40+2))\n")
    await asyncio.to_thread(read_until, chan, b"rec-42")
    chan.resize_pty(width=120, height=40)
    chan.send(b"stty size\n")
    await asyncio.to_thread(read_until, chan, b"40 120")
    chan.send(b"exit\n")
    await poll(lambda: bool(w.events.of_type("session.ended")))
    t.close()
    ended = w.events.of_type("session.ended")[0]
    started = w.events.of_type("session.started")[0]
    assert started.details["kind"] == "shell"
    assert ended.get("EventResultDetails") == "exited" and ended.details["exit_status"] == 0
    path = w.tmp / "recordings" / ended.details["recording"]
    data = path.read_bytes()
    assert ended.get("RecordingSize") == len(data)
    assert ended.get("RecordingSHA256") == hashlib.sha256(data).hexdigest()
    header, events = _cast_events(path)
    assert header["version"] == 2 and (header["width"], header["height"]) == (100, 30)
    codes = {e[1] for e in events}
    assert {"o", "i", "r"} <= codes
    assert ["r", "120x40"] in [e[1:] for e in events]
    assert any("echo rec-" in str(e[2]) for e in events if e[1] == "i")
    # asciinema wants a terminal; script(1) gives it one
    played = await asyncio.to_thread(
        subprocess.run,
        ["script", "-qec", f"asciinema cat {path}", "/dev/null"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        start_new_session=True,
    )
    assert played.returncode == 0, played.stderr
    assert b"rec-42" in played.stdout
    # the injected credential appears nowhere an engineer or auditor can read
    secret_line = w.policy.instruments[w.instrument].credential.splitlines()[1]
    assert secret_line not in data.decode()
    assert all(secret_line not in e.to_json() for e in w.events.events)


async def test_exec_output_and_exit_status_pass_through(granted: World) -> None:
    w = granted
    r = await run(w.ssh_argv(extra=(w.login(), "echo out; echo err >&2; exit 3")), w.env())
    assert (r.rc, r.out, r.err.strip().splitlines()[-1]) == (3, b"out\n", b"err")
    ended = w.events.of_type("session.ended")[0]
    assert ended.details["exit_status"] == 3
    cmd = w.events.of_type("session.command")[0]
    assert cmd.details["command"] == "echo out; echo err >&2; exit 3"


async def test_no_grant_no_path(world: World) -> None:
    """Authenticated, but no grant for this instrument: refused with the reason."""
    w = world
    r = await run(w.ssh_argv(extra=(w.login(), "true")), w.env())
    assert r.rc == 1
    assert b"no active grant for alice on cobas-c503-1" in r.err
    refused = w.events.of_type("session.refused")[0]
    assert refused.get("EventResultDetails") == "no_grant"
    assert not list((w.tmp / "recordings").glob("*.cast"))


async def test_unknown_instrument_and_missing_instrument_name(granted: World) -> None:
    w = granted
    r = await run(w.ssh_argv(extra=(w.login("lis-nowhere"), "true")), w.env())
    assert r.rc == 1 and b"unknown instrument 'lis-nowhere'" in r.err
    w.clock.advance(30)  # a fresh TOTP code for the second login
    r2 = await run(w.ssh_argv(extra=(w.login(""), "true")), w.env())
    assert r2.rc == 1 and b"name an instrument" in r2.err


async def test_revocation_ends_a_live_session_within_one_second(granted: World) -> None:
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    chan.send(b"echo live\n")
    await asyncio.to_thread(read_until, chan, b"live")
    assert len(w.door.sessions.list()) == 1
    w.policy.revoke("g1")
    took = await poll(chan.exit_status_ready, deadline_s=3)
    assert took < 1.0
    out = await asyncio.to_thread(read_until, chan, b"session ended")
    assert b"grant revoked" in out
    t.close()
    term = w.events.of_type("session.terminated")[0]
    assert term.get("EventResultDetails") == "grant_revoked"
    await poll(lambda: bool(w.events.of_type("session.ended")))
    assert w.events.of_type("session.ended")[0].get("EventResultDetails") == "grant_revoked"


async def test_deactivation_ends_a_live_session(granted: World) -> None:
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    w.policy.deactivate("alice")
    took = await poll(chan.exit_status_ready, deadline_s=3)
    assert took < 1.0
    t.close()


async def test_expiry_warns_at_five_and_one_minute_then_ends(granted: World) -> None:
    """The engineer sees both warnings on the terminal; the session ends at the grant end."""
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    w.clock.advance(3600 - 299)
    out = await asyncio.to_thread(read_until, chan, b"ends in 5 minutes")
    assert b"cobas-c503-1" in out
    w.clock.advance(240)
    await asyncio.to_thread(read_until, chan, b"ends in 1 minute")
    assert [e.details["remaining_s"] for e in w.events.of_type("session.warning")] == [299, 59]
    assert not chan.exit_status_ready()
    w.clock.advance(60)
    took = await poll(chan.exit_status_ready, deadline_s=3)
    assert took < 1.0
    t.close()
    assert w.events.of_type("session.terminated")[0].get("EventResultDetails") == "grant_expired"


async def test_recording_that_cannot_be_written_refuses_the_session(granted: World) -> None:
    w = granted
    blocker = w.tmp / "not-a-dir"
    blocker.write_text("")
    w.door.recorder_dir = blocker / "recordings"
    r = await run(w.ssh_argv(extra=(w.login(), "echo should-not-run")), w.env())
    assert r.rc == 1
    assert b"session refused: the recording cannot be written" in r.err
    assert b"should-not-run" not in r.out
    assert w.events.of_type("session.refused")[0].get("EventResultDetails") == "recording_failed"
    assert not w.events.of_type("session.started")


class _FailsAfter:
    """A recording file that breaks after ``limit`` bytes, as a filling disk would."""

    def __init__(self, path: Path, limit: int) -> None:
        self._fh: IO[bytes] = open(path, "wb")
        self._left = limit

    def write(self, data: bytes | memoryview) -> int:
        if len(data) > self._left:
            raise OSError(28, "No space left on device")
        self._left -= len(data)
        return self._fh.write(data)

    def close(self) -> None:
        self._fh.close()


async def test_recording_failure_mid_session_ends_the_session(granted: World) -> None:
    w = granted
    w.door.recording_opener = lambda p: _FailsAfter(p, 400)
    command = "head -c 600000 /dev/zero | tr '\\0' x; sleep 20"
    r = await run(w.ssh_argv(extra=(w.login(), command)), w.env(), timeout=30)
    assert r.rc == 255
    assert b"the recording could not be written" in r.err
    assert r.seconds < 10  # ended by the broker, long before the command would finish
    ended = w.events.of_type("session.ended")[0]
    assert ended.get("EventResultDetails") == "recording_failed"


async def test_instrument_refusing_the_credential(granted: World) -> None:
    w = granted
    import asyncssh

    other = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    t = w.policy.instruments[w.instrument]
    from dataclasses import replace

    w.policy.instruments[w.instrument] = replace(t, credential=other)
    r = await run(w.ssh_argv(extra=(w.login(), "true")), w.env())
    assert r.rc == 1
    assert b"refused the broker's credential" in r.err
    assert other.splitlines()[1].encode() not in r.err


async def test_instrument_host_key_mismatch_refused(granted: World) -> None:
    from dataclasses import replace

    w = granted
    t = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(t, host_key_fingerprint="SHA256:AAAA")
    r = await run(w.ssh_argv(extra=(w.login(), "true")), w.env())
    assert r.rc == 1
    assert b"does not match the one the hospital accepted" in r.err


async def test_gateway_offline(granted: World) -> None:
    w = granted
    w.door.connector = TunnelConnector(TunnelRegistry())  # no gateway has dialled in
    r = await run(w.ssh_argv(extra=(w.login(), "true")), w.env())
    assert r.rc == 1
    assert b"gateway for cobas-c503-1 is offline" in r.err
    assert w.events.of_type("session.refused")[0].get("EventResultDetails") == "gateway_offline"


async def test_channel_flood_is_capped_without_hurting_other_sessions(granted: World) -> None:
    w = granted
    other = await asyncio.to_thread(paramiko_client, w)
    other_chan = await asyncio.to_thread(open_shell, other)
    w.clock.advance(30)
    flood = await asyncio.to_thread(paramiko_client, w)

    def open_many() -> int:
        opened = 0
        for _ in range(40):
            try:
                flood.open_session(timeout=5)
                opened += 1
            except Exception:
                break
        return opened

    opened = await asyncio.to_thread(open_many)
    assert opened == w.door.options.max_channels
    refused = w.events.of_type("session.refused")
    assert refused and refused[0].get("EventResultDetails") == "too_many_channels"
    other_chan.send(b"echo still-fine\n")
    await asyncio.to_thread(read_until, other_chan, b"still-fine")
    flood.close()
    other.close()


async def test_follow_live_and_terminate(granted: World) -> None:
    """An approver follows the terminal read-only and ends the session."""
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    (live,) = w.door.sessions.list()
    seen = bytearray()

    async def follow() -> None:
        async for chunk in w.door.sessions.follow(live.session_id):
            seen.extend(chunk)

    follower = asyncio.ensure_future(follow())
    await poll(lambda: bool(w.door.sessions.list()[0].followers), what="the follower attached")
    chan.send(b"echo watched-$((6*7))\n")
    await poll(lambda: b"watched-42" in seen)
    start = time.monotonic()
    assert w.door.sessions.terminate(live.session_id, by="approver:hanako", reason="approver")
    await poll(chan.exit_status_ready, deadline_s=3)
    assert time.monotonic() - start < 1
    await asyncio.wait_for(follower, 5)
    t.close()
    term = w.events.of_type("session.terminated")[0]
    assert term.details["by"] == "approver:hanako"
    assert not w.door.sessions.list()


async def test_grant_expiring_in_the_past_is_refused(granted: World) -> None:
    w = granted
    w.policy.set_end("g1", w.clock.now - timedelta(seconds=1))
    r = await run(w.ssh_argv(extra=(w.login(), "true")), w.env())
    assert r.rc == 1 and b"no active grant" in r.err


async def test_password_credential_on_an_asyncssh_instrument(
    granted: World, analyzer_instrument: Any
) -> None:
    """The LAS controller takes a password: injected the same way, never shown."""
    w = granted
    a = analyzer_instrument
    w.policy.instruments["las-line-a"] = InstrumentTarget(
        name="las-line-a",
        hospital_id="h-1",
        gateway_id="gw-1",
        host=a.info.host,
        ssh_port=a.port,
        ports=(a.port,),
        username="service",
        credential=a.password,
        host_key_fingerprint=a.info.host_key_fingerprint,
    )
    w.policy.grant(w.engineer, "las-line-a", (a.port,), ends=w.clock.now + timedelta(hours=1))
    r = await run(w.ssh_argv(extra=(w.login("las-line-a"), "status")), w.env())
    assert r.rc == 0, r.err
    assert r.out.strip()
    assert a.password.encode() not in r.out + r.err
    assert all(a.password not in e.to_json() for e in w.events.events)


async def test_terminate_from_another_thread_ends_the_session(granted: World) -> None:
    """A synchronous API route runs in a worker thread; termination still works."""
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    (live,) = w.door.sessions.list()
    assert await asyncio.to_thread(
        w.door.sessions.terminate, live.session_id, by="approver:hanako", reason="approver"
    )
    took = await poll(chan.exit_status_ready, deadline_s=3)
    assert took < 1.0
    t.close()


async def test_unknown_subsystem_is_refused_not_turned_into_a_shell(granted: World) -> None:
    w = granted
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(t.open_session, timeout=10)
    chan.settimeout(10)
    await asyncio.to_thread(chan.invoke_subsystem, "netconf")
    await poll(chan.exit_status_ready, deadline_s=5)
    assert chan.recv_exit_status() == 1
    assert b"subsystem 'netconf' is not available" in chan.recv_stderr(1000)
    t.close()
    assert not w.events.of_type("session.started")
    assert w.events.of_type("session.refused")[0].details["kind"] == "subsystem"
