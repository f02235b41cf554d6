"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz`` (no sign-in).

- ``/healthz`` answers 200 while the process lives and its event loop turns.
  It says nothing else: no versions, no settings, no secrets.
- ``/readyz`` answers 200 only when every named probe passes: the database,
  the key store, the recording store, and whatever else the runtime adds to
  :attr:`Readiness.probes`.  Otherwise 503, naming each failed check
  (``{"status": "not ready", "failed": ["database"], "checks": {...}}``).
  While the broker drains (SIGTERM) it answers 503 ``draining``, so the load
  balancer sends new work to another replica.

A probe is a named callable, sync (run in a worker thread) or async; it fails
by raising, by returning ``False`` or by not finishing within
``Readiness.timeout_s``.  The reason in the answer is only "failed" or
"timed out": an exception's text can carry a host name or a URL, so it goes to
the log by class name only and never to the caller.  Probes run concurrently,
so one hung dependency costs one timeout, not one per probe.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

router = APIRouter(tags=["meta"])

Check = Callable[[], bool | Awaitable[bool | None] | None]

DEFAULT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Probe:
    """One readiness check: ``check()`` raises or returns ``False`` when ``name`` is down."""

    name: str
    check: Check


@dataclass
class Readiness:
    """What ``/readyz`` asks: the probes (append to add one) and the drain flag."""

    probes: list[Probe] = field(default_factory=list)
    timeout_s: float = DEFAULT_TIMEOUT_S
    draining: bool = False

    def add(self, name: str, check: Check) -> None:
        if any(p.name == name for p in self.probes):
            raise ValueError(f"a readiness probe named {name!r} exists already")
        self.probes.append(Probe(name, check))

    async def run(self) -> dict[str, str]:
        """Each probe's result: ``ok``, ``failed`` or ``timed out``."""
        results = await asyncio.gather(*(self._one(p) for p in self.probes))
        return {p.name: r for p, r in zip(self.probes, results, strict=True)}

    async def _one(self, probe: Probe) -> str:
        async def call() -> Any:
            if inspect.iscoroutinefunction(probe.check):
                return await probe.check()
            result = await asyncio.to_thread(probe.check)
            if inspect.isawaitable(result):
                return await result
            return result

        try:
            async with asyncio.timeout(self.timeout_s):
                outcome = await call()
        except TimeoutError:
            log.warning("readiness probe %s timed out after %.1f s", probe.name, self.timeout_s)
            return "timed out"
        except Exception as exc:  # a probe's own error is its failure, by class name only
            log.warning("readiness probe %s failed: %s", probe.name, type(exc).__name__)
            return "failed"
        return "failed" if outcome is False else "ok"


def readiness_of(app: FastAPI) -> Readiness:
    """The app's :class:`Readiness` (created empty on first use)."""
    found = getattr(app.state, "readiness", None)
    if not isinstance(found, Readiness):
        found = Readiness()
        app.state.readiness = found
    return found


def cached(
    check: Callable[[], object], ttl_s: float, clock: Callable[[], float] = time.monotonic
) -> Check:
    """``check`` (sync), asked at most once per ``ttl_s`` while it passes: for stores whose
    check costs remote calls (Key Vault, Blob).  A failure is never cached."""
    passed_at: list[float] = []

    def probe() -> bool:
        if passed_at and clock() - passed_at[0] < ttl_s:
            return True
        if check() is False:
            return False
        passed_at[:] = [clock()]
        return True

    return probe


def database_probe(engine: sa.Engine) -> Check:
    """A check that the database answers ``SELECT 1`` on a fresh pooled connection."""

    def check() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    return check


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process lives."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a named check failed, or draining"}})
async def readyz(request: Request) -> JSONResponse:
    """200 when every probe passes; 503 naming the failed ones, or ``draining``."""
    ready = readiness_of(request.app)
    if ready.draining:
        return JSONResponse(
            {"status": "draining", "failed": ["draining"], "checks": {}}, status_code=503
        )
    checks = await ready.run()
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        return JSONResponse(
            {"status": "not ready", "failed": failed, "checks": checks}, status_code=503
        )
    return JSONResponse({"status": "ready", "failed": [], "checks": checks})
