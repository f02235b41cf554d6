"""The order of a broker's stop: not ready, still serving, drained, left the cluster.

The assembled runtime (``build_runtime``) with a drainer and a leaver that note when
they run and what ``/readyz`` said then (asked over HTTP through the real app).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from audit.testing import CapturingEmitter
from broker.access.passwords import Hasher
from broker.assembly import build_runtime
from broker.runtime import LEAVE_TIMEOUT_S, Runtime, drain
from broker.settings import BrokerSettings


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    return build_runtime(
        BrokerSettings(data_dir=tmp_path / "data", api_port=0),
        emitter=CapturingEmitter(),
        hasher=Hasher(time_cost=1, memory_cost=64),
    )


async def _readyz(rt: Runtime) -> int:
    transport = httpx.ASGITransport(app=rt.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
        return (await client.get("/readyz")).status_code


async def test_readiness_fails_first_the_lead_serves_then_drain_then_leave(rt: Runtime) -> None:
    assert await _readyz(rt) == 200
    seen: list[tuple[str, float, int]] = []
    started = time.monotonic()

    async def drainer(grace_s: float) -> None:
        seen.append(("drain", time.monotonic() - started, await _readyz(rt)))
        await asyncio.sleep(0.2)  # sessions ending
        seen.append(("drained", time.monotonic() - started, await _readyz(rt)))

    async def leaver() -> None:
        seen.append(("leave", time.monotonic() - started, await _readyz(rt)))

    rt.drainers.append(drainer)
    rt.leavers.append(leaver)
    task = asyncio.ensure_future(drain(rt, 5.0, lead_s=0.5))
    await asyncio.sleep(0.1)
    assert await _readyz(rt) == 503  # the load balancer is told at once
    assert seen == []  # the lead: nothing drains yet, everything still serves
    await task
    assert [s[0] for s in seen] == ["drain", "drained", "leave"]
    assert seen[0][1] >= 0.5  # the drain waited for the lead
    assert all(code == 503 for _, _, code in seen)  # not ready all along


async def test_a_second_signal_in_the_lead_skips_the_drain_but_still_leaves(rt: Runtime) -> None:
    ran: list[str] = []

    async def drainer(grace_s: float) -> None:
        ran.append("drain")

    async def leaver() -> None:
        ran.append("leave")

    rt.drainers.append(drainer)
    rt.leavers.append(leaver)
    again = asyncio.Event()
    started = time.monotonic()
    task = asyncio.ensure_future(drain(rt, 5.0, cut_short=again, lead_s=30.0))
    await asyncio.sleep(0.1)
    again.set()
    await asyncio.wait_for(task, 5.0)
    assert time.monotonic() - started < 5.0
    assert ran == ["leave"]  # the closers end what is live; the registry is left anyway


async def test_a_leaver_that_hangs_does_not_hold_the_stop(rt: Runtime) -> None:
    after: list[str] = []

    async def stuck() -> None:
        await asyncio.Event().wait()  # a database that does not answer

    async def leaver() -> None:
        after.append("left")

    rt.leavers.extend([stuck, leaver])
    started = time.monotonic()
    await asyncio.wait_for(drain(rt, 1.0), LEAVE_TIMEOUT_S + 5.0)
    assert time.monotonic() - started < LEAVE_TIMEOUT_S + 2.0
    assert after == ["left"]  # the next leaver still runs
