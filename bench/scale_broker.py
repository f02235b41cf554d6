"""A broker process holding gateway tunnels: ``python -m bench.scale_broker``.

It accepts gateways with ``asyncssh.listen_reverse`` (the broker is the SSH
*client* of each reverse connection), trusts a gateway only if its host key
is one of the enrolled keys (a set lookup, as a directory cache would be),
and keeps one connection per gateway, idle.  This is the minimal reverse
listener the scale figures are measured with while the broker's own tunnel
registry is not used here; the per-connection cost is asyncssh's.

With ``--real WORKDIR`` the broker is hoshu's own tunnel endpoint instead
(:func:`broker.tunnel.endpoint.start_tunnel_listener` and its ``TunnelRegistry``:
control channel, heartbeats, inventory, audit events into a signed
hash-chained log), with an in-memory directory of the enrolled gateway keys; with
``--store URL`` as well, the directory is the broker's own over its store
(:class:`broker.store.directory.StoreGatewayDirectory`, SQLite or PostgreSQL, the
calls off the loop on a :class:`broker.live.changes.DbCalls` pool as ``hoshu serve``
runs them): each gateway is enrolled there with an enrolment token of its hospital
(20 gateways a hospital), so a login looks its key up in the store, the hello writes
its inventory, and the sweeps read revocations and windows from the store.

Commands on stdin, one JSON answer per line on stdout:
``count`` -> ``{"connected": n}``;
``opens K C`` -> K ``direct-tcpip`` channel opens (C at a time) to random
connected gateways, each reading the first byte of the instrument's reply ->
``{"opens": K, "errors": e, "seconds": s}``; ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

from bench.scale_gateways import broker_key, gateway_key, raise_nofile

OPEN_TIMEOUT = 10.0
log = logging.getLogger("bench.scale_broker")
OPENS_DEADLINE = 60.0


class Broker:
    def __init__(self, trusted: set[bytes], target_port: int) -> None:
        self.trusted = trusted
        self.target_port = target_port
        self.conns: dict[int, asyncssh.SSHClientConnection] = {}

    def client_factory(self) -> asyncssh.SSHClient:
        broker = self

        class TunnelClient(asyncssh.SSHClient):
            def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
                self._conn = conn

            def validate_host_public_key(
                self, host: str, addr: str, port: int, key: asyncssh.SSHKey
            ) -> bool:
                """Only enrolled gateway keys are accepted; anything else is refused."""
                return bytes(key.public_data) in broker.trusted

            def auth_completed(self) -> None:
                broker.conns[id(self._conn)] = self._conn

            def connection_lost(self, exc: Exception | None) -> None:
                broker.conns.pop(id(self._conn), None)

        return TunnelClient()

    async def open_one(self) -> bool:
        if not self.conns:
            return False
        conn = random.choice(list(self.conns.values()))
        try:
            reader, writer = await asyncio.wait_for(
                conn.open_connection("127.0.0.1", self.target_port), OPEN_TIMEOUT
            )
            writer.write(b"1\n")
            data = await asyncio.wait_for(reader.read(1), OPEN_TIMEOUT)
            writer.close()
            return len(data) == 1
        except (OSError, asyncssh.Error, TimeoutError):
            return False

    async def opens(
        self, total: int, concurrency: int, deadline_s: float = OPENS_DEADLINE
    ) -> dict[str, float]:
        """``total`` opens, ``concurrency`` at a time, stopping early at the deadline."""
        left, done, errors = total, 0, 0
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal left, done, errors
            while left > 0 and time.perf_counter() - t0 < deadline_s:
                left -= 1
                ok = await self.open_one()
                done += 1
                errors += 0 if ok else 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"opens": done, "errors": errors, "seconds": time.perf_counter() - t0}


class RealBroker(Broker):
    """The same commands over hoshu's tunnel endpoint and registry."""

    def __init__(self, listener: Any, target_port: int) -> None:
        super().__init__(set(), target_port)
        self.listener = listener
        self.n = 0

    @property
    def conns(self) -> dict[int, asyncssh.SSHClientConnection]:
        return {id(t.conn): t.conn for t in self.listener.registry.tunnels()}

    @conns.setter
    def conns(self, value: dict[int, asyncssh.SSHClientConnection]) -> None:
        pass

    async def open_one(self) -> bool:
        from wire import Originator, encode_originator

        tunnels = self.listener.registry.tunnels()
        if not tunnels:
            return False
        conn = random.choice(tunnels).conn
        self.n += 1
        orig = encode_originator(Originator(session_id=f"s{self.n}", engineer="bench"))
        try:
            reader, writer = await asyncio.wait_for(
                conn.open_connection("127.0.0.1", self.target_port, orig_host=orig), OPEN_TIMEOUT
            )
            writer.write(b"1\n")
            data = await asyncio.wait_for(reader.read(1), OPEN_TIMEOUT)
            writer.close()
            return len(data) == 1
        except (OSError, asyncssh.Error, TimeoutError):
            return False


GATEWAYS_PER_HOSPITAL = 20


def _store_directory(url: str, n: int) -> tuple[Any, Any, Any]:
    """The store's gateway directory with gateways ``0..n-1`` enrolled (the ones a
    store kept from an earlier start are not enrolled again): (directory, offload,
    closer)."""
    from audit.testing import CapturingEmitter
    from bench.scale_gateways import gateway_key
    from broker.access.crypto import SecretBox
    from broker.access.model import Gateway, Org, User
    from broker.access.passwords import Hasher
    from broker.access.ports import Actor, Config, Context
    from broker.access.services import Services
    from broker.live.changes import DbCalls
    from broker.store.db import Store
    from broker.store.directory import StoreGatewayDirectory

    store = Store(url, migrate=True)
    ctx = Context(
        uow=store.uow,
        emitter=CapturingEmitter(),  # the enrolment's own events are not measured
        secrets=SecretBox.generate(),
        clock=lambda: datetime.now(UTC),
        hasher=Hasher(time_cost=1, memory_cost=64),
        config=Config(broker_host_key=broker_key().export_public_key().decode().strip()),
    )
    s = Services.build(ctx)
    with store.uow() as tx:
        admins = tx.find(User, name="root")
        enrolled = len(tx.find(Gateway, active=True))
        hospitals = {o.name for o in tx.find(Org, kind="hospital")}
    if admins:
        user = admins[0]
    else:
        user, _ = s.auth.bootstrap("root", "Platform Admin", "bench-Passw0rd-long")
    admin = Actor(user.id, user.name, user.org_id, "platform", frozenset(user.roles))
    t0 = time.perf_counter()
    for i in range(enrolled, n):
        hospital = f"hospital-{i // GATEWAYS_PER_HOSPITAL}"
        if hospital not in hospitals:
            s.people.create_org(admin, hospital, "hospital")
            hospitals.add(hospital)
        token = s.gateways.issue_token(admin, hospital).token
        key = gateway_key(i).export_public_key().decode().strip()
        s.gateways.enroll(token, key, f"gw-{i}", "1.0")
    if n > enrolled:
        log.warning("enrolled %d gateways in %.1f s", n - enrolled, time.perf_counter() - t0)
    pool = DbCalls(8)

    def close() -> None:
        pool.close()
        store.close()

    return StoreGatewayDirectory(s), pool, close


async def _real(args: argparse.Namespace) -> tuple[Broker, Any, Any]:
    from datetime import timedelta

    from audit.chain import ChainLog
    from audit.signing import CheckpointSigner
    from bench.scale_gateways import gateway_id
    from broker.tunnel.endpoint import TunnelSettings, start_tunnel_listener
    from wire import GatewayRecord, InventoryItem

    by_key = {
        " ".join(gateway_key(i).export_public_key().decode().split()[:2]): GatewayRecord(
            gateway_id=gateway_id(i), hospital_id=f"h{i}", name=f"gw-{i}"
        )
        for i in range(args.gateways)
    }

    class Directory:
        def gateway_for_key(self, openssh_public_key: str) -> GatewayRecord | None:
            return by_key.get(" ".join(openssh_public_key.split()[:2]))

        def windows_for(self, gateway_id: str, now: datetime) -> list[tuple[datetime, datetime]]:
            return [(now - timedelta(minutes=1), now + timedelta(hours=2))]

        def record_inventory(self, gateway_id: str, instruments: list[InventoryItem]) -> None:
            pass

    work = Path(args.real)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"broker-audit-{int(time.time() * 1000)}.log"
    audit = ChainLog(path, signer=CheckpointSigner.generate())
    directory: Any = Directory()
    offload, closer = None, None
    if args.store:
        directory, offload, closer = await asyncio.to_thread(
            _store_directory, args.store, args.gateways
        )
    listener = await start_tunnel_listener(
        TunnelSettings(host="127.0.0.1", port=args.port),
        broker_key(),
        directory,
        audit,
        offload=offload,
    )
    return RealBroker(listener, args.target_port), listener, closer


async def _main(args: argparse.Namespace) -> None:
    raise_nofile()
    if args.real:
        broker, listener, closer = await _real(args)
        await _commands(broker)
        await listener.close()
        if closer is not None:
            closer()
        return
    trusted = {bytes(gateway_key(i).public_data) for i in range(args.gateways)}
    broker = Broker(trusted, args.target_port)
    server = await asyncssh.listen_reverse(
        "127.0.0.1",
        args.port,
        client_factory=broker.client_factory,
        client_keys=[broker_key()],
        known_hosts=([], [], []),
        username="broker",
        backlog=args.backlog,
        reuse_address=True,
    )
    try:
        await _commands(broker)
    finally:
        server.close()


async def _commands(broker: Broker) -> None:
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "count":
                answer: dict[str, object] = {"connected": len(broker.conns)}
            elif words[0] == "opens" and len(words) == 3:
                answer = dict(await broker.opens(int(words[1]), int(words[2])))
            else:
                answer = {"error": f"unknown command {words[0]!r}"}
            print(json.dumps(answer), flush=True)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--gateways", type=int, required=True, help="enrolled gateway keys")
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--backlog", type=int, default=4096)
    ap.add_argument("--real", default=None, help="work dir: run hoshu's tunnel endpoint")
    ap.add_argument(
        "--store", default=None, help="with --real: the store's URL (its gateway directory)"
    )
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(_main(ap.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
