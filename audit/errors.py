"""Errors raised by the audit package (tree drawn in ``audit/__init__.py``)."""


class AuditError(Exception):
    """Base of every audit error."""


class UnknownEventType(AuditError):
    """The event type is not defined in the catalog."""


class InvalidEvent(AuditError):
    """The event carries a field its type does not declare, or a bad value."""


class ChainError(AuditError):
    """The hash-chained log could not be written or read."""
