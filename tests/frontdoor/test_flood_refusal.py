"""A sign-in refused by the flood guard tells stock OpenSSH why, in words."""

from __future__ import annotations

import asyncio

import pytest

from broker.frontdoor.context import FrontDoorOptions
from tests.frontdoor.harness import World, run
from tests.support import poll


@pytest.fixture
def front_door_options() -> FrontDoorOptions:
    return FrontDoorOptions(login_timeout_s=30.0, watch_interval_s=0.1, max_pending_per_source=2)


async def test_stock_ssh_beyond_the_flood_guard_reads_the_reason(granted: World) -> None:
    w = granted
    held = [await asyncio.open_connection("127.0.0.1", w.door.port) for _ in range(2)]
    try:
        # the identification string arrives first, so the refusal is a proper SSH packet
        reader, writer = await asyncio.open_connection("127.0.0.1", w.door.port)
        first = await asyncio.wait_for(reader.readline(), 5)
        assert first.startswith(b"SSH-2.0-")
        writer.close()
        r = await run(w.ssh_argv(batch=True, extra=(w.login(), "true")), w.env(), timeout=15)
    finally:
        for _, wr in held:
            wr.close()
    err = r.err.decode(errors="replace")
    assert r.rc == 255
    assert "too many sign-ins in progress from your address; try again shortly" in err, err
    assert "banner line contains invalid characters" not in err
    why = "too many connections authenticating from this address"
    await poll(
        lambda: [e for e in w.events.of_type("ssh.login") if e.get("EventResultDetails") == why],
        what="the refusal's ssh.login event",
    )
    # the address signs in again once the held sign-ins are gone
    await poll(lambda: len(w.events.of_type("ssh.login")) >= 4, what="the held connections ended")
    r = await run(w.ssh_argv(extra=(w.login(), "echo after")), w.env())
    assert r.rc == 0 and r.out == b"after\n"
