"""The shared test helpers do what the tests rely on: a poll fails loudly at its deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support import FakeClock, poll, poll_sync

T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


async def test_poll_waits_for_a_plain_or_awaitable_condition_and_fails_naming_it() -> None:
    calls = [0]

    def third_time() -> bool:
        calls[0] += 1
        return calls[0] >= 3

    async def ready() -> bool:
        return True

    assert await poll(third_time, interval_s=0.001) >= 0 and calls[0] == 3
    assert await poll(ready) >= 0
    with pytest.raises(AssertionError, match="waiting for the moon"):
        await poll(lambda: False, 0.05, "the moon")


def test_poll_sync_returns_the_truthy_result_and_fails_at_the_deadline() -> None:
    assert poll_sync(lambda: ["found"]) == ["found"]
    with pytest.raises(AssertionError, match="waiting for nothing"):
        poll_sync(lambda: None, 0.05, "nothing")


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(T0)
    assert clock() == T0 == clock()
    assert clock.advance(90) == T0 + timedelta(seconds=90) == clock()
    clock.now = T0
    assert clock() == T0
