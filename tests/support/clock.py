"""A clock tests move by hand, so expiry, lockout windows and backoff need no sleeping."""

from __future__ import annotations

from datetime import datetime, timedelta


class FakeClock:
    """Call it for the current time; ``advance`` it or set ``now`` directly.

    The start is explicit: each test module picks the instant its rules care about
    (a weekday morning in Tokyo, a time inside a maintenance window, ...).
    """

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now
