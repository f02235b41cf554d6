"""The broker process of the data-path benchmark: ``python -m bench.hoshu_broker CONFIG``.

Runs hoshu's real SSH front door (:func:`broker.frontdoor.door.start_front_door`:
key + TOTP, recorded relay, forwards) and, in ``tunnel`` mode, the real tunnel
endpoint (:func:`broker.tunnel.endpoint.start_tunnel_listener`) with the front door
reaching the instrument through the gateway's tunnel (``TunnelConnector``).
In ``direct`` mode the front door connects straight to the instrument (the
front door's own cost, without tunnel and gateway).  Audit events go to a
signed hash-chained log, recordings to files, as in production.

Prints one JSON line (ports, host keys), then answers on stdin:
``gateway`` -> waits (<= 60 s) for the gateway's tunnel -> ``{"gateway": true}``;
``quit``.  Optionally profiles itself (``--profile OUT``, pyinstrument).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import asyncssh

from audit.chain import ChainLog
from audit.signing import CheckpointSigner
from bench.hoshu_policy import BenchDirectory, BenchPolicy
from broker.frontdoor.context import FrontDoorOptions
from broker.frontdoor.door import start_front_door
from broker.settings import BrokerSettings
from broker.tunnel.connector import DirectConnector, InstrumentConnector, TunnelConnector


def tune_tunnel() -> None:
    """What-if experiment (config ``what_if_tunnel``), not the product's behaviour:
    channels the broker opens through a tunnel take 256 KiB packets (both ends are
    asyncssh, so OpenSSH's 32 KiB limit does not apply) and an 8 MiB window."""
    import functools

    cls = asyncssh.SSHClientConnection
    cls.create_connection = functools.partialmethod(  # type: ignore[method-assign,assignment]
        cls.create_connection, window=8 << 20, max_pktsize=256 << 10
    )


async def _serve(cfg: dict[str, Any]) -> None:
    work = Path(cfg["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    audit = ChainLog(work / "broker-audit.log", signer=CheckpointSigner.generate())
    policy = BenchPolicy(cfg)
    listener: Any = None
    connector: InstrumentConnector
    if cfg["mode"] == "tunnel":
        from broker.tunnel.endpoint import TunnelSettings, start_tunnel_listener

        tunnel_key = asyncssh.read_private_key(cfg["tunnel_host_key"])
        listener = await start_tunnel_listener(
            TunnelSettings(port=0), tunnel_key, BenchDirectory(cfg), audit
        )
        connector = TunnelConnector(listener.registry)
    else:
        connector = DirectConnector()
    door = await start_front_door(
        BrokerSettings(data_dir=work / "data"),
        policy,
        connector,
        audit,
        work / "recordings",
        asyncssh.read_private_key(cfg["frontdoor_host_key"]),
        options=FrontDoorOptions(),
        host="127.0.0.1",
        port=0,
    )
    print(
        json.dumps(
            {
                "frontdoor_port": door.port,
                "host_key_line": door.host_key_line,
                "tunnel_port": listener.port if listener else None,
            }
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line or line == "quit":
                break
            if line == "gateway" and listener is not None:
                try:
                    await listener.registry.wait_for(cfg["gateway"]["gateway_id"], 60)
                    answer: dict[str, Any] = {"gateway": True}
                except TimeoutError:
                    answer = {"gateway": False}
            else:
                answer = {"error": f"unknown command {line!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        await door.close()
        if listener is not None:
            await listener.close()
        audit.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    ap.add_argument("--profile", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = json.loads(args.config.read_text())
    if cfg.get("what_if_tunnel"):
        tune_tunnel()
    if args.profile is None:
        asyncio.run(_serve(cfg))
        return 0
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="disabled")
    profiler.start()
    try:
        asyncio.run(_serve(cfg))
    finally:
        profiler.stop()
        args.profile.write_text(profiler.output_text(unicode=False, color=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
