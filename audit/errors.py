"""Errors of the audit package: one tree, every class under :class:`AuditError`.

Error tree::

    AuditError
    ├── UnknownEventType      an event type that is not in the catalog
    ├── InvalidEvent          a field the event type does not declare, or a bad value
    ├── ChainError            the hash-chained log cannot be written or read
    ├── OutboxError           (audit.outbox) shipping cannot proceed
    │   ├── OutboxCorrupt     a cursor or log line cannot be trusted: the sink stops
    │   └── SinkError         a sink did not acknowledge: the batch is retried
    ├── MaskingError          (audit.masking) an invalid masking rule
    ├── RecordingFileError    (audit.recording) a recording file cannot be written or read
    ├── QueryError            (audit.index) an invalid auditor query
    ├── ReportError           (audit.report) no plan to report on, or a refused sign-off
    └── RetentionError        (audit.retention) an unsafe retention setting

The classes marked with a module live beside the code that raises them.  Third-party
errors (``OSError``, JSON, SQLAlchemy, HTTP) are translated into these once, where they
happen (``raise ... from exc``).
"""


class AuditError(Exception):
    """Base of every audit error."""


class UnknownEventType(AuditError):
    """The event type is not defined in the catalog."""


class InvalidEvent(AuditError):
    """The event carries a field its type does not declare, or a bad value."""


class ChainError(AuditError):
    """The hash-chained log could not be written or read."""
