"""The broker process: what ``hoshu serve`` runs, once assembled.

A :class:`Runtime` holds the control plane, the API app, long-running
coroutines in ``tasks`` (the SSH front door and the gateway tunnel listeners,
for example), ``drainers`` (async, given the seconds left: end live work
cleanly) and clean-up callables in ``closers`` (run in reverse order, sync or
async).  ``readiness`` is what ``/readyz`` asks: the database probe is there
from the start; other parts add theirs (``rt.readiness.add("key_store", check)``).
:mod:`broker.assembly` builds it; :func:`serve` runs it.

Stopping (SIGTERM from the container engine, or SIGINT), in this order:

1. ``/readyz`` turns 503 ``draining`` at once; for ``settings.drain_lead_s``
   everything still serves, so the load balancer stops sending new connections;
2. every drainer runs within ``settings.drain_grace_s`` less a fifth (at most
   ``SHUTDOWN_RESERVE_S``) kept for what follows (the front door stops accepting
   connections, tells live engineers, ends their sessions with their
   ``session.ended`` events and hashed recordings); the tunnels and the peer link
   still serve the other replicas meanwhile;
3. the ``leavers`` run (each within ``LEAVE_TIMEOUT_S``): the replica leaves the
   cluster registry, so the others stop routing through it;
4. the tasks end (the gateway tunnels close: gateways keep only their tunnels
   to the other replicas and redial this address), the API stops and the
   closers run; the process exits 0.

A second signal during the lead or the drain cuts it short: the leavers still
run, and what is still live is ended at once by the closers.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI

from broker.api.routes.health import Readiness, database_probe, readiness_of
from broker.jobs import Jobs
from broker.live.changes import ChangeFeed, DbCalls
from broker.services import ControlPlane
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

SHUTDOWN_RESERVE_S = 3.0  # at most this much of drain_grace_s is kept for after the drain
LEAVE_TIMEOUT_S = 2.0  # a leaver (deregistration) taking longer is given up on


@dataclass
class Runtime:
    settings: BrokerSettings
    control: ControlPlane
    app: FastAPI
    tasks: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    closers: list[Callable[[], Any]] = field(default_factory=list)
    drainers: list[Callable[[float], Awaitable[None]]] = field(default_factory=list)
    leavers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # blocking database calls off the event loop, the change feed the grant watcher
    # and the fail-closed bound follow, and the singleton jobs (build_runtime sets them)
    db: DbCalls | None = None
    feed: ChangeFeed | None = None
    jobs: Jobs | None = None

    def __post_init__(self) -> None:
        if not any(p.name == "database" for p in self.readiness.probes):
            self.readiness.add("database", database_probe(self.control.store.engine))

    @property
    def readiness(self) -> Readiness:
        """The probes ``/readyz`` asks and its drain flag (``broker.api.routes.health``)."""
        return readiness_of(self.app)


async def sweep_forever(control: ControlPlane, interval_s: float, *, grants: bool = True) -> None:
    """Expire stale requests and open/close grant windows on the real clock.

    ``grants=False``: this replica's own duties only; the grants sweep is then a
    singleton job (:mod:`broker.jobs`), run by one replica per period."""
    while True:
        try:
            if grants:
                await asyncio.to_thread(control.services.grants.sweep)
            # counted-only failed sign-ins are written once their minute is over
            await asyncio.to_thread(control.services.auth.flush_floods)
            await asyncio.to_thread(control.services.gateways.strangers.flush)
        except Exception:  # a failed sweep is retried; the next one catches up
            log.exception("sweep failed")
        await asyncio.sleep(interval_s)


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handlers: :func:`serve` drains first, then stops it
    (uvicorn's would stop the API at once and re-raise the signal, killing the process
    before the closers write the audit log's last checkpoint)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def drain(
    rt: Runtime, grace_s: float, *, cut_short: asyncio.Event | None = None, lead_s: float = 0.0
) -> None:
    """Not ready any more; ``lead_s`` seconds later every drainer at once, given
    ``grace_s`` seconds; then the leavers.

    Past the grace (or when ``cut_short`` is set) the drainers are cancelled: what
    they leave is ended by the closers (the front door ends live sessions there too)."""
    rt.readiness.draining = True
    if lead_s > 0:
        log.info("not ready: draining starts in %.0f s", lead_s)
        if cut_short is None:
            await asyncio.sleep(lead_s)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cut_short.wait(), lead_s)
    try:
        if cut_short is None or not cut_short.is_set():
            await _drain_steps(rt, grace_s, cut_short)
    finally:
        await _leave(rt)


async def _leave(rt: Runtime) -> None:
    for leaver in rt.leavers:
        try:
            await asyncio.wait_for(leaver(), LEAVE_TIMEOUT_S)
        except Exception:  # the closers deregister too; a failed leave is logged only
            log.exception("leave step failed")


async def _drain_steps(rt: Runtime, grace_s: float, cut_short: asyncio.Event | None) -> None:
    log.info("draining: live sessions end within %.0f s", grace_s)

    async def one(drainer: Callable[[float], Awaitable[None]]) -> None:
        try:
            await drainer(grace_s)
        except Exception:  # one part failing to drain must not keep the rest waiting
            log.exception("drain step failed")

    steps = asyncio.ensure_future(asyncio.gather(*(one(d) for d in rt.drainers)))
    waiters: set[asyncio.Future[Any]] = {steps}
    short = asyncio.ensure_future(cut_short.wait()) if cut_short is not None else None
    if short is not None:
        waiters.add(short)
    try:
        await asyncio.wait(waiters, timeout=grace_s + 1.0, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if short is not None:
            short.cancel()
        if not steps.done():
            log.warning("drain cut short; ending what is left now")
            steps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await steps


def _on_signals(handler: Callable[[], None]) -> list[signal.Signals]:
    """Route SIGTERM and SIGINT to ``handler`` (main thread only; elsewhere nothing)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, handler)
        except (ValueError, RuntimeError, NotImplementedError):
            continue  # not the main thread (a test running serve() in a thread)
        installed.append(sig)
    return installed


async def serve(rt: Runtime, *, sock: socket.socket | None = None) -> None:
    """Run the API (uvicorn) and every task until a signal (drained) or the server stops."""
    config = uvicorn.Config(
        rt.app,
        host=rt.settings.api_host,
        port=rt.settings.api_port,
        log_level="info",
        lifespan="off",
        timeout_keep_alive=5,
        limit_concurrency=500,
        server_header=False,
    )
    server = _ApiServer(config)
    stop, again = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (again if stop.is_set() else stop).set()

    installed = _on_signals(on_signal)
    running = [asyncio.create_task(t()) for t in rt.tasks]
    api = asyncio.create_task(server.serve(sockets=[sock] if sock else None))
    stopping = asyncio.create_task(stop.wait())
    failed: BaseException | None = None
    try:
        await asyncio.wait({api, stopping, *running}, return_when=asyncio.FIRST_COMPLETED)
        # a part that stops by itself (the tunnel listener, the front door) is a broken
        # broker: it stops too, naming the part, rather than run half (fail closed)
        for t in running:
            if t.done() and not t.cancelled():
                failed = t.exception() or RuntimeError("a broker task ended by itself")
                log.critical("a part of the broker stopped; the broker stops too", exc_info=failed)
                break
        if failed is None:
            if stop.is_set():
                grace = rt.settings.drain_grace_s
                # the rest of the grace: stopping the API and the closers (audit checkpoint)
                await drain(
                    rt,
                    grace - min(SHUTDOWN_RESERVE_S, grace / 5),
                    cut_short=again,
                    lead_s=rt.settings.drain_lead_s,
                )
                # left the cluster: the parts stop before the API, so the gateway
                # tunnels close now and the gateways use their other tunnels at once
                await _end_tasks(running)
                server.should_exit = True
            await api
    finally:
        stopping.cancel()
        if not api.done():
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await api
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)
        await _end_tasks(running)
        for close in reversed(rt.closers):
            result = close()
            if inspect.isawaitable(result):
                await result
    if failed is not None:
        raise BrokerStopped("a part of the broker stopped") from failed


async def _end_tasks(running: list[asyncio.Task[None]]) -> None:
    for t in running:
        t.cancel()
    for t in running:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


class BrokerStopped(RuntimeError):
    """A long-running part of the broker ended by itself; ``hoshu serve`` exits non-zero."""


def event_loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The event loop ``hoshu serve`` runs on (setting ``event_loop``): its name and
    factory (None: the standard library's).  ``auto`` takes uvloop when it is
    installed; ``uvloop`` without it installed is refused."""
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise BrokerStopped("HOSHU_EVENT_LOOP=uvloop, but uvloop is not installed") from exc
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def run_serve(rt: Runtime) -> None:
    """:func:`serve` on the event loop the settings choose."""
    name, factory = event_loop_factory(rt.settings.event_loop)
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(rt))
