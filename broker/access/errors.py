"""Errors of the control-plane domain.

One tree; the API maps each class to one HTTP status in one place
(:mod:`broker.api.errors`)::

    AccessError                     base, never raised directly
    ├── InvalidInput        400/422 bad values, policy limits exceeded
    │   └── PolicyViolation         the hospital policy refuses (duration, hours, ...)
    ├── Unauthenticated     401     no, expired, revoked or unknown credentials
    │   └── LockedOut               too many failures: try later
    ├── PermissionDenied    403     role, organisation or scope does not allow it
    ├── NotFound            404     no such object (or not visible to the caller)
    ├── Conflict            409     duplicate name, state does not allow it
    │   └── IllegalTransition       a state machine refused the transition
    ├── Gone                410     single-use thing used, or expired
    └── Unavailable         503     a part it needs is not running (nothing changed)

A second tree for an engineer's SSH session: refused, or ended, for a reason
the engineer reads on their terminal (``str(exc)``, never a secret) and the
audit log records (``reason``).  Each part of the broker raises its own
branch; the front door catches the root::

    SessionError                    base, never raised directly
    ├── FrontDoorError              (broker.frontdoor.errors) grants, roles, raw paths
    ├── GatewayOffline, InstrumentError
    │                               (broker.tunnel.errors) the route to the instrument
    └── RecordingError              (broker.live.errors) the recording cannot be written
"""

from __future__ import annotations


class AccessError(Exception):
    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(AccessError):
    code = "invalid_input"


class PolicyViolation(InvalidInput):
    code = "policy_violation"


class Unauthenticated(AccessError):
    code = "unauthenticated"


class LockedOut(Unauthenticated):
    code = "locked_out"


class PermissionDenied(AccessError):
    code = "forbidden"


class NotFound(AccessError):
    code = "not_found"


class Conflict(AccessError):
    code = "conflict"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class Gone(AccessError):
    code = "gone"


class Unavailable(AccessError):
    code = "unavailable"


class SessionError(Exception):
    """An engineer's session is refused or ends; ``str(exc)`` is shown to them."""

    reason = "error"
