"""Unauthenticated failures, aggregated per source per minute.

A stranger can make the broker write one audit event per failed sign-in; a
flood would then bury real events and fill the log.  :class:`FloodGate` lets
the first ``burst`` failures of a source in a window through one by one (each
its own event, with all its detail) and only counts the rest; when the window
is over, the count comes back as one :class:`Summary`, to be written as a
single event.  No failure is dropped uncounted: ``burst + summary.count`` is
what the source tried in that window.  Pure (no I/O): the caller passes the
time, so tests need no sleeping.

Used the same way by the HTTP sign-in and the SSH front door::

    gate = FloodGate(window_s=60.0, burst=10)
    admission = gate.admit(source, now, reason)
    for summary in admission.summaries:     # windows of this source that are over
        write_summary(summary)
    if admission.write:
        write_the_failure()
    for summary in gate.flush(now):         # every few seconds; everything=True at exit
        write_summary(summary)

Memory is bounded by ``max_sources``: past it, new sources share the key
:data:`OVERFLOW_KEY` (still counted, never dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

OVERFLOW_KEY = "*"


@dataclass(frozen=True, slots=True)
class Summary:
    """The failures of ``key`` in one window that were counted, not written."""

    key: str
    count: int
    window_s: float
    window_start: datetime
    last: str  # the reason of the last one counted


@dataclass(frozen=True, slots=True)
class Admission:
    write: bool  # write this failure as its own event
    summaries: list[Summary] = field(default_factory=list)


@dataclass(slots=True)
class _Window:
    start: datetime
    seen: int = 0
    counted: int = 0
    last: str = ""


class FloodGate:
    """Counts failures per source key and says which to write one by one."""

    def __init__(
        self, *, window_s: float = 60.0, burst: int = 10, max_sources: int = 10_000
    ) -> None:
        if window_s <= 0 or burst < 0 or max_sources < 1:
            raise ValueError("window_s > 0, burst >= 0 and max_sources >= 1")
        self.window_s = window_s
        self.burst = burst
        self.max_sources = max_sources
        self._span = timedelta(seconds=window_s)
        self._windows: dict[str, _Window] = {}

    def admit(self, key: str, now: datetime, reason: str = "") -> Admission:
        """Count one failure of ``key`` at ``now``."""
        summaries: list[Summary] = []
        key = key or OVERFLOW_KEY
        win = self._windows.get(key)
        if win is not None and now - win.start >= self._span:
            summaries.extend(self._close(key, win))
            win = None
        if win is None:
            if len(self._windows) >= self.max_sources:
                key = OVERFLOW_KEY
                win = self._windows.get(key)
            if win is None:
                win = self._windows[key] = _Window(now)
        win.seen += 1
        if win.seen <= self.burst:
            return Admission(True, summaries)
        win.counted += 1
        win.last = reason
        return Admission(False, summaries)

    def flush(self, now: datetime, *, everything: bool = False) -> list[Summary]:
        """Summaries of the windows that are over (of every window with ``everything``)."""
        out: list[Summary] = []
        for key, win in list(self._windows.items()):
            if everything or now - win.start >= self._span:
                out.extend(self._close(key, win))
        return out

    def _close(self, key: str, win: _Window) -> list[Summary]:
        del self._windows[key]
        if not win.counted:
            return []
        return [Summary(key, win.counted, self.window_s, win.start, win.last)]
