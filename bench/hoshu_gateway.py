"""The hospital gateway of the data-path benchmark: ``python -m bench.hoshu_gateway CONFIG``.

Runs hoshu's real :class:`gateway.agent.GatewayAgent` (always-on mode) as
``hoshu-gateway run`` does, with the enrolment it would have received
(gateway id, pinned broker tunnel key, tunnel address) written by the harness
instead of fetched from the API, and an allowlist holding the benchmark
instrument's SSH port and byte-source port.  Exits on ``quit`` or when stdin
closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

from gateway import __version__
from gateway.agent import GatewayAgent
from gateway.auditlog import LocalAudit
from gateway.config import GatewayConfig, Instrument
from gateway.enroll import Enrollment
from wire import Mode


async def _serve(cfg: dict[str, Any]) -> None:
    g, i = cfg["gateway"], cfg["instrument"]
    state = Path(g["workdir"])
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = GatewayConfig(
        name=g["name"],
        state_dir=state,
        mode=Mode.ALWAYS,
        api="http://127.0.0.1:9",
        instruments=(
            Instrument(
                name=i["name"],
                host=i["host"],
                ports=tuple(i["ports"]),
                protocol="ssh",
                department="bench",
                model="bench",
            ),
        ),
        tunnel_host="127.0.0.1",
        tunnel_port=int(g["tunnel_port"]),
    )
    enrollment = Enrollment(
        gateway_id=g["gateway_id"],
        hospital_id=g["hospital_id"],
        hospital="bench-hospital",
        broker_host_key=g["tunnel_public_line"],
        tunnel_host="127.0.0.1",
        tunnel_port=int(g["tunnel_port"]),
        protocol_version=1,
    )
    audit = LocalAudit(
        config.audit_path,
        gateway_name=config.name,
        version=__version__,
        clock=lambda: datetime.now(UTC),
        gateway_id=g["gateway_id"],
        hospital_id=g["hospital_id"],
    )
    agent = GatewayAgent(config, enrollment, asyncssh.read_private_key(g["key"]), audit)
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line or line == "quit":
                break
    finally:
        agent.stop()
        try:
            await asyncio.wait_for(task, 10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        audit.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = json.loads(args.config.read_text())
    asyncio.run(_serve(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
