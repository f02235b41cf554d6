"""Shipping: one worker per sink moves events from the outbox to the sink.

A :class:`Shipper` reads a batch after its sink's cursor, masks it if the sink
is marked ``mask`` (cloud sinks), hands it to the sink, and advances the cursor
only when the sink acknowledged.  On failure it backs off exponentially (with
jitter, capped, honouring a sink's ``Retry-After``) and retries the same batch.
A sink that lags more than ``lag_alert_s`` behind produces an
``audit.sink_lag`` event (at most once per ``lag_alert_s``), and an
``audit.sink_recovered`` event once it caught up; :meth:`Shipper.status` gives
the same numbers to operators and to ``hoshu audit sinks``.

Shipping never blocks the code that emits events: emitters only append to the
log; an outage grows the outbox, it does not stop sessions.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from audit.emitter import Emitter
from audit.events import new_event, utc_now
from audit.masking import Masker
from audit.outbox import Cursor, FileOutbox, OutboxCorrupt, OutboxError, SinkError


class Sink(Protocol):
    """Where events go. ``send`` returns only once the sink acknowledged every record."""

    name: str

    def send(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Deliver ``records`` (in order); raise :class:`SinkError` if not acknowledged."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SinkStatus:
    sink: str
    state: str  # idle, shipping, backing_off, stopped
    acked_seq: int
    head_seq: int
    lag_events: int
    lag_s: float
    last_error: str
    delivered: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 60.0

    def delay(self, attempt: int, rand: Callable[[], float]) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return base * (0.5 + rand() / 2)  # jitter: half to full delay


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def head_seq(log_path: Path) -> int:
    """The last position written to the log, from its ``.head`` file."""
    return FileOutbox(log_path).head_seq()


class Source(Protocol):
    """Where a shipper reads: the file log (:class:`~audit.outbox.FileOutbox`) or one
    chain in PostgreSQL (:class:`audit.pgchain.PgOutbox`)."""

    def read_batch(self, cursor: Cursor, limit: int) -> tuple[list[dict[str, Any]], Cursor]: ...

    def head_seq(self) -> int: ...


class Cursors(Protocol):
    """Each sink's acknowledged position: files (:class:`~audit.outbox.CursorStore`) or
    rows (:class:`audit.pgchain.PgCursorStore`)."""

    def load(self, sink: str) -> Cursor: ...

    def save(self, sink: str, c: Cursor) -> None: ...

    def stamp(self, sink: str) -> tuple[int, ...]: ...


class Shipper:
    """Moves events from the log to one sink; safe to call from one thread at a time."""

    def __init__(
        self,
        sink: Sink,
        log_path: str | Path | Source,
        cursors: Cursors,
        *,
        masker: Masker | None = None,
        batch_size: int = 500,
        backoff: Backoff = Backoff(),
        lag_alert_s: float = 300.0,
        emitter: Emitter | None = None,
        clock: Callable[[], datetime] = utc_now,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.sink = sink
        self.source: Source = (
            FileOutbox(log_path) if isinstance(log_path, (str, Path)) else log_path
        )
        self.cursors = cursors
        self.masker = masker
        self.batch_size = batch_size
        self.backoff = backoff
        self.lag_alert_s = lag_alert_s
        self.emitter = emitter
        self.clock = clock
        self.rand = rand
        self.attempt = 0
        self.retry_at = 0.0  # monotonic time before which no retry is made
        self.state = "idle"
        self.last_error = ""
        self.delivered = 0
        self._oldest_pending: datetime | None = None
        self._lag_reported_at: datetime | None = None
        self._stopped_at_mtime: tuple[int, ...] = (-1, -1, -1)

    def _cursor(self) -> Cursor:
        try:
            return self.cursors.load(self.sink.name)
        except OutboxCorrupt as exc:
            self._stop(str(exc))
            raise

    def _cursor_mtime(self) -> tuple[int, ...]:
        """Identity of the saved cursor (changes when an operator resets it)."""
        return self.cursors.stamp(self.sink.name)

    def _stop(self, why: str) -> None:
        self._stopped_at_mtime = self._cursor_mtime()
        if self.state != "stopped" and self.emitter is not None:
            self.emitter.emit(
                new_event(
                    "audit.outbox_corrupt",
                    clock=self.clock,
                    EventResult="Failure",
                    DvcRole="broker",
                    EventMessage=f"sink {self.sink.name} stopped: {why}",
                    details={"sink": self.sink.name, "reason": why},
                )
            )
        self.state, self.last_error = "stopped", why

    def ship_once(self) -> int:
        """Ship one batch; returns how many events the sink acknowledged (0: nothing to do).

        Raises :class:`SinkError` when the sink did not acknowledge (cursor unchanged)
        and :class:`OutboxCorrupt` when the outbox cannot be trusted (sink stopped).
        """
        if self.state == "stopped":
            if self._cursor_mtime() == self._stopped_at_mtime:
                raise OutboxCorrupt(f"sink {self.sink.name} is stopped: {self.last_error}")
            self.state, self.last_error = "idle", ""  # an operator reset the cursor
        cursor = self._cursor()
        try:
            records, after = self.source.read_batch(cursor, self.batch_size)
        except OutboxCorrupt as exc:
            self._stop(str(exc))
            raise
        if not records:
            self._oldest_pending = None
            self.state = "idle"
            return 0
        self._oldest_pending = _parse_time(records[0].get("TimeGenerated"))
        out = [self.masker.mask_record(r) for r in records] if self.masker else records
        self.state = "shipping"
        try:
            self.sink.send(out)
        except SinkError as exc:
            self.attempt += 1
            self.last_error = str(exc)
            delay = self.backoff.delay(self.attempt, self.rand)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, self.backoff.max_s))
            self.retry_at = time.monotonic() + delay
            self.state = "backing_off"
            raise
        self.cursors.save(self.sink.name, after)
        self.delivered += len(records)
        if self.attempt and self.emitter is not None and self._lag_reported_at is not None:
            self._lag_reported_at = None
            self.emitter.emit(
                new_event(
                    "audit.sink_recovered",
                    clock=self.clock,
                    DvcRole="broker",
                    EventMessage=f"sink {self.sink.name} delivers again",
                    details={"sink": self.sink.name, "lag_events": self.lag_events(after.seq)},
                )
            )
        self.attempt, self.last_error = 0, ""
        return len(records)

    def lag_events(self, acked: int | None = None) -> int:
        if acked is None:
            try:
                acked = self.cursors.load(self.sink.name).seq
            except OutboxError:
                return self.source.head_seq()
        return max(0, self.source.head_seq() - acked)

    def status(self) -> SinkStatus:
        try:
            acked = self.cursors.load(self.sink.name).seq
        except OutboxCorrupt as exc:
            acked, self.last_error, self.state = 0, str(exc), "stopped"
        except OutboxError as exc:
            acked, self.last_error = 0, str(exc)
        head = self.source.head_seq()
        lag_s = 0.0
        if self._oldest_pending is not None and head > acked:
            lag_s = max(0.0, (self.clock() - self._oldest_pending).total_seconds())
        return SinkStatus(
            self.sink.name,
            self.state,
            acked,
            head,
            max(0, head - acked),
            round(lag_s, 3),
            self.last_error,
            self.delivered,
        )

    def report_lag(self) -> bool:
        """Emit ``audit.sink_lag`` if the sink is too far behind (rate limited)."""
        st = self.status()
        if self.emitter is None or (st.lag_s < self.lag_alert_s and st.state != "stopped"):
            return False
        now = self.clock()
        if (
            self._lag_reported_at is not None
            and (now - self._lag_reported_at).total_seconds() < self.lag_alert_s
        ):
            return False
        self._lag_reported_at = now
        self.emitter.emit(
            new_event(
                "audit.sink_lag",
                clock=self.clock,
                DvcRole="broker",
                EventResult="Failure",
                EventMessage=f"sink {st.sink} is {st.lag_events} events / {st.lag_s:.0f} s behind",
                details={
                    "sink": st.sink,
                    "lag_events": st.lag_events,
                    "lag_s": st.lag_s,
                    "last_error": st.last_error[:500],
                },
            )
        )
        return True


class ShippingService:
    """Runs one thread per shipper; ``wake()`` (a log listener) starts a pass early."""

    def __init__(self, shippers: Sequence[Shipper], *, poll_s: float = 1.0) -> None:
        self.shippers = list(shippers)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._wakes = [threading.Event() for _ in self.shippers]
        self._threads: list[threading.Thread] = []

    def wake(self, _seq: int = 0) -> None:
        for w in self._wakes:
            w.set()

    def start(self) -> None:
        for shipper, wake in zip(self.shippers, self._wakes, strict=True):
            t = threading.Thread(
                target=self._run,
                args=(shipper, wake),
                name=f"audit-ship-{shipper.sink.name}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)

    def _run(self, shipper: Shipper, wake: threading.Event) -> None:
        while not self._stop.is_set():
            wait = self.poll_s
            try:
                if time.monotonic() >= shipper.retry_at:
                    if shipper.ship_once() >= shipper.batch_size:
                        wait = 0.0
            except SinkError:
                wait = max(0.0, shipper.retry_at - time.monotonic())
            except OutboxCorrupt:
                wait = self.poll_s
            except OutboxError as exc:  # the audit store did not answer: retried
                shipper.attempt += 1
                shipper.last_error = str(exc)
                shipper.retry_at = time.monotonic() + shipper.backoff.delay(
                    shipper.attempt, shipper.rand
                )
                wait = max(0.0, shipper.retry_at - time.monotonic())
            except Exception as exc:
                shipper.last_error = f"unexpected {type(exc).__name__}: {exc}"
                shipper.retry_at = time.monotonic() + shipper.backoff.max_s
            try:
                shipper.report_lag()
            except Exception as exc:
                shipper.last_error = f"cannot report lag: {exc}"
            if wait > 0:
                wake.wait(min(wait, self.poll_s))
                wake.clear()

    def status(self) -> list[SinkStatus]:
        return [s.status() for s in self.shippers]

    def wait_idle(self, timeout: float) -> bool:
        """True once every sink acknowledged everything written so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(st.lag_events == 0 for st in self.status()):
                return True
            self.wake()
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake()
        for t in self._threads:
            t.join(timeout)
        for s in self.shippers:
            s.sink.close()
