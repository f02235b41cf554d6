"""Idle gateways for the scale benchmark: ``python -m bench.scale_gateways``.

Each gateway is one ``asyncssh.connect_reverse`` client, exactly as a
hospital gateway dials out: it opens the TCP connection, then acts as the SSH
*server* of that connection, presenting its own host key and accepting only
the broker's client key.  It allows ``direct-tcpip`` only to the one
instrument port it is given (the allowlist).  When the connection drops it
reconnects after a random delay of up to 1 s, then backs off exponentially
with full jitter (cap 8 s) while the broker is unreachable.

With ``--real STATE_DIR`` each gateway is instead hoshu's own
:class:`gateway.agent.GatewayAgent` (always-on mode, its own state directory
and local audit chain, heartbeats, inventory, the real backoff), as
``hoshu-gateway run`` starts it.  Two things are changed because thousands of
gateways share one machine here, not because a gateway needs them: the local
pause-file poll runs every 10 minutes instead of every second, and the local
audit copy is not fsynced.

Keys are derived from fixed seeds (:func:`gateway_key`), so the broker
process can compute the same public keys without a key file.  Prints one
line ``connected N`` whenever asked on stdin (``count``); exits on ``quit``
or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import random
import resource
import sys
from dataclasses import dataclass
from typing import Any

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

CONNECT_TIMEOUT = 60.0
MAX_HANDSHAKES = 200  # concurrent handshakes in flight per client process


def seeded_key(label: str) -> asyncssh.SSHKey:
    """An ed25519 key derived from ``label`` (benchmark keys only)."""
    seed = hashlib.sha256(f"hoshu-bench:{label}".encode()).digest()
    pem = Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return asyncssh.import_private_key(pem)


def gateway_key(i: int) -> asyncssh.SSHKey:
    return seeded_key(f"gateway-{i}")


def broker_key() -> asyncssh.SSHKey:
    return seeded_key("broker")


def gateway_id(i: int) -> str:
    return f"{i:032x}"


async def _real_gateways(args: argparse.Namespace, state: State) -> list[asyncio.Task[None]]:
    import functools
    from datetime import UTC, datetime
    from pathlib import Path

    import gateway.auditlog
    from audit.chain import ChainLog
    from gateway import __version__
    from gateway.agent import GatewayAgent
    from gateway.auditlog import LocalAudit
    from gateway.config import GatewayConfig, Instrument
    from gateway.enroll import Enrollment
    from wire import Mode

    def unsynced(path: Path, **kw: object) -> ChainLog:
        return ChainLog(path, **{**kw, "fsync": False})  # type: ignore[arg-type]

    gateway.auditlog.ChainLog = unsynced  # type: ignore[attr-defined,assignment]
    GatewayAgent.follow_state_file = functools.partialmethod(  # type: ignore[method-assign,assignment]
        GatewayAgent.follow_state_file, interval=600.0
    )
    broker_line = broker_key().export_public_key().decode().strip()
    agents: list[GatewayAgent] = []
    base = Path(args.real)
    for i in range(args.first, args.first + args.count):
        config = GatewayConfig(
            name=f"gw-{i}",
            state_dir=base / f"gw{i}",
            mode=Mode.ALWAYS,
            api="http://127.0.0.1:9",
            instruments=(
                Instrument(
                    name=f"inst-{i}", host="127.0.0.1", ports=(args.allowed_port,), protocol="tcp"
                ),
            ),
            tunnel_host="127.0.0.1",
            tunnel_port=args.port,
        )
        config.state_dir.mkdir(parents=True, exist_ok=True)
        enrollment = Enrollment(
            gateway_id=gateway_id(i),
            hospital_id=f"h{i}",
            hospital=f"hospital-{i}",
            broker_host_key=broker_line,
            tunnel_host="127.0.0.1",
            tunnel_port=args.port,
            protocol_version=1,
        )
        audit = LocalAudit(
            config.audit_path,
            gateway_name=config.name,
            version=__version__,
            clock=lambda: datetime.now(UTC),
            gateway_id=gateway_id(i),
            hospital_id=f"h{i}",
        )
        agents.append(GatewayAgent(config, enrollment, gateway_key(i), audit))
    state.agents = agents

    async def start(k: int, agent: GatewayAgent) -> None:
        if args.ramp > 0:
            await asyncio.sleep(k / args.ramp)
        await agent.run()

    return [asyncio.create_task(start(k, a)) for k, a in enumerate(agents)]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class State:
    connected: int = 0
    stopping: bool = False
    agents: list[Any] | None = None

    def count(self) -> int:
        if self.agents is None:
            return self.connected
        return sum(1 for a in self.agents if a.state == "connected")


def _server_factory(allowed_port: int) -> type[asyncssh.SSHServer]:
    class GatewayServer(asyncssh.SSHServer):
        def connection_requested(
            self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
        ) -> bool:
            """Allow only the one allowlisted instrument port; deny anything else."""
            return dest_host == "127.0.0.1" and dest_port == allowed_port

    return GatewayServer


async def _gateway(
    i: int,
    port: int,
    allowed: int,
    authorized: asyncssh.SSHAuthorizedKeys,
    sem: asyncio.Semaphore,
    state: State,
) -> None:
    key = gateway_key(i)
    factory = _server_factory(allowed)
    backoff = 0.0
    while not state.stopping:
        try:
            async with sem:
                conn = await asyncio.wait_for(
                    asyncssh.connect_reverse(
                        "127.0.0.1",
                        port,
                        server_factory=factory,
                        server_host_keys=[key],
                        authorized_client_keys=authorized,
                        allow_pty=False,
                        x11_forwarding=False,
                        agent_forwarding=False,
                    ),
                    CONNECT_TIMEOUT,
                )
        except (OSError, asyncssh.Error, TimeoutError):
            backoff = min(max(1.0, backoff * 2), 8.0)
            await asyncio.sleep(random.uniform(0, backoff))
            continue
        backoff = 0.0
        state.connected += 1
        try:
            await conn.wait_closed()
        finally:
            state.connected -= 1
        await asyncio.sleep(random.uniform(0, 1.0))


async def _main(args: argparse.Namespace) -> None:
    raise_nofile()
    bpub = broker_key().export_public_key().decode()
    authorized = asyncssh.import_authorized_keys(bpub)
    state = State()
    sem = asyncio.Semaphore(MAX_HANDSHAKES)
    if args.real:
        tasks = await _real_gateways(args, state)
    else:
        tasks = [
            asyncio.create_task(_gateway(i, args.port, args.allowed_port, authorized, sem, state))
            for i in range(args.first, args.first + args.count)
        ]
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                break
            print(f"connected {state.count()}", flush=True)
    finally:
        state.stopping = True
        for a in state.agents or []:
            a.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--allowed-port", type=int, required=True)
    ap.add_argument("--real", default=None, help="state directory: run hoshu gateway agents")
    ap.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="first connections: start this many gateways per second (0: all)",
    )
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(_main(ap.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
