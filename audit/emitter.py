"""Emitters: where code sends audit events.

An :class:`Emitter` takes finished :class:`~audit.events.AuditEvent` objects.
Implementations compose: :class:`FanOut` sends to several, the chain log
(:class:`audit.chain.ChainLog`) is itself an emitter.  ``emit`` raises when the
event could not be stored; callers performing an *enforced* action (grant,
approval, session) must let that error stop the action (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from audit.events import AuditEvent


@runtime_checkable
class Emitter(Protocol):
    def emit(self, event: AuditEvent) -> AuditEvent:
        """Store or forward ``event``; return it as stored (chain fields filled)."""
        ...


class FanOut:
    """Send each event to every emitter in order; the first one's result is returned."""

    def __init__(self, emitters: Iterable[Emitter]) -> None:
        self._emitters = list(emitters)
        if not self._emitters:
            raise ValueError("FanOut needs at least one emitter")

    def emit(self, event: AuditEvent) -> AuditEvent:
        stored = self._emitters[0].emit(event)
        for e in self._emitters[1:]:
            e.emit(stored)
        return stored


class NullEmitter:
    """Drops events. Only for tools that explicitly run without an audit trail."""

    def emit(self, event: AuditEvent) -> AuditEvent:
        return event
