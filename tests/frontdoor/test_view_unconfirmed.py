"""Fail closed: a replica that cannot confirm its view of the database is current ends
its sessions (``view_unconfirmed``) and refuses new logins.

The change feed runs on a PostgreSQL of its own (a throwaway server), which the test
stops outright mid-session: the listening connection is lost and every re-read fails.
The bound here is 3 s (``confirm_s``; 10 s by default).  When the database is back,
logins work again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from broker.live.changes import ChangeFeed, watch_changes
from broker.store.db import Store
from tests.fixtures.postgres import ThrowawayPostgres
from tests.frontdoor.harness import World, open_shell, paramiko_client, read_until, run, shell_ready
from tests.support import poll

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]
CONFIRM_S = 3.0


@pytest.fixture
async def fed(granted: World) -> AsyncIterator[tuple[World, ThrowawayPostgres, ChangeFeed]]:
    pg = ThrowawayPostgres(crash_safe=True)  # it is killed, and its tables must survive
    url = pg.start()
    store = Store(url)
    feed = ChangeFeed(store, reread_s=0.5, confirm_s=CONFIRM_S)
    w = granted
    w.door.feed = feed  # the front door now asks the feed before every login
    tasks = [
        asyncio.create_task(feed.run()),
        asyncio.create_task(watch_changes(w.door.sessions, feed, w.door.db, w.clock)),
    ]
    await asyncio.wait_for(feed.ready.wait(), 20)
    try:
        yield w, pg, feed
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()
        pg.stop()


def _stop_now(pg: ThrowawayPostgres) -> None:
    """The database goes away at once (as a crashed server or a cut network)."""
    pg._run(str(pg.bin / "pg_ctl"), "-D", str(pg.data), "-m", "immediate", "-w", "stop")


async def test_a_replica_cut_off_from_its_database_ends_sessions_and_refuses_logins(
    fed: tuple[World, ThrowawayPostgres, ChangeFeed],
) -> None:
    w, pg, feed = fed
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    assert feed.current()
    cut = time.monotonic()
    await asyncio.to_thread(_stop_now, pg)
    await poll(chan.exit_status_ready, deadline_s=CONFIRM_S + 5)
    ended_after = time.monotonic() - cut
    out = await asyncio.to_thread(read_until, chan, b"session ended")
    assert b"view unconfirmed" in out
    t.close()
    print(f"FIGURE database cut to session end (bound {CONFIRM_S:g} s): {ended_after:.2f} s")
    assert CONFIRM_S - 1.0 <= ended_after <= CONFIRM_S + 2.0
    await poll(lambda: bool(w.events.of_type("session.ended")), 5)
    [terminated] = w.events.of_type("session.terminated")
    assert terminated.get("EventResultDetails") == "view_unconfirmed"
    assert w.events.of_type("session.ended")[0].get("EventResultDetails") == "view_unconfirmed"
    # a new login is refused while the view is unconfirmed (the policy itself would allow it)
    r = await run(w.ssh_argv(extra=(w.login(), "echo should-not-run")), w.env(), timeout=30)
    assert r.rc == 255 and b"should-not-run" not in r.out
    refused = [e for e in w.events.of_type("ssh.login") if e.get("EventResult") == "Failure"]
    assert refused and "cannot be confirmed" in str(refused[-1].get("EventResultDetails"))
    # the database is back: the view is confirmed again and logins work
    assert await asyncio.to_thread(pg._try_start)
    await poll(feed.current, 20)
    w.clock.advance(30)  # the next TOTP step: the earlier code may not be used twice
    ok = await run(w.ssh_argv(extra=(w.login(), "echo back")), w.env(), timeout=30)
    assert ok.rc == 0, ok.err
    assert ok.out == b"back\n"
