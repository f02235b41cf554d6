"""The tunnel registry in the database: heartbeats, epochs, dead replicas, pins.

The same tests run on SQLite (the single-replica default) and on a real
PostgreSQL server (the reference deployment).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.store.db import Store
from broker.tunnel.cluster import DEAD_AFTER_S, ClusterRegistry, PinConflict
from tests.fixtures.postgres import create_database
from tests.support import FakeClock

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA1111111111111111111111111111111111111111111 a"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2222222222222222222222222222222222222222222 b"
GW = "gw-1"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hoshu.db'}"
    else:
        admin = request.getfixturevalue("postgres_url")
        url = create_database(admin, f"replicas_{abs(hash(request.node.name)) % 10**9}")
    s = Store(url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))


def _pair(store: Store, clock: FakeClock) -> tuple[ClusterRegistry, ClusterRegistry]:
    a = ClusterRegistry(store.engine, "a", clock=clock)
    b = ClusterRegistry(store.engine, "b", clock=clock)
    a.register("10.0.0.1", 2224, KEY_A)
    b.register("10.0.0.2", 2224, KEY_B)
    return a, b


def test_another_replica_finds_the_holder_of_a_gateway_tunnel(
    store: Store, clock: FakeClock
) -> None:
    a, b = _pair(store, clock)
    b.tunnel_up(GW, "epoch-1")
    holders = a.holders(GW)
    assert [(h.replica_id, h.peer_host, h.peer_port, h.peer_key) for h in holders] == [
        ("b", "10.0.0.2", 2224, KEY_B)
    ]
    assert b.holders(GW) == []  # a replica never routes to itself
    assert a.holders("another-gateway") == []


def test_a_stale_heartbeat_or_close_cannot_overwrite_a_newer_connection(
    store: Store, clock: FakeClock
) -> None:
    """Connection 1's late beat and late close change nothing once connection 2 holds
    the row; beats only move forward."""
    a, b = _pair(store, clock)
    b.tunnel_up(GW, "epoch-1")
    assert b.tunnel_beat(GW, "epoch-1", 1)
    b.tunnel_up(GW, "epoch-2")  # the gateway reconnected: a newer connection
    assert not b.tunnel_beat(GW, "epoch-1", 2)  # the old connection's late heartbeat
    assert not b.tunnel_down(GW, "epoch-1")  # ... and its late close
    assert [h.replica_id for h in a.holders(GW)] == ["b"]
    assert b.tunnel_beat(GW, "epoch-2", 5)
    assert not b.tunnel_beat(GW, "epoch-2", 4)  # an out-of-order beat does not regress
    assert b.tunnel_down(GW, "epoch-2")
    assert a.holders(GW) == []


def test_a_replica_whose_heartbeat_is_older_than_the_bound_counts_as_gone(
    store: Store, clock: FakeClock
) -> None:
    a, b = _pair(store, clock)
    b.tunnel_up(GW, "e")
    clock.advance(DEAD_AFTER_S - 1)
    a.beat()
    assert [h.replica_id for h in a.holders(GW)] == ["b"]
    clock.advance(2)  # b missed three beats: dead, though its rows are still there
    assert a.holders(GW) == []
    assert [r.replica_id for r in a.live_replicas()] == ["a"]
    b.beat()  # the replica itself alive again is not enough: its tunnel row is stale too
    assert a.holders(GW) == []
    assert b.tunnel_beat(GW, "e", 1)
    assert [h.replica_id for h in a.holders(GW)] == ["b"]


def test_a_replica_that_leaves_is_routed_to_no_more(store: Store, clock: FakeClock) -> None:
    a, b = _pair(store, clock)
    b.tunnel_up(GW, "e")
    b.deregister()
    assert a.holders(GW) == []
    assert b.tunnel_beat(GW, "e", 1) is False
    pinned = a.replica("b")
    assert pinned is not None and pinned.peer_key == KEY_B  # the pin stays


def test_the_first_registration_pins_the_peer_key(store: Store, clock: FakeClock) -> None:
    """Another process claiming replica b with another key is refused; nothing changes."""
    _a, b = _pair(store, clock)
    b.register("10.0.0.2", 2224, KEY_B)  # the same key again (a restart) is fine
    impostor = ClusterRegistry(store.engine, "b", clock=clock)
    with pytest.raises(PinConflict, match="pinned to another peer key"):
        impostor.check_pin(KEY_A)  # what hoshu serve asks before it listens
    impostor.check_pin(KEY_B)
    with pytest.raises(PinConflict, match="pinned to another peer key"):
        impostor.register("10.0.0.66", 2224, KEY_A)
    row = b.replica("b")
    assert row is not None and (row.peer_host, row.peer_key) == ("10.0.0.2", KEY_B)
