"""Errors of the broker's SSH side: one tree per job.

Front door (engineer connections)::

    FrontDoorError
    ├── AccessDenied        no grant, unknown instrument, port or transfer not granted
    │   ├── RawPathRefused  a path around the recorder: a forward to sshd/RDP/VNC,
    │   │                   exec of a file-transfer program (refused whatever the grant)
    │   └── RoleRefused     the person's roles do not allow this SSH path
    ├── GatewayOffline      no tunnel to the instrument's hospital gateway
    ├── InstrumentError     the instrument refused or failed (credential, host key, network)
    └── RecordingError      the session recording cannot be written (fail closed)
        ├── RecordingLimit  the recording reached its size limit (the session ends)
        └── CaptureFailed   (broker.ssh.forward) a forward's byte capture cannot be written

Each carries a message fit for the engineer's terminal (no secrets) and a ``reason``
(the session-end or refusal reason written to the audit log).

Outside that tree, each caught where it is raised and turned into an answer there::

    Exception
    ├── CertificateRefused  (broker.ssh.ca) no user certificate: no grant time left, not a
    │                       key; the certificate route answers 403 ``no_grant``
    ├── ProtocolFailure     (broker.ssh.tunnel_link) a gateway broke the control protocol:
    │                       its connection is closed
    ├── SpoolFull           (broker.ssh.spool) an upload would pass a spool limit: the
    │                       transfer fails with ``reason`` ``spool_full``
    └── ValueError
        └── SshConfigError  ``hoshu ssh-config`` input is not a hoshu user or instrument
                            name (the CLI prints it and exits 2)
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


class SshConfigError(ValueError):
    """Bad input for the generated ssh_config (user or instrument names)."""
