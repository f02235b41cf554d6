"""Wait for a condition instead of sleeping and hoping: poll it, fail at a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL_S = 0.02


async def poll(
    cond: Callable[[], object | Awaitable[object]],
    deadline_s: float = 5.0,
    what: str = "condition",
    *,
    interval_s: float = INTERVAL_S,
) -> float:
    """Wait until ``cond()`` (plain or awaitable) is truthy; return the seconds it took.

    Raises AssertionError naming ``what`` once ``deadline_s`` has passed.
    """
    start = time.monotonic()
    while True:
        r = cond()
        if inspect.isawaitable(r):
            r = await r
        if r:
            return time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


def poll_sync(
    cond: Callable[[], T | None],
    deadline_s: float = 5.0,
    what: str = "condition",
    *,
    interval_s: float = INTERVAL_S,
) -> T:
    """Blocking twin of ``poll`` for threads and subprocess tests: wait until ``cond()``
    returns something truthy and return it; AssertionError naming ``what`` at the deadline."""
    start = time.monotonic()
    while not (result := cond()):
        if time.monotonic() - start > deadline_s:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(interval_s)
    return result
