"""Test helpers for code that emits audit events (``audit.testing``)."""

from __future__ import annotations

import threading

from audit.events import AuditEvent


class CapturingEmitter:
    """Keeps every event in memory; ``of_type`` filters by event type."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self._lock = threading.Lock()

    def emit(self, event: AuditEvent) -> AuditEvent:
        with self._lock:
            self.events.append(event)
        return event

    def of_type(self, type_: str) -> list[AuditEvent]:
        with self._lock:
            return [e for e in self.events if e.type == type_]

    def types(self) -> list[str]:
        with self._lock:
            return [e.type for e in self.events]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


class FailingEmitter:
    """Refuses every event, as a full disk would."""

    def emit(self, event: AuditEvent) -> AuditEvent:
        from audit.errors import ChainError

        raise ChainError("audit log is not writable (simulated)")
