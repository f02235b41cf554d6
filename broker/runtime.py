"""The broker process: everything ``hoshu serve`` runs, built from settings.

:func:`build_runtime` assembles the control plane; other parts extend the
returned :class:`Runtime` before :func:`serve` starts it: routers through
``extra_routers``, long-running coroutines in ``runtime.tasks`` (the SSH front
door and the gateway tunnel listeners, for example) and clean-up callables in
``runtime.closers`` (run in reverse order, sync or async).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI

from audit.emitter import Emitter
from broker.access.passwords import Hasher
from broker.access.ports import utc_now
from broker.api.app import create_app
from broker.services import ControlPlane
from broker.settings import BrokerSettings

log = logging.getLogger("hoshu.serve")


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


def build_runtime(settings: BrokerSettings, *, emitter: Emitter | None = None,
                  extra_routers: Sequence[APIRouter] = (),
                  clock: Callable[[], datetime] = utc_now,
                  hasher: Hasher | None = None) -> Runtime:
    """Open the store and keys, build the API and the background tasks (not started).

    ``emitter`` is the audit log (``audit.service.build_audit(...).log`` in the full
    broker); without it the control plane opens ``settings.audit_log_path`` itself."""
    control = ControlPlane.open(settings, emitter=emitter, clock=clock, hasher=hasher)
    app = create_app(settings, services=control.services, extra_routers=extra_routers)
    rt = Runtime(settings, control, app)
    rt.tasks.append(lambda: sweep_forever(control, settings.sweep_interval_s))
    rt.closers.append(control.close)
    return rt


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
