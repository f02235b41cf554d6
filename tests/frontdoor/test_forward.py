"""``ssh -L`` only to granted instrument ports; each forward is logged with its metadata."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from broker.frontdoor.context import FrontDoorOptions
from tests.frontdoor.harness import World, stop_process
from tests.support import connect_when_listening, free_port, poll


@pytest.fixture
def front_door_options(tmp_path: Path) -> FrontDoorOptions:
    # raw capture of forwarded bytes switched on for this module
    return FrontDoorOptions(
        login_timeout_s=5.0, watch_interval_s=0.1, forward_capture_dir=tmp_path / "captures"
    )


async def _start_forward(w: World, local: int, dest: str) -> asyncio.subprocess.Process:
    argv = w.ssh_argv(
        batch=True,
        extra=(
            "-o",
            f"CertificateFile={w.cert_file()}",
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
            "-L",
            f"127.0.0.1:{local}:{dest}",
            w.login(),
        ),
    )
    return await asyncio.create_subprocess_exec(
        *argv,
        env=w.env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_forward_to_a_granted_port_carries_data_and_is_logged(
    world: World, echo_port: int
) -> None:
    w = world
    t = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(t, ports=(*t.ports, echo_port))
    w.policy.grant(w.engineer, w.instrument, (echo_port,), ends=w.clock.now + timedelta(hours=1))
    local = free_port()
    proc = await _start_forward(w, local, f"localhost:{echo_port}")
    try:
        reader, writer = await connect_when_listening(local)
        payload = os.urandom(1_000_000)
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        assert got == payload
        writer.close()
        await poll(lambda: bool(w.events.of_type("forward.closed")), deadline_s=10)
    finally:
        await stop_process(proc)
    opened = w.events.of_type("forward.opened")[0]
    closed = w.events.of_type("forward.closed")[0]
    assert opened.get("TargetPortNumber") == echo_port
    assert closed.get("SrcBytes") == len(payload) == closed.get("DstBytes")
    assert closed.get("NetworkDuration") >= 0
    capture = w.tmp / "captures" / opened.details["capture"]
    assert capture.stat().st_size > 2 * len(payload)  # both directions, with framing


async def test_forward_to_a_port_outside_the_grant_is_refused(world: World, echo_port: int) -> None:
    """The instrument lists the port, but the grant covers only SSH: no path."""
    w = world
    t = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(t, ports=(*t.ports, echo_port))
    w.policy.grant(w.engineer, w.instrument, (w.ssh_port,), ends=w.clock.now + timedelta(hours=1))
    local = free_port()
    proc = await _start_forward(w, local, f"localhost:{echo_port}")
    try:
        reader, writer = await connect_when_listening(local)
        assert await asyncio.wait_for(reader.read(100), 10) == b""  # closed, nothing relayed
        writer.close()
        await poll(lambda: bool(w.events.of_type("forward.refused")))
    finally:
        await stop_process(proc)
    refused = w.events.of_type("forward.refused")[0]
    assert refused.get("EventResultDetails") == "no_grant"
    assert refused.get("TargetPortNumber") == echo_port
    assert not w.events.of_type("forward.opened")


async def test_forward_ends_when_the_grant_is_revoked(world: World, echo_port: int) -> None:
    w = world
    t = w.policy.instruments[w.instrument]
    w.policy.instruments[w.instrument] = replace(t, ports=(*t.ports, echo_port))
    g = w.policy.grant(
        w.engineer, w.instrument, (echo_port,), ends=w.clock.now + timedelta(hours=1)
    )
    local = free_port()
    proc = await _start_forward(w, local, f"{w.instrument}:{echo_port}")
    try:
        reader, writer = await connect_when_listening(local)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        w.policy.revoke(g.grant_id)
        took = await poll(
            lambda: reader.at_eof() or bool(w.events.of_type("forward.closed")), deadline_s=3
        )
        assert took < 1.0
        assert await asyncio.wait_for(reader.read(10), 5) == b""
    finally:
        await stop_process(proc)
    assert w.events.of_type("session.terminated")[0].details["kind"] == "forward"
