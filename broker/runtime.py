"""The broker process: what ``hoshu serve`` runs, once assembled.

A :class:`Runtime` holds the control plane, the API app, long-running
coroutines in ``tasks`` (the SSH front door and the gateway tunnel listeners,
for example) and clean-up callables in ``closers`` (run in reverse order, sync
or async).  :mod:`broker.assembly` builds it; :func:`serve` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from broker.services import ControlPlane
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: BrokerSettings
    control: ControlPlane
    app: FastAPI
    tasks: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    closers: list[Callable[[], Any]] = field(default_factory=list)


async def sweep_forever(control: ControlPlane, interval_s: float) -> None:
    """Expire stale requests and open/close grant windows on the real clock."""
    while True:
        try:
            await asyncio.to_thread(control.services.grants.sweep)
            # counted-only failed sign-ins are written once their minute is over
            await asyncio.to_thread(control.services.auth.flush_floods)
            await asyncio.to_thread(control.services.gateways.strangers.flush)
        except Exception:  # a failed sweep is retried; the next one catches up
            log.exception("sweep failed")
        await asyncio.sleep(interval_s)


async def serve(rt: Runtime, *, sock: socket.socket | None = None) -> None:
    """Run the API (uvicorn) and every task until the server stops."""
    import uvicorn

    config = uvicorn.Config(rt.app, host=rt.settings.api_host, port=rt.settings.api_port,
                            log_level="info", lifespan="off", timeout_keep_alive=5,
                            limit_concurrency=500, server_header=False)
    server = uvicorn.Server(config)
    running = [asyncio.create_task(t()) for t in rt.tasks]
    try:
        await server.serve(sockets=[sock] if sock else None)
    finally:
        for t in running:
            t.cancel()
        for t in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for close in reversed(rt.closers):
            result = close()
            if inspect.isawaitable(result):
                await result
