"""Errors of the SSH front door.

Error tree::

    FrontDoorError
    ├── AccessDenied        no grant, unknown instrument, port or transfer not granted
    │   └── RawPathRefused  a path around the recorder: a forward to sshd/RDP/VNC,
    │                       exec of a file-transfer program (refused whatever the grant)
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


class RawPathRefused(AccessDenied):
    """A raw path around the recorder or the file checks (``reason`` says which)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RoleRefused(AccessDenied):
    """The person's roles do not allow this SSH path (the permission table)."""

    reason = "role"


class GatewayOffline(FrontDoorError):
    reason = "gateway_offline"


class InstrumentError(FrontDoorError):
    reason = "instrument_error"


class RecordingError(FrontDoorError):
    reason = "recording_failed"


class RecordingLimit(RecordingError):
    reason = "recording_limit"
