"""Forward capture files: created new with mode 0600, never over a file, capped (fail closed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from broker.frontdoor.context import FrontDoorOptions
from tests.frontdoor.harness import World, stop_process
from tests.support import connect_when_listening, free_port, poll

CAP = 64 * 1024


@pytest.fixture
def front_door_options(tmp_path: Path) -> FrontDoorOptions:
    return FrontDoorOptions(
        login_timeout_s=5.0,
        watch_interval_s=0.1,
        forward_capture_dir=tmp_path / "captures",
        forward_capture_max_bytes=CAP,
    )


@pytest.fixture
def forward_granted(world: World, echo_port: int) -> World:
    t = world.policy.instruments[world.instrument]
    world.policy.instruments[world.instrument] = replace(t, ports=(*t.ports, echo_port))
    world.policy.grant(
        world.engineer, world.instrument, (echo_port,), ends=world.clock.now + timedelta(hours=1)
    )
    return world


async def _forward(w: World, echo_port: int) -> tuple[asyncio.subprocess.Process, int]:
    local = free_port()
    argv = w.ssh_argv(
        batch=True,
        extra=(
            "-o",
            f"CertificateFile={w.cert_file()}",
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
            "-L",
            f"127.0.0.1:{local}:localhost:{echo_port}",
            w.login(),
        ),
    )
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=w.env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return proc, local


async def test_capture_file_is_private_whatever_the_umask(
    forward_granted: World, echo_port: int
) -> None:
    w = forward_granted
    old = os.umask(0o000)
    try:
        proc, local = await _forward(w, echo_port)
        try:
            reader, writer = await connect_when_listening(local)
            writer.write(b"QC?\n")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"QC?\n"
            writer.close()
            await poll(lambda: bool(w.events.of_type("forward.closed")), deadline_s=10)
        finally:
            await stop_process(proc)
    finally:
        os.umask(old)
    name = w.events.of_type("forward.opened")[0].details["capture"]
    capture = w.tmp / "captures" / name
    assert stat.S_IMODE(capture.stat().st_mode) == 0o600
    assert capture.read_bytes() == b">\0\0\0\4QC?\n<\0\0\0\4QC?\n"
    assert w.events.of_type("forward.closed")[0].get("EventResult") == "Success"


async def test_an_existing_capture_file_is_never_overwritten(
    forward_granted: World, echo_port: int
) -> None:
    """A file (here a symlink to another file) already at the capture's name: the forward is
    refused and that other file is untouched."""
    w = forward_granted
    captures = w.tmp / "captures"
    captures.mkdir()
    victim = w.tmp / "audit-like.log"
    victim.write_bytes(b"precious\n")
    for n in range(1, 40):  # every name the next session ids can take
        (captures / f"s{n:04d}.fwd").symlink_to(victim)
    proc, local = await _forward(w, echo_port)
    try:
        reader, writer = await connect_when_listening(local)
        writer.write(b"hello")
        try:
            got = await asyncio.wait_for(reader.read(100), 10)
        except ConnectionResetError:
            got = b""
        assert got == b""  # closed, nothing relayed
        writer.close()
        await poll(lambda: bool(w.events.of_type("forward.refused")), deadline_s=10)
    finally:
        await stop_process(proc)
    assert victim.read_bytes() == b"precious\n"
    refused = w.events.of_type("forward.refused")[0]
    assert refused.get("EventResultDetails") == "capture_failed"
    assert not w.events.of_type("forward.opened")


async def test_forward_ends_when_its_capture_reaches_the_cap(
    forward_granted: World, echo_port: int
) -> None:
    """Fail closed: what cannot be captured is not forwarded, and the forward ends."""
    w = forward_granted
    proc, local = await _forward(w, echo_port)
    try:
        reader, writer = await connect_when_listening(local)
        payload = os.urandom(4 * CAP)
        writer.write(payload)
        got = b""
        with contextlib.suppress(OSError):
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                got += chunk
        writer.close()
        await poll(lambda: bool(w.events.of_type("forward.closed")), deadline_s=10)
    finally:
        await stop_process(proc)
    assert len(got) < CAP  # the echo never got back more than the capture holds
    closed = w.events.of_type("forward.closed")[0]
    assert closed.get("EventResultDetails") == "capture_full"
    assert closed.get("EventResult") == "Failure"
    assert closed.get("SrcBytes") <= CAP
    name = w.events.of_type("forward.opened")[0].details["capture"]
    assert (w.tmp / "captures" / name).stat().st_size <= CAP


async def test_the_capture_folder_and_cap_come_from_the_broker_settings(tmp_path: Path) -> None:
    """``HOSHU_FORWARD_CAPTURE_PATH`` switches capture on in the front door of ``hoshu serve``."""
    import asyncssh

    from audit.testing import CapturingEmitter
    from broker.frontdoor.door import start_front_door
    from broker.settings import BrokerSettings
    from broker.tunnel.connector import DirectConnector
    from tests.frontdoor.harness import FakePolicy

    settings = BrokerSettings(
        data_dir=tmp_path / "data",
        forward_capture_path=tmp_path / "cap",
        forward_capture_max_bytes=4096,
    )
    door = await start_front_door(
        settings,
        FakePolicy(),
        DirectConnector(),
        CapturingEmitter(),
        tmp_path / "rec",
        asyncssh.generate_private_key("ssh-ed25519"),
        host="127.0.0.1",
        port=0,
    )
    try:
        assert door.options.forward_capture_dir == tmp_path / "cap"
        assert door.options.forward_capture_max_bytes == 4096
    finally:
        await door.close()
    off = await start_front_door(
        BrokerSettings(data_dir=tmp_path / "d2"),
        FakePolicy(),
        DirectConnector(),
        CapturingEmitter(),
        tmp_path / "rec2",
        asyncssh.generate_private_key("ssh-ed25519"),
        host="127.0.0.1",
        port=0,
    )
    try:
        assert off.options.forward_capture_dir is None
    finally:
        await off.close()
