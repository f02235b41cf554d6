"""The front door answered by the real control plane: store, TOTP, grants, sealed credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import asyncssh
import pytest

from audit.testing import CapturingEmitter
from broker.access import totp
from broker.access.services import Services
from broker.assembly import store_grants_end
from broker.frontdoor.context import FrontDoorOptions
from broker.frontdoor.door import start_front_door
from broker.settings import BrokerSettings
from broker.store.db import Store
from broker.store.directory import StoreAccessPolicy
from broker.tunnel.connector import DirectConnector
from labsim.sshd import OpenSSHInstrument
from tests.control.conftest import T0, World, build_world, grant_for, make_context
from tests.frontdoor.harness import run
from tests.frontdoor.realstack import instrument_behind_gateway
from tests.support import FakeClock, poll

ASKPASS = "#!/bin/sh\nprintf '%s\\n' \"$HOSHU_TEST_CODE\"\n"


@pytest.fixture
def control(tmp_path: Path) -> Iterator[tuple[World, CapturingEmitter]]:
    events = CapturingEmitter()
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}", migrate=True)
    clock = FakeClock(T0)
    w = build_world(Services.build(make_context(store, events, clock)), clock)
    yield w, events
    store.close()


async def test_engineer_reaches_the_instrument_through_the_control_plane(
    control: tuple[World, CapturingEmitter],
    openssh_instrument: OpenSSHInstrument,
    tmp_path: Path,
) -> None:
    w, events = control
    inst = openssh_instrument
    key_path, secret = instrument_behind_gateway(w, inst, tmp_path)
    grant_id = grant_for(w, ["cobas-1"], ports=[inst.port])
    # certificates last until the engineer's grants end (the store's answer)
    assert store_grants_end(w.s)(w.users["eng"].id, w.clock()) == w.clock() + timedelta(hours=1)

    door = await start_front_door(
        BrokerSettings(data_dir=tmp_path / "data"),
        StoreAccessPolicy(w.s),
        DirectConnector(),
        events,
        tmp_path / "recordings",
        asyncssh.generate_private_key("ssh-ed25519"),
        options=FrontDoorOptions(watch_interval_s=0.1),
        clock=w.clock,
        host="127.0.0.1",
        port=0,
    )
    try:
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{door.port} {door.host_key_line}\n")
        askpass = tmp_path / "askpass"
        askpass.write_text(ASKPASS)
        askpass.chmod(0o755)
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(door.port),
            "-i",
            str(key_path),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "NumberOfPasswordPrompts=1",
            "eng+cobas-1@127.0.0.1",
        ]
        code = totp.code_at(secret, w.clock())
        env = {
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
            "HOSHU_TEST_CODE": code,
            "PATH": "/usr/bin:/bin",
        }
        r = await run([*argv, "echo from-the-analyzer"], env)
        assert r.rc == 0, r.err
        assert r.out == b"from-the-analyzer\n"
        # the control plane refuses the same code again
        r2 = await run([*argv, "true"], env)
        assert r2.rc == 255 and b"already used" in r2.err
        # a live session ends when the hospital revokes the grant
        w.clock.advance(30)
        env["HOSHU_TEST_CODE"] = totp.code_at(secret, w.clock())
        proc = await asyncio.create_subprocess_exec(
            *argv,
            "sleep 30",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await poll(lambda: len(door.sessions.list()) == 1, deadline_s=10)
        w.s.grants.revoke(w.actors["appr"], grant_id, "work done")
        await asyncio.wait_for(proc.wait(), 3)
        ended = [e for e in events.of_type("session.terminated")]
        assert ended and ended[0].get("EventResultDetails") == "grant_revoked"
        assert events.of_type("session.ended")[0].get("ActorUsername") == "eng"
    finally:
        await door.close()
