"""Held shell lines as rows in a real PostgreSQL, two replicas' boards on one database.

Replica a owns the line (:meth:`ClusterHolds.wait`); replica b lists and answers it
through :func:`broker.access.holds.answer`, the rule the API and the console use.
The first answer wins on both replicas (a second is a conflict); another hospital's
approver is refused and the line keeps waiting; the owner alone times a line out,
and an answer after that is a conflict, while an answer that reached the row just
before the owner's deadline stands; a session that ends marks its line; a survivor
marks a dead replica's lines, never when it does not beat itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from broker.access.errors import Conflict, PermissionDenied
from broker.access.holds import answer
from broker.access.ports import Actor
from broker.live.clusterholds import ClusterHolds
from broker.live.holds import HeldCommand
from broker.store.db import Store
from broker.store.tables import COMMAND_HOLDS, REPLICAS
from tests.fixtures.postgres import create_database
from tests.support import poll

pytestmark = [pytest.mark.postgres]
SATO = Actor("u-sato", "sato", "h-1", "hospital", frozenset({"approver"}))
TSUKI = Actor("u-tsuki", "tsuki", "h-2", "hospital", frozenset({"approver"}))


@pytest.fixture
def store(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    url = create_database(postgres_url, f"holdrows_{abs(hash(request.node.name)) % 10**9}")
    s = Store(url)
    try:
        yield s
    finally:
        s.close()


def now() -> datetime:
    return datetime.now(UTC)


def boards(store: Store, **kw: float) -> tuple[ClusterHolds, ClusterHolds]:
    a = ClusterHolds(store.engine, "a", clock=now, recheck_s=kw.get("recheck_s", 0.05))
    b = ClusterHolds(store.engine, "b", clock=now)
    return a, b


def held(command: str = "reboot", timeout_s: float = 30.0) -> HeldCommand:
    t = now()
    return HeldCommand(
        "s-1", "cobas-1", "h-1", "tanaka", command, "a test hold", r"\breboot",
        t, t + timedelta(seconds=timeout_s), user_id="u-tanaka",
    )  # fmt: skip


def state(store: Store, hold_id: str) -> str:
    with store.engine.connect() as conn:
        return str(
            conn.execute(
                sa.select(COMMAND_HOLDS.c.state).where(COMMAND_HOLDS.c.hold_id == hold_id)
            ).scalar_one()
        )


async def listed(board: ClusterHolds) -> list[str]:
    return [h.hold_id for h in await asyncio.to_thread(board.waiting)]


async def test_the_first_answer_on_any_replica_wins_and_reaches_the_owner(store: Store) -> None:
    a, b = boards(store)
    hold = held()
    waiting = asyncio.ensure_future(a.wait(hold, 30))
    await poll(lambda: listed(b), 10, "the line listed on b")
    [row] = await asyncio.to_thread(b.lookup, hold.hold_id)
    assert row.replica_id == "a" and row.user_id == "u-tanaka" and row.command == "reboot"
    # another hospital's approver, on b: refused, and the line keeps waiting
    found = await asyncio.to_thread(b.lookup, hold.hold_id)
    with pytest.raises(PermissionDenied):
        await asyncio.to_thread(answer, found, hold.hold_id, "allowed", TSUKI)
    assert state(store, hold.hold_id) == "waiting" and not waiting.done()
    t0 = time.monotonic()
    await asyncio.to_thread(answer, found, hold.hold_id, "allowed", SATO)
    assert await asyncio.wait_for(waiting, 5) == ("allowed", "sato")
    print(f"FIGURE owner re-read (no feed) saw b's answer {time.monotonic() - t0:.3f} s later")
    # a second answer, on either replica, is a conflict; the first stands
    for board in (a, b):
        with pytest.raises(Conflict):
            found = await asyncio.to_thread(board.lookup, hold.hold_id)
            await asyncio.to_thread(answer, found, hold.hold_id, "refused", SATO)
    assert state(store, hold.hold_id) == "allowed" and await listed(b) == []


async def test_only_the_owner_times_a_line_out_and_a_late_answer_is_a_conflict(
    store: Store,
) -> None:
    a, b = boards(store)
    hold = held(timeout_s=0.5)
    assert await a.wait(hold, 0.5) == ("timed_out", "")
    assert state(store, hold.hold_id) == "timed_out"
    found = await asyncio.to_thread(b.lookup, hold.hold_id)
    with pytest.raises(Conflict):
        await asyncio.to_thread(answer, found, hold.hold_id, "allowed", SATO)
    assert state(store, hold.hold_id) == "timed_out"

    # an answer that reached the row just before the owner's deadline stands
    late = held("reboot now", timeout_s=30)
    await asyncio.to_thread(a._insert, late)
    assert await asyncio.to_thread(b.answer_row, late.hold_id, "refused", "sato")
    assert await asyncio.to_thread(a._time_out, late.hold_id) == ("refused", "sato")


async def test_a_session_that_ends_marks_its_line(store: Store) -> None:
    a, b = boards(store)
    hold = held()
    waiting = asyncio.ensure_future(a.wait(hold, 30))
    await poll(lambda: listed(b), 10, "the line listed")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await poll(lambda: state(store, hold.hold_id) == "session_ended", 10, "the line marked")
    assert await listed(b) == []
    found = await asyncio.to_thread(b.lookup, hold.hold_id)
    with pytest.raises(Conflict):
        await asyncio.to_thread(answer, found, hold.hold_id, "allowed", SATO)
    a.close()


def beat(store: Store, replica: str, at: datetime) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.delete(REPLICAS).where(REPLICAS.c.replica_id == replica))
        conn.execute(
            sa.insert(REPLICAS).values(
                replica_id=replica,
                peer_host="127.0.0.1",
                peer_port=1,
                peer_key="",
                started_at=at,
                last_seen=at,
            )
        )


async def test_a_survivor_ends_a_dead_replicas_lines_only_while_it_beats(store: Store) -> None:
    a, b = boards(store)
    hold = held()
    await asyncio.to_thread(a._insert, hold)
    beat(store, "a", now() - timedelta(seconds=60))  # a stopped beating
    beat(store, "b", now() - timedelta(seconds=60))  # and b cannot beat either: cut off?
    assert await asyncio.to_thread(b.sweep) == 0
    assert state(store, hold.hold_id) == "waiting"
    beat(store, "b", now())
    assert await asyncio.to_thread(b.sweep) == 1
    assert state(store, hold.hold_id) == "session_ended" and await listed(b) == []
    # a replica restarting under a's id marks its own leftovers
    again = held("reboot again")
    await asyncio.to_thread(a._insert, again)
    assert await asyncio.to_thread(a.end_own_leftovers) == 1
    assert state(store, again.hold_id) == "session_ended"
