"""The link between replicas, in one process: a real gateway agent tunnelled to replica B,
replica A reaching its instrument through B over SSH with pinned keys (SQLite registry)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, cast

import asyncssh
import pytest
import sqlalchemy as sa

from audit.testing import CapturingEmitter
from broker.access.door import InstrumentTarget
from broker.store.db import Store
from broker.store.tables import REPLICAS
from broker.tunnel.cluster import ClusterRegistry
from broker.tunnel.connector import ByteReader, Origin, TunnelConnector
from broker.tunnel.endpoint import TunnelRegistry
from broker.tunnel.errors import GatewayOffline
from broker.tunnel.peer import PeerLink, PeerSettings
from tests.gateway.harness import GATEWAY_ID, Lab, lab
from tests.support import poll
from wire import Originator

pytestmark = pytest.mark.timeout(60)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Pair:
    lab: Lab
    store: Store
    a: PeerLink  # holds no tunnel
    b: PeerLink  # holds the gateway's tunnel (the lab's listener)
    a_events: CapturingEmitter


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    store = Store(f"sqlite:///{tmp_path / 'hoshu.db'}")
    (tmp_path / "gw").mkdir()
    async with lab(tmp_path / "gw") as L:
        a_events = CapturingEmitter()
        a = PeerLink(
            PeerSettings(port=0),
            asyncssh.generate_private_key("ssh-ed25519"),
            ClusterRegistry(store.engine, "a", clock=_now),
            TunnelRegistry(),
            a_events,
            _now,
        )
        b = PeerLink(
            PeerSettings(port=0),
            asyncssh.generate_private_key("ssh-ed25519"),
            ClusterRegistry(store.engine, "b", clock=_now),
            L.listener.registry,
            L.emitter,
            _now,
        )
        await a.start()
        await b.start()
        await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 10)
        await poll(
            lambda: bool(a.cluster.holders(GATEWAY_ID)),
            deadline_s=5,
            what="replica b's tunnel claim in the database",
        )
        try:
            yield Pair(L, store, a, b, a_events)
        finally:
            await a.close()
            await b.close()
            store.close()


class _ExactReader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


async def _exactly(reader: ByteReader, n: int) -> bytes:
    """``n`` bytes, or IncompleteReadError: both connectors hand back a stream reader that
    has ``readexactly``, though ``ByteReader`` promises only ``read``."""
    return await cast(_ExactReader, reader).readexactly(n)


def _target(L: Lab) -> InstrumentTarget:
    return InstrumentTarget(
        name="cobas-c503-1",
        hospital_id="hosp01",
        gateway_id=GATEWAY_ID,
        host="10.99.0.1",
        ssh_port=22,
        ports=(L.echo.port,),
        username="service",
        credential="unused",
    )


async def test_a_replica_without_the_tunnel_reaches_the_instrument_through_the_holder(
    pair: Pair,
) -> None:
    """Bytes go A -> B -> gateway -> instrument and back; the gateway's audit copy names
    the engineer and the session, as on a local tunnel."""
    L = pair.lab
    connector = TunnelConnector(TunnelRegistry(), pair.a)  # A's own registry: empty
    reader, writer = await connector.open_tcp(_target(L), L.echo.port, Origin("sess-42", "alice"))
    writer.write(b"hello over two replicas")
    assert await asyncio.wait_for(_exactly(reader, 23), 10) == b"hello over two replicas"
    writer.close()
    await poll(
        lambda: bool(L.emitter.of_type("gateway.channel_opened")),
        deadline_s=5,
        what="the gateway's channel_opened event",
    )
    opened = L.emitter.of_type("gateway.channel_opened")[0]
    assert opened.get("ActorUsername") == "alice"
    assert pair.a_events.of_type("replica.peer_refused") == []


async def test_the_gateway_allowlist_still_decides_through_a_peer(pair: Pair) -> None:
    L = pair.lab
    connector = TunnelConnector(TunnelRegistry(), pair.a)
    with pytest.raises(Exception, match="refused"):
        await connector.open_tcp(_target(L), 1, Origin("sess-43", "alice"))


async def test_a_holder_whose_key_differs_from_its_pin_is_refused(pair: Pair) -> None:
    """Fail closed: B's row pins another key, so A refuses to forward and audits it."""
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    with pair.store.engine.begin() as conn:
        conn.execute(sa.update(REPLICAS).where(REPLICAS.c.replica_id == "b").values(peer_key=other))
    with pytest.raises(GatewayOffline, match="not its pinned key"):
        await pair.a.route(GATEWAY_ID, Originator("sess-44", "alice"))
    refused = pair.a_events.of_type("replica.peer_refused")
    assert [e.details["replica"] for e in refused] == ["b"]


async def test_a_holder_with_no_pin_is_refused(pair: Pair) -> None:
    with pair.store.engine.begin() as conn:
        conn.execute(sa.update(REPLICAS).where(REPLICAS.c.replica_id == "b").values(peer_key=""))
    with pytest.raises(GatewayOffline, match="no pinned peer key"):
        await pair.a.route(GATEWAY_ID, Originator("sess-45", "alice"))
    assert pair.a_events.of_type("replica.peer_refused")


async def test_a_connecting_replica_whose_client_key_is_not_its_pin_is_refused(pair: Pair) -> None:
    """The holder checks the caller too: A's row pins another key, B refuses A's login."""
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    with pair.store.engine.begin() as conn:
        conn.execute(sa.update(REPLICAS).where(REPLICAS.c.replica_id == "a").values(peer_key=other))
    with pytest.raises(GatewayOffline, match="refused this replica's peer key"):
        await pair.a.route(GATEWAY_ID, Originator("sess-46", "alice"))
    refused = pair.lab.emitter.of_type("replica.peer_refused")  # written by B
    assert [e.details["replica"] for e in refused] == ["a"]


async def test_a_large_transfer_through_the_peer_arrives_whole_and_in_order(pair: Pair) -> None:
    """2 MiB each way through A -> B -> gateway -> echo: the splice keeps order and
    flow control.  Prints the round-trip time of small messages, local vs via a peer."""
    L = pair.lab
    local = TunnelConnector(L.listener.registry)
    peered = TunnelConnector(TunnelRegistry(), pair.a)
    figures = {}
    for name, connector in (("local", local), ("peer", peered)):
        reader, writer = await connector.open_tcp(
            _target(L), L.echo.port, Origin("sess-50", "alice")
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(200):
            writer.write(b"x" * 64)
            await asyncio.wait_for(_exactly(reader, 64), 5)
        figures[name] = (loop.time() - started) / 200 * 1000
        if name == "peer":
            blob = bytes(range(256)) * 4096 * 2  # 2 MiB
            started = loop.time()
            writer.write(blob)
            got = await asyncio.wait_for(_exactly(reader, len(blob)), 30)
            figures["peer_mib_s"] = 2 / (loop.time() - started)
            assert got == blob
        writer.close()
    print(
        f"FIGURE round trip 64 B: local tunnel {figures['local']:.2f} ms, through a "
        f"peer {figures['peer']:.2f} ms; echo throughput through a peer "
        f"{figures['peer_mib_s']:.1f} MiB/s"
    )


async def test_a_draining_replica_is_routed_to_no_more(pair: Pair) -> None:
    """On SIGTERM the holder leaves first: its claims go, so the others stop routing
    there (the gateway's other tunnels carry on) and it claims nothing new."""
    await pair.b.leave()
    assert pair.a.cluster.holders(GATEWAY_ID) == []
    with pytest.raises(GatewayOffline, match="offline"):
        await TunnelConnector(TunnelRegistry(), pair.a).open_tcp(
            _target(pair.lab), pair.lab.echo.port, Origin("sess-60", "alice")
        )
