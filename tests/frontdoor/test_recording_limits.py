"""Recordings that fill up or fail end their session; typed input is recorded only by policy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import IO

import paramiko

from tests.frontdoor.harness import World, open_shell, paramiko_client, shell_ready
from tests.support import poll


def _drain(chan: paramiko.Channel, deadline_s: float = 10.0) -> bytes:
    """Everything the engineer sees (stdout and stderr) until the channel closes."""
    buf = b""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if chan.recv_ready():
            buf += chan.recv(1 << 20)
        elif chan.recv_stderr_ready():
            buf += chan.recv_stderr(65536)
        elif chan.exit_status_ready() and chan.closed:
            break
        elif chan.exit_status_ready():
            time.sleep(0.02)
            if not (chan.recv_ready() or chan.recv_stderr_ready()):
                break
        else:
            time.sleep(0.01)
    return buf


def _events(path: Path) -> list[list[object]]:
    return [json.loads(x) for x in path.read_text().splitlines()[1:] if x.strip()]


async def test_cat_dev_zero_stops_at_the_recording_limit(granted: World) -> None:
    """A shell pouring NUL bytes (six-fold when escaped) ends at the cap, with a clear message."""
    w = granted
    w.door.options = replace(w.door.options, max_recording_bytes=256 * 1024)
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    chan.send(b"cat /dev/zero\n")
    await poll(chan.exit_status_ready, deadline_s=10)
    seen = await asyncio.to_thread(_drain, chan)
    t.close()
    assert b"hoshu: the recording reached its limit of 0.25 MiB; the session was closed" in seen
    await poll(lambda: bool(w.events.of_type("session.ended")))
    ended = w.events.of_type("session.ended")[0]
    assert ended.get("EventResultDetails") == "recording_limit"
    path = w.tmp / "recordings" / ended.details["recording"]
    data = path.read_bytes()
    assert len(data) <= 256 * 1024
    assert ended.get("RecordingSize") == len(data)
    assert ended.get("RecordingSHA256") == hashlib.sha256(data).hexdigest()


async def test_the_limit_comes_from_the_broker_setting(tmp_path: Path) -> None:
    from broker.frontdoor.context import FrontDoorOptions
    from broker.settings import BrokerSettings

    s = BrokerSettings(data_dir=tmp_path, recording_max_mib=3)
    assert s.recording_max_mib == 3
    assert FrontDoorOptions().max_recording_bytes == 512 * 1024**2
    # start_front_door builds its options from the settings when none are given
    import asyncssh

    from audit.testing import CapturingEmitter
    from broker.frontdoor.door import start_front_door
    from broker.tunnel.connector import DirectConnector
    from tests.frontdoor.harness import FakePolicy

    door = await start_front_door(
        s,
        FakePolicy(),
        DirectConnector(),
        CapturingEmitter(),
        tmp_path / "rec",
        asyncssh.generate_private_key("ssh-ed25519"),
        host="127.0.0.1",
        port=0,
    )
    try:
        assert door.options.max_recording_bytes == 3 * 1024**2
    finally:
        await door.close()


class _FullDisk:
    """A recording file on a disk that is full once the header is written (ENOSPC)."""

    def __init__(self, path: Path) -> None:
        self._fh: IO[bytes] = open(path, "wb")
        self.writes = 0

    def write(self, data: bytes | memoryview) -> int:
        self.writes += 1
        if self.writes > 1:
            raise OSError(28, "No space left on device")
        return self._fh.write(data)

    def close(self) -> None:
        self._fh.close()


async def test_a_quiet_session_on_a_full_disk_ends_within_two_seconds(granted: World) -> None:
    """One short line typed, a few bytes of output: the timed flush finds the full disk."""
    w = granted
    files: list[_FullDisk] = []

    def opener(p: Path) -> _FullDisk:
        files.append(_FullDisk(p))
        return files[-1]

    w.door.recording_opener = opener
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await poll(lambda: bool(w.events.of_type("session.started")))
    chan.send(b"echo hi\n")
    took = await poll(chan.exit_status_ready, deadline_s=5)
    seen = await asyncio.to_thread(_drain, chan)
    t.close()
    assert len(files) == 1 and files[0].writes >= 2  # the header, then the failing flush
    assert took < 2.0
    assert b"hoshu: session ended: recording failed" in seen
    await poll(lambda: bool(w.events.of_type("session.ended")))
    assert w.events.of_type("session.ended")[0].get("EventResultDetails") == "recording_failed"


async def _shell_recording(w: World) -> list[list[object]]:
    """Open a shell, type the ready probe and exit: the events of its recording."""
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    chan.send(b"exit\n")
    await poll(lambda: bool(w.events.of_type("session.ended")))
    t.close()
    ended = w.events.of_type("session.ended")[0]
    return _events(w.tmp / "recordings" / ended.details["recording"])


async def test_typed_input_is_not_recorded_by_default(granted: World) -> None:
    w = granted
    events = await _shell_recording(w)
    assert not [e for e in events if e[1] == "i"]
    assert any("ready-2" in str(e[2]) for e in events if e[1] == "o")


async def test_typed_input_is_recorded_when_the_hospital_asks(granted: World) -> None:
    w = granted
    target = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(target, record_input=True)
    typed = "".join(str(e[2]) for e in await _shell_recording(w) if e[1] == "i")
    assert "echo ready-$((1+1))" in typed
