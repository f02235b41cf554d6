"""A heartbeat round of thousands of tunnels: a few statements, the same guards as one beat.

The tunnel registry's batched writes (:meth:`ClusterRegistry.tunnel_beats`,
:meth:`ClusterRegistry.tunnels_up`) and :meth:`PeerLink.beat_round` over them, on
SQLite and on a real PostgreSQL server.  Statements are counted on the engine
(``before_cursor_execute``), transactions by their commits.  The peer link's tunnels
are entries of a real :class:`TunnelRegistry` without a connection behind them: a
heartbeat round reads only which gateway and epoch each one holds.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncssh
import pytest
import sqlalchemy as sa

from audit.testing import CapturingEmitter
from broker.store.db import Store
from broker.store.tables import GATEWAY_TUNNELS
from broker.tunnel.cluster import BATCH, DEAD_AFTER_S, ClusterRegistry
from broker.tunnel.endpoint import TunnelInfo, TunnelRegistry
from broker.tunnel.peer import PeerLink, PeerSettings
from tests.fixtures.postgres import create_database, drop_database
from tests.support import FakeClock, poll
from wire.models import GatewayRecord
from wire.names import Mode

pytestmark = pytest.mark.timeout(120)

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA1111111111111111111111111111111111111111111 a"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2222222222222222222222222222222222222222222 b"
KEY_C = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC3333333333333333333333333333333333333333333 c"
N = 3000
CHUNKS = math.ceil(N / BATCH)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    admin, name = "", f"beats_{secrets.token_hex(6)}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hoshu.db'}"
    else:
        admin = request.getfixturevalue("postgres_url")
        url = create_database(admin, name)
    s = Store(url)
    try:
        yield s
    finally:
        s.close()
        if admin:
            drop_database(admin, name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))


@dataclass
class Tally:
    """What reached the database: each statement naming the tunnel table (with its
    parameters), each write of either cluster table in order, and the commits."""

    statements: list[tuple[str, str]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # the table each write named
    commits: int = 0

    def writes(self, verb: str) -> list[str]:
        """The statements that ``verb`` (UPDATE, INSERT, DELETE) the tunnel table."""
        return [s for s, _ in self.statements if f"{verb} GATEWAY_TUNNELS" in s.upper()]

    def claims_naming(self, epoch: str) -> list[str]:
        """The claims (a row set to an epoch, or inserted) that name ``epoch``."""
        return [
            s
            for s, params in self.statements
            if epoch in params and ("SET epoch" in s or "INSERT INTO" in s.upper())
        ]


@contextmanager
def tally(engine: sa.Engine) -> Iterator[Tally]:
    t = Tally()

    def on_execute(
        _conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: bool
    ) -> None:
        if "gateway_tunnels" in statement:
            t.statements.append((statement, repr(params)))
            t.tables.append("gateway_tunnels")
        elif "broker_replicas" in statement:
            t.tables.append("broker_replicas")

    def on_commit(_conn: Any) -> None:
        t.commits += 1

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", on_commit)
    try:
        yield t
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
        sa.event.remove(engine, "commit", on_commit)


def _gw(i: int) -> str:
    return f"gw-{i:04d}"


def _rows(store: Store) -> dict[tuple[str, str], Any]:
    """(gateway, replica) -> the tunnel row."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(GATEWAY_TUNNELS)).all()
    return {(r.gateway_id, r.replica_id): r for r in rows}


def _registries(store: Store, clock: FakeClock) -> tuple[ClusterRegistry, ...]:
    out: list[ClusterRegistry] = []
    for rid, key in (("a", KEY_A), ("b", KEY_B), ("c", KEY_C)):
        reg = ClusterRegistry(store.engine, rid, clock=clock)
        reg.register(f"10.0.0.{len(out) + 1}", 2224, key)
        out.append(reg)
    return tuple(out)


def test_one_round_of_3000_tunnels_refreshes_every_row_in_a_statement_per_batch(
    store: Store, clock: FakeClock
) -> None:
    """Claims and beats of 3,000 tunnels take one transaction per 500 rows; every row's
    beat and last_seen move, so the tunnels stay routable past the 15 s bound."""
    a, b, _c = _registries(store, clock)
    claims = [(_gw(i), f"e-{i}") for i in range(N)]
    with tally(store.engine) as t:
        b.tunnels_up(claims)
    assert len(t.statements) == 2 * CHUNKS
    assert len(t.writes("UPDATE")) == CHUNKS  # none found: each chunk one multi-row INSERT
    assert len(t.writes("INSERT INTO")) == CHUNKS
    assert t.commits == CHUNKS
    assert len(_rows(store)) == N

    clock.advance(10)
    with tally(store.engine) as t:
        done = b.tunnel_beats([(gw, epoch, 1) for gw, epoch in claims])
    assert done == set(claims)
    assert len(t.statements) == CHUNKS and len(t.writes("UPDATE")) == CHUNKS
    assert t.commits == CHUNKS
    rows = _rows(store)
    assert {(r.beat, r.last_seen) for r in rows.values()} == {(1, clock.now)}

    clock.advance(DEAD_AFTER_S - 5)  # 20 s after the claims, 10 s after the round
    a.beat()
    b.beat()
    for i in (0, N // 2, N - 1):
        assert [h.replica_id for h in a.holders(_gw(i))] == ["b"]
    clock.advance(6)  # no further round: now they are gone
    a.beat()
    b.beat()
    assert a.holders(_gw(0)) == []


def test_a_round_leaves_newer_epochs_other_replicas_and_newer_beats_untouched(
    store: Store, clock: FakeClock
) -> None:
    """Within one batch, each row keeps the guard of a single beat: a row of another
    epoch, another replica's row, a gone row and a stored beat not lower than the
    round's are left exactly as they were; nothing is inserted."""
    _a, b, c = _registries(store, clock)
    claims = [(_gw(i), f"e-{i}") for i in range(N)]
    b.tunnels_up(claims)
    assert b.tunnel_beats([(gw, e, 5) for gw, e in claims]) == set(claims)
    clock.advance(3)
    b.tunnel_up(_gw(10), "newer")  # the gateway reconnected to b
    assert b.tunnel_down(_gw(20), "e-20")  # ... moved to replica c
    c.tunnel_up(_gw(20), "c-epoch")
    assert b.tunnel_down(_gw(30), "e-30")  # ... went away
    before = _rows(store)
    clock.advance(5)

    stale = {_gw(40): 3, _gw(50): 5}  # a late beat of an older round; the same beat again
    beats = [(gw, e, stale.get(gw, 6)) for gw, e in claims]
    with tally(store.engine) as t:
        done = b.tunnel_beats(beats)
    untouched = {_gw(i) for i in (10, 20, 30, 40, 50)}
    assert done == {(gw, e) for gw, e in claims if gw not in untouched}
    assert t.writes("INSERT INTO") == [] and len(t.statements) == CHUNKS

    after = _rows(store)
    assert set(after) == set(before)  # no row gained or lost
    for gw in untouched:
        for rid in ("b", "c"):
            assert after.get((gw, rid)) == before.get((gw, rid)), (gw, rid)
    assert after[(_gw(10), "b")].epoch == "newer"
    assert after[(_gw(20), "c")].epoch == "c-epoch"
    assert after[(_gw(40), "b")].beat == 5  # the lower beat did not move it back
    for gw, _ in claims:
        if gw not in untouched:
            assert (after[(gw, "b")].beat, after[(gw, "b")].last_seen) == (6, clock.now)

    # one tunnel twice in a batch: its newer beat counts, as one after the other
    assert b.tunnel_beats([(_gw(0), "e-0", 9), (_gw(0), "e-0", 7)]) == {(_gw(0), "e-0")}
    assert _rows(store)[(_gw(0), "b")].beat == 9


def _info(gw: str, epoch: str, clock: FakeClock) -> TunnelInfo:
    # no connection behind it: a heartbeat round reads only the gateway and the epoch
    return TunnelInfo(
        record=GatewayRecord(gw, "hosp01", gw),
        conn=cast(asyncssh.SSHClientConnection, None),
        since=clock.now,
        mode=Mode.ALWAYS,
        gateway_version="test",
        key_fingerprint="",
        peer="127.0.0.1",
        conversation=cast(Any, None),
        epoch=epoch,
    )


class Hooked(ClusterRegistry):
    """The real registry; ``during_beats`` runs once, on the writer thread, right after
    a batch of tunnel beats (something that happens on the event loop meanwhile)."""

    during_beats: Callable[[], None] | None = None

    def tunnel_beats(self, beats: Sequence[tuple[str, str, int]]) -> set[tuple[str, str]]:
        done = super().tunnel_beats(beats)
        hook, self.during_beats = self.during_beats, None
        if hook is not None:
            hook()
        return done


async def _link(store: Store, clock: FakeClock, tunnels: TunnelRegistry) -> PeerLink:
    cluster = Hooked(store.engine, "b", clock=clock)
    link = PeerLink(
        PeerSettings(port=0),
        asyncssh.generate_private_key("ssh-ed25519"),
        cluster,
        tunnels,
        CapturingEmitter(),
        clock,
    )
    await asyncio.to_thread(cluster.register, "10.0.0.2", 2224, KEY_B)
    return link


async def test_the_peer_links_round_beats_3000_tunnels_and_claims_lost_rows_again(
    store: Store, clock: FakeClock
) -> None:
    """The replica's own beat comes first, then a statement per 500 tunnels; a row that
    is gone or names another epoch is claimed again for the tunnel this replica holds
    (beat 0), in a few statements too, and beats on from there."""
    tunnels = TunnelRegistry()
    infos = [_info(_gw(i), f"e-{i}", clock) for i in range(N)]
    for info in infos:  # up before the link watches: its first round claims them
        await tunnels.add(info)
    link = await _link(store, clock, tunnels)
    try:
        with tally(store.engine) as t:
            await link.beat_round()
        assert len(t.writes("INSERT INTO")) == CHUNKS
        rows = _rows(store)
        assert {(gw, r.epoch, r.beat) for (gw, _), r in rows.items()} == {
            (i.record.gateway_id, i.epoch, 0) for i in infos
        }

        clock.advance(5)
        with tally(store.engine) as t:
            await link.beat_round()
        assert t.tables == ["broker_replicas"] + ["gateway_tunnels"] * CHUNKS
        assert t.commits == 1 + CHUNKS and t.writes("INSERT INTO") == []
        assert {(r.beat, r.last_seen) for r in _rows(store).values()} == {(1, clock.now)}

        cluster = link.cluster
        await asyncio.to_thread(cluster.tunnel_down, _gw(7), "e-7")  # the row was lost
        await asyncio.to_thread(cluster.tunnel_up, _gw(8), "someone-else")
        clock.advance(5)
        with tally(store.engine) as t:
            await link.beat_round()
        assert len(t.writes("UPDATE")) == CHUNKS + 1  # the beats, then one claim update
        assert len(t.writes("INSERT INTO")) == 1
        rows = _rows(store)
        for gw, epoch in ((_gw(7), "e-7"), (_gw(8), "e-8")):
            row = rows[(gw, "b")]
            assert (row.epoch, row.beat, row.connected_at) == (epoch, 0, clock.now)
        assert rows[(_gw(9), "b")].beat == 2

        clock.advance(5)
        await link.beat_round()
        rows = _rows(store)
        assert (rows[(_gw(7), "b")].beat, rows[(_gw(8), "b")].beat) == (1, 1)
        assert rows[(_gw(9), "b")].beat == 3
    finally:
        await link.close()


async def test_a_tunnel_replaced_during_the_round_keeps_the_newer_connections_row(
    store: Store, clock: FakeClock
) -> None:
    """The gateway's tunnel drops and redials while the round's beats are written: the
    old connection's failed beat does not claim the row back for it, the new
    connection's claim stands and beats on."""
    tunnels = TunnelRegistry()
    old, new = _info(_gw(1), "old-epoch", clock), _info(_gw(1), "new-epoch", clock)
    others = [_info(_gw(i), f"e-{i}", clock) for i in range(2, 600)]
    link = await _link(store, clock, tunnels)
    try:
        for info in [old, *others]:
            await tunnels.add(info)
        await link.beat_round()  # claimed by the watcher, then a first beat
        assert _rows(store)[(_gw(1), "b")].epoch == "old-epoch"
        await asyncio.to_thread(link.cluster.tunnel_down, _gw(1), "old-epoch")  # row lost

        loop = asyncio.get_running_loop()

        async def redial() -> None:
            await tunnels.remove(old)
            await tunnels.add(new)

        def redial_meanwhile() -> None:  # on the writer thread, the old beat just failed
            asyncio.run_coroutine_threadsafe(redial(), loop).result(timeout=10)

        cast(Hooked, link.cluster).during_beats = redial_meanwhile
        clock.advance(5)
        with tally(store.engine) as t:
            await link.beat_round()
            await poll(
                lambda: _rows(store).get((_gw(1), "b")) is not None,
                what="the new connection's claim",
            )
            await link.beat_round()
        assert t.claims_naming("old-epoch") == []
        assert len(t.claims_naming("new-epoch")) == 2  # the watcher's claim: update, insert
        row = _rows(store)[(_gw(1), "b")]
        assert (row.epoch, row.beat) == ("new-epoch", 1)
    finally:
        await link.close()
