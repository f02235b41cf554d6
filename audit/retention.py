"""Retention per kind: index rows and recordings are deleted only after their period.

The guideline fixes no period (control 28); each site configures one per kind:

* ``events_days``: rows in the auditors' index older than this are deleted;
* ``recordings_days``: recordings last written longer ago are deleted, from
  whichever :class:`~audit.recstore.RecordingStore` holds them (files, or Azure
  Blob storage).  On a WORM container the store itself refuses a deletion
  inside its immutability period: that recording is counted as retained ("not
  yet"), not as an error, and is tried again on the next run.

Nothing is deleted before its time: the cut-off is ``now - days`` from the
injected clock, a period shorter than :data:`MINIMUM_DAYS` is refused at
configuration time, and ``None`` means "keep forever" (the default).  Every
deletion is itself an ``audit.retention_deleted`` event, written *before* the
data goes, naming the kind, how many and the cut-off; if that event cannot be
written, nothing is deleted.

The hash-chained log is not trimmed here: it is the evidence the SIEM copies
are checked against, and it is archived whole (``hoshu audit export``) before
a host is reset or rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from audit.emitter import Emitter
from audit.errors import AuditError
from audit.events import format_time, new_event, utc_now
from audit.index import AuditIndex
from audit.recstore import RecordingRetained, RecordingStore
from audit.recstore.files import FileStore

MINIMUM_DAYS = 30


class RetentionError(AuditError):
    """A retention setting is unsafe."""


@dataclass(frozen=True)
class RetentionPolicy:
    events_days: int | None = None
    recordings_days: int | None = None

    def __post_init__(self) -> None:
        for kind, days in (("events", self.events_days), ("recordings", self.recordings_days)):
            if days is not None and days < MINIMUM_DAYS:
                raise RetentionError(
                    f"{kind} retention of {days} days is shorter than the minimum of {MINIMUM_DAYS}"
                )


@dataclass(frozen=True)
class RetentionResult:
    events_deleted: int = 0
    recordings_deleted: int = 0
    recordings_retained: int = 0  # due here, but the store's retention still holds them


class Retention:
    def __init__(
        self,
        policy: RetentionPolicy,
        emitter: Emitter,
        *,
        index: AuditIndex | None = None,
        recordings_dir: Path | None = None,
        recordings: RecordingStore | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.policy = policy
        self.emitter = emitter
        self.index = index
        self.recordings = (
            recordings
            if recordings is not None
            else (FileStore(recordings_dir) if recordings_dir is not None else None)
        )
        self.clock = clock

    def _announce(self, kind: str, count: int, before: datetime) -> None:
        self.emitter.emit(
            new_event(
                "audit.retention_deleted",
                clock=self.clock,
                DvcRole="broker",
                ObjectType=kind,
                Operation="delete",
                EventMessage=f"deleting {count} {kind} older than {format_time(before)}",
                details={"kind": kind, "count": count, "before": format_time(before)},
            )
        )

    def run(self) -> RetentionResult:
        now = self.clock()
        events = recordings = retained = 0
        if self.policy.events_days is not None and self.index is not None:
            before = now - timedelta(days=self.policy.events_days)
            due = self.index.count_before(before)
            if due:
                self._announce("events", due, before)
                events = self.index.delete_before(before)
        if self.policy.recordings_days is not None and self.recordings is not None:
            before = now - timedelta(days=self.policy.recordings_days)
            old = [
                r.name
                for r in self.recordings.list()
                if r.name.endswith(".cast") and r.modified < before
            ]
            if old:
                self._announce("recordings", len(old), before)
                for name in old:
                    try:
                        recordings += self.recordings.delete(name)
                    except RecordingRetained:
                        retained += 1  # WORM: not yet; the next run tries again
        return RetentionResult(events, recordings, retained)
