"""Errors of the SSH front door.

Error tree::

    FrontDoorError
    ├── AccessDenied        no grant, unknown instrument, port or transfer not granted
    ├── GatewayOffline      no tunnel to the instrument's hospital gateway
    ├── InstrumentError     the instrument refused or failed (credential, host key, network)
    └── RecordingError      the session recording cannot be written (fail closed)
        └── RecordingLimit  the recording reached its size limit (the session ends)

Each carries a message fit for the engineer's terminal (no secrets).
"""

from __future__ import annotations


class FrontDoorError(Exception):
    """Base of the front door's errors; ``str(exc)`` is shown to the engineer."""

    reason = "error"


class AccessDenied(FrontDoorError):
    reason = "no_grant"


class GatewayOffline(FrontDoorError):
    reason = "gateway_offline"


class InstrumentError(FrontDoorError):
    reason = "instrument_error"


class RecordingError(FrontDoorError):
    reason = "recording_failed"


class RecordingLimit(RecordingError):
    reason = "recording_limit"
