"""Half-open logins: they cannot pile up from one address, and others are not affected."""

from __future__ import annotations

import asyncio

import pytest

from broker.frontdoor.context import FrontDoorOptions
from tests.frontdoor.harness import World, run
from tests.support import poll


@pytest.fixture
def front_door_options() -> FrontDoorOptions:
    # a long login timeout, so only the per-source cap can explain a prompt hang-up
    return FrontDoorOptions(login_timeout_s=30.0, watch_interval_s=0.1, max_pending_per_source=3)


async def _until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def test_half_open_login_flood_is_cut_off_per_source(granted: World) -> None:
    w = granted
    held = [await asyncio.open_connection("127.0.0.1", w.door.port) for _ in range(3)]
    reader, writer = await asyncio.open_connection("127.0.0.1", w.door.port)
    await asyncio.wait_for(_until_closed(reader), 5)  # dropped at once, not after 30 s
    writer.close()
    for _, wr in held:
        wr.close()
    # the held ones are gone once the broker has seen them close
    await poll(lambda: len(w.events.of_type("ssh.login")) >= 4, what="the held connections ended")
    r = await run(w.ssh_argv(extra=(w.login(), "echo after-the-flood")), w.env())
    assert r.rc == 0 and r.out == b"after-the-flood\n"
    reasons = [e.get("EventResultDetails") for e in w.events.of_type("ssh.login")]
    assert "too many connections authenticating from this address" in reasons
