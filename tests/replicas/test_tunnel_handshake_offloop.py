"""The gateway key look-up of a tunnel handshake runs off the event loop.

A real tunnel endpoint with the database pool (``DbCalls``) and a real gateway agent
whose tunnel carries a running session (an echo through it).  The look-up of one
gateway's key waits on a real PostgreSQL row lock another transaction holds.  While
it waits: the running session's echo keeps answering promptly, another gateway's
handshake completes, and the waiting gateway is not admitted; once the lock goes it
is.  A gateway whose key is not enrolled is refused (``gateway.refused``) before the
broker offers its key: the gateway's SSH server never sees a public-key attempt.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
import sqlalchemy as sa

from broker.live.changes import DbCalls
from broker.tunnel.endpoint import TunnelSettings, start_tunnel_listener
from tests.fixtures.postgres import create_database
from tests.gateway.harness import GATEWAY_ID, HOSPITAL_ID, MemoryDirectory, lab
from wire import GatewayRecord

pytestmark = [pytest.mark.postgres]
LOCK_S = 2.5  # how long the slow gateway's look-up waits on the lock


class LockedDirectory:
    """The directory, whose look-up of one key first reads a row under ``FOR UPDATE``
    in PostgreSQL (a lock another transaction holds makes it wait)."""

    def __init__(self, inner: MemoryDirectory, engine: sa.Engine, slow_key: str) -> None:
        self.inner, self.engine, self.slow_key = inner, engine, slow_key.split()[:2]
        self.waiting = threading.Event()
        self.on_threads: set[str] = set()

    def gateway_for_key(self, openssh_public_key: str) -> GatewayRecord | None:
        self.on_threads.add(threading.current_thread().name)
        if openssh_public_key.split()[:2] == self.slow_key:
            self.waiting.set()
            with self.engine.begin() as conn:
                conn.execute(sa.text("SELECT id FROM gate WHERE id = 1 FOR UPDATE"))
        return self.inner.gateway_for_key(openssh_public_key)

    def windows_for(self, gateway_id: str, now: Any) -> Any:
        return self.inner.windows_for(gateway_id, now)

    def record_inventory(self, gateway_id: str, instruments: Any) -> None:
        self.inner.record_inventory(gateway_id, instruments)


class GatewaySide(asyncssh.SSHServer):
    """A gateway's SSH server end, noting every public key the broker offers."""

    offered: list[str]

    def __init__(self, offered: list[str]) -> None:
        self.offered = offered

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self.offered.append(username)
        return True

    def public_key_auth_supported(self) -> bool:
        return True


async def dial(port: int, key: asyncssh.SSHKey, offered: list[str]) -> asyncssh.SSHServerConnection:
    """A gateway dialling the tunnel endpoint (SSH server over the connection it opens)."""
    return await asyncssh.connect_reverse(
        "127.0.0.1",
        port,
        server_factory=lambda: GatewaySide(offered),
        server_host_keys=[key],
        login_timeout=20,
    )


@pytest.fixture
def engine(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    url = create_database(postgres_url, f"tlock_{abs(hash(request.node.name)) % 10**9}")
    e = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with e.begin() as conn:
        conn.execute(sa.text("CREATE TABLE gate (id int PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO gate VALUES (1)"))
    yield e
    e.dispose()


async def test_a_slow_key_lookup_stalls_neither_other_handshakes_nor_a_running_session(
    tmp_path: Path, engine: sa.Engine
) -> None:
    slow_key = asyncssh.generate_private_key("ssh-ed25519")
    other_key = asyncssh.generate_private_key("ssh-ed25519")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    calls = DbCalls(2)
    async with lab(tmp_path) as L:
        for key, gid in ((slow_key, "gw-slow"), (other_key, "gw-other")):
            L.directory.keys[key.export_public_key().decode()] = GatewayRecord(
                gid, HOSPITAL_ID, gid
            )
        locked = LockedDirectory(L.directory, engine, slow_key.export_public_key().decode())
        port = L.listener.port
        await L.listener.close()
        L.listener = await start_tunnel_listener(
            TunnelSettings(port=port, heartbeat_s=1, login_timeout_s=10),
            L.broker_key,
            locked,
            L.emitter,
            offload=calls,
        )
        await L.start_agent()
        await L.listener.registry.wait_for(GATEWAY_ID, 15)
        tunnel = L.listener.registry.tunnel(GATEWAY_ID, "s-echo", "tanaka")
        assert tunnel is not None
        reader, writer = await tunnel.open_connection("127.0.0.1", L.echo.port)

        async def echo() -> float:
            started = time.monotonic()
            writer.write(b"ping\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
            return time.monotonic() - started

        await echo()
        holder = engine.connect()
        tx = holder.begin()
        holder.execute(sa.text("SELECT id FROM gate WHERE id = 1 FOR UPDATE"))
        offered_slow: list[str] = []
        try:
            slow = asyncio.ensure_future(dial(port, slow_key, offered_slow))
            await asyncio.to_thread(locked.waiting.wait, 10)  # its look-up waits on the lock
            locked_at = time.monotonic()
            rtts = []
            offered_other: list[str] = []
            other = asyncio.ensure_future(dial(port, other_key, offered_other))
            while time.monotonic() - locked_at < LOCK_S:
                rtts.append(await echo())
                await asyncio.sleep(0.05)
            assert other.done() and not other.exception(), "another gateway's handshake stalled"
            other_conn = other.result()
            assert set(offered_other) == {"hoshu-broker"}
            assert not slow.done() and offered_slow == []  # not admitted while unanswered
        finally:
            tx.rollback()
            holder.close()
        slow_conn = await asyncio.wait_for(slow, 15)  # the answer came: admitted
        waited = time.monotonic() - locked_at
        assert set(offered_slow) == {"hoshu-broker"}
        print(
            f"FIGURE while one gateway's key look-up waited {waited:.1f} s on a row lock: "
            f"{len(rtts)} echoes through a running tunnel, max {max(rtts) * 1000:.0f} ms; "
            f"another gateway's handshake done meanwhile"
        )
        assert max(rtts) < 0.5
        assert all(t.startswith("hoshu-db") for t in locked.on_threads), locked.on_threads

        # an unknown key: refused, and the broker never offered its own key
        offered_stranger: list[str] = []
        with pytest.raises((asyncssh.Error, OSError)):
            await asyncio.wait_for(dial(port, stranger, offered_stranger), 15)
        assert offered_stranger == []
        refused = L.emitter.of_type("gateway.refused")
        assert refused and refused[-1].details["key_fingerprint"] == stranger.get_fingerprint()
        for c in (other_conn, slow_conn):
            c.close()
        writer.close()
    calls.close()
