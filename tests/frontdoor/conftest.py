"""Fixtures: a front door on loopback in front of a real OpenSSH instrument."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from audit.testing import CapturingEmitter
from broker.access.door import InstrumentTarget
from broker.frontdoor.ca import UserCA
from broker.frontdoor.context import FrontDoorOptions
from broker.frontdoor.door import start_front_door
from broker.settings import BrokerSettings
from broker.tunnel.connector import DirectConnector
from labsim.sshd import OpenSSHInstrument
from tests.frontdoor.harness import T0, FakePolicy, World, engineer_key
from tests.frontdoor.store_policy import store_policy
from tests.support import FakeClock

ASKPASS = "#!/bin/sh\nprintf '%s\\n' \"$HOSHU_TEST_CODE\"\n"


@pytest.fixture
def front_door_options() -> FrontDoorOptions:
    return FrontDoorOptions(login_timeout_s=2.0, watch_interval_s=0.1)


@pytest.fixture
def policy_kind() -> str:
    """Which AccessPolicy answers the front door: "fake" here; modules that must hold for
    the real one too parametrize this over "fake" and "store" (StoreAccessPolicy)."""
    return "fake"


@pytest.fixture
async def world(
    tmp_path: Path,
    openssh_instrument: OpenSSHInstrument,
    front_door_options: FrontDoorOptions,
    policy_kind: str,
) -> AsyncIterator[World]:
    clock = FakeClock(T0)
    events = CapturingEmitter()
    key_path, public_line = engineer_key(tmp_path)
    inst = openssh_instrument
    policy: Any
    if policy_kind == "store":
        policy, eng, secret = store_policy(tmp_path, clock, events, public_line, inst)
    else:
        policy = FakePolicy(events=events)
        eng, secret = policy.add_engineer("alice", public_line)
        policy.instruments[inst.name] = InstrumentTarget(
            name=inst.name,
            hospital_id="h-1",
            gateway_id="gw-1",
            host=inst.host,
            ssh_port=inst.port,
            ports=(inst.port,),
            username=inst.username,
            credential=inst.client_private_key_pem,
            host_key_fingerprint=inst.host_key_fingerprint,
        )
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    ids = iter(f"s{n:04d}" for n in range(1, 10_000))
    door = await start_front_door(
        BrokerSettings(data_dir=tmp_path / "data"),
        policy,
        DirectConnector(),
        events,
        tmp_path / "recordings",
        host_key,
        ca=UserCA.generate(),
        options=front_door_options,
        clock=clock,
        ids=lambda: next(ids),
        host="127.0.0.1",
        port=0,
    )
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{door.port} {door.host_key_line}\n")
    askpass = tmp_path / "askpass"
    askpass.write_text(ASKPASS)
    askpass.chmod(0o755)
    w = World(
        door=door,
        policy=policy,
        clock=clock,
        events=events,
        tmp=tmp_path,
        key_path=key_path,
        public_line=public_line,
        engineer=eng,
        totp_secret=secret,
        known_hosts=known,
        askpass=askpass,
        instrument=inst.name,
        ssh_port=inst.port,
        data_dir=inst.data_dir,
    )
    try:
        yield w
    finally:
        await door.close()
        if policy_kind == "store":
            policy.close()


@pytest.fixture
def granted(world: World) -> World:
    """``world`` with a one-hour shell grant (no file transfer) for alice."""
    world.policy.grant(
        world.engineer,
        world.instrument,
        (world.ssh_port,),
        ends=world.clock.now + timedelta(hours=1),
    )
    return world


@pytest.fixture
def files_granted(world: World) -> World:
    """``world`` with a one-hour grant for alice that includes file transfer."""
    world.policy.grant(
        world.engineer,
        world.instrument,
        (world.ssh_port,),
        ends=world.clock.now + timedelta(hours=1),
        files=True,
    )
    return world


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A vendor service port on the instrument: echoes what it receives."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
