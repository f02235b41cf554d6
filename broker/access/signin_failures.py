"""Unauthenticated failures as audit events, aggregated per source per minute.

A caller without credentials can fail as often as it likes, so each failure
cannot be one event: per source bucket (an address, an IPv6 /64) the first
:data:`BURST` failures in a minute are written one by one (``user.login`` for
sign-ins, ``gateway.enrollment_refused`` for enrolments), the rest are counted
and written as one summary event with the count (``user.login_flood``,
``gateway.enrollment_flood``) once the minute is over: at the next failure
of that source, or when the sweeper calls :meth:`CountedFailures.flush`.  The
events plus the counts equal the failures.  Lockout and throttling count
every failure regardless.
"""

from __future__ import annotations

from threading import Lock
from typing import Any

from audit.events import Result
from broker.access import names
from broker.access.floods import FloodGate, Summary
from broker.access.ports import Context

WINDOW_S = 60.0
BURST = 10


class CountedFailures:
    def __init__(
        self,
        ctx: Context,
        single: str,
        summary: str,
        *,
        window_s: float = WINDOW_S,
        burst: int = BURST,
    ) -> None:
        self.ctx = ctx
        self.single = single
        self.summary = summary
        self.gate = FloodGate(window_s=window_s, burst=burst)
        self._lock = Lock()  # API requests run on worker threads; the gate is not shared-safe

    def record(
        self,
        src_ip: str | None,
        reason: str,
        *,
        details: dict[str, Any] | None = None,
        **columns: Any,
    ) -> None:
        """One failure: written now as ``single``, or counted for the source's summary."""
        key = names.source_bucket(src_ip) or "ip:unknown"
        with self._lock:
            admission = self.gate.admit(key, self.ctx.now(), reason)
        for summary in admission.summaries:
            self._summary_event(summary)
        if admission.write:
            self.ctx.emit(
                self.single,
                None,
                result=Result.FAILURE,
                SrcIpAddr=src_ip,
                EventResultDetails=reason,
                details=details,
                **columns,
            )

    def flush(self, *, everything: bool = False) -> int:
        """Write the summaries of the minutes that are over (``everything``: all of
        them, at shutdown); returns how many events were written."""
        with self._lock:
            summaries = self.gate.flush(self.ctx.now(), everything=everything)
        for summary in summaries:
            self._summary_event(summary)
        return len(summaries)

    def _summary_event(self, summary: Summary) -> None:
        src = summary.key.removeprefix("ip:")
        self.ctx.emit(
            self.summary,
            None,
            result=Result.FAILURE,
            SrcIpAddr=None if src == "unknown" or "/" in src else src,
            EventResultDetails=f"{summary.count} more failures",
            details={
                "count": summary.count,
                "window_s": summary.window_s,
                "window_start": summary.window_start.isoformat(),
                "last": summary.last,
                "source": src,
            },
        )


class FailedSignIns(CountedFailures):
    """Failed sign-ins: ``user.login`` one by one, then ``user.login_flood``."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx, "user.login", "user.login_flood")

    def login_failed(self, name: str, user_id: str | None, reason: str, src_ip: str | None) -> None:
        self.record(
            src_ip,
            reason,
            details={"method": "password+totp"},
            ActorUsername=name[:64],
            ActorUserId=user_id,
        )
