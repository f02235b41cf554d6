"""hoshu audit: the event model, the tamper-evident log, shipping and queries.

``audit`` depends on neither ``gateway`` nor ``broker``; both emit through it.

Error tree::

    AuditError
    ├── UnknownEventType      an event type that is not in the catalog
    ├── InvalidEvent          a field the event type does not declare, or a bad value
    ├── ChainError            the hash-chained log cannot be written or read
    ├── OutboxError           (audit.outbox) shipping cannot proceed
    │   ├── OutboxCorrupt     a cursor or log line cannot be trusted: the sink stops
    │   └── SinkError         a sink did not acknowledge: the batch is retried
    ├── MaskingError          (audit.masking) an invalid masking rule
    ├── RecordingError        (audit.recording) a recording cannot be written or read
    ├── QueryError            (audit.index) an invalid auditor query
    ├── ReportError           (audit.report) no plan to report on, or a refused sign-off
    └── RetentionError        (audit.retention) an unsafe retention setting

Modules: ``events``/``catalog`` (the event model), ``chain``/``verify``/
``signing`` (the tamper-evident log and its check), ``keyfiles`` (secret files
born 0600), ``outbox``/``shipper``/``sinks`` and ``masking`` (lossless
shipping), ``index``/``export`` (auditor queries; broker only: it needs
SQLAlchemy), ``recording`` (asciicast v2), ``report``/``report_render``/
``workreports``/``review`` (control 20 and 27), ``retention``,
``controls``/``compliance`` (each control's status for a deployment),
and ``service.build_audit`` which wires them for the broker.
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
