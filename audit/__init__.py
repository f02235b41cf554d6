"""hoshu audit: the event model, the tamper-evident log, shipping and queries.

``audit`` depends on neither ``gateway`` nor ``broker``; both emit through it.

Errors: one tree, drawn in :mod:`audit.errors`.

Modules: ``catalog`` (every event type, as read-only data) and ``events``
(the envelope :func:`new_event` builds from it), ``chain``/``verify``/
``signing`` (the tamper-evident log and its check), ``keyfiles`` (secret files
born 0600), ``outbox``/``shipper``/``sinks`` and ``masking`` (lossless
shipping), ``index``/``export`` (auditor queries; broker only: it needs
SQLAlchemy), ``recording`` (asciicast v2), ``report``/``report_render``/
``workreports``/``review`` (control 20 and 27), ``retention``,
``controls``/``compliance`` (each control's status for a deployment),
and ``service.build_audit`` which wires them for the broker.
"""

from audit.catalog import CATALOG, EventType, event_type
from audit.errors import AuditError, ChainError, InvalidEvent, UnknownEventType
from audit.events import AuditEvent, new_event

__all__ = [
    "CATALOG",
    "AuditError",
    "AuditEvent",
    "ChainError",
    "EventType",
    "InvalidEvent",
    "UnknownEventType",
    "event_type",
    "new_event",
]
