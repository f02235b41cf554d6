"""Errors of the engineer front door.

The front door's own refusals, a branch of
:class:`broker.access.errors.SessionError` (the front door catches that root,
so an error of the tunnel or the recorder ends a session the same way)::

    FrontDoorError
    └── AccessDenied        no grant, unknown instrument, port or transfer not granted
        ├── RawPathRefused  a path around the recorder: a forward to sshd/RDP/VNC,
        │                   exec of a file-transfer program (refused whatever the grant)
        └── RoleRefused     the person's roles do not allow this SSH path

Each carries a message fit for the engineer's terminal (no secrets) and a ``reason``
(the session-end or refusal reason written to the audit log).

Outside that tree, each caught where it is raised and turned into an answer there::

    Exception
    ├── AccessError
    │   └── PermissionDenied
    │       └── CertificateRefused  (broker.frontdoor.ca) no user certificate: no grant
    │                               time left, not a key; the API answers 403 ``no_grant``
    ├── SpoolFull           (broker.frontdoor.spool) an upload would pass a spool limit:
    │                       the transfer fails with ``reason`` ``spool_full``
    └── ValueError
        └── SshConfigError  ``hoshu ssh-config`` input is not a hoshu user or instrument
                            name (the CLI prints it and exits 2)
"""

from __future__ import annotations

from broker.access.errors import SessionError


class FrontDoorError(SessionError):
    """Base of the front door's own refusals; ``str(exc)`` is shown to the engineer."""


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


class SshConfigError(ValueError):
    """Bad input for the generated ssh_config (user or instrument names)."""
