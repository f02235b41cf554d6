"""hoshu audit: the event model, the tamper-evident log, shipping and queries.

``audit`` depends on neither ``gateway`` nor ``broker``; both emit through it.

Error tree::

    AuditError
    ├── UnknownEventType      an event type that is not in the catalog
    ├── InvalidEvent          a field the event type does not declare, or a bad value
    └── ChainError            the hash-chained log cannot be written or read
"""

from audit.errors import AuditError, ChainError, InvalidEvent, UnknownEventType
from audit.events import AuditEvent, EventSpec, catalog, new_event

__all__ = [
    "AuditError",
    "AuditEvent",
    "ChainError",
    "EventSpec",
    "InvalidEvent",
    "UnknownEventType",
    "catalog",
    "new_event",
]
