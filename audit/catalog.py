"""The catalog: every hoshu audit event type, defined once, as plain data.

:data:`EVENT_TYPES` is a tuple of frozen :class:`EventType` records and
:data:`CATALOG` the read-only mapping of the same records by name, built once
when this module is loaded.  Nothing is registered anywhere: the module holds
data and imports nothing of hoshu but its errors, so every reader (the envelope
in :mod:`audit.events`, masking, the docs generator, the Sentinel rules' test)
sees the same complete catalog whatever was imported first, and nobody can add,
replace or change a type at run time.

``docs/audit-events.md`` lists the same types; a test keeps the two equal.
Add a type here before emitting it anywhere; a name defined twice stops the
import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from audit.errors import UnknownEventType


class Classification(StrEnum):
    """What a column or detail may carry (see ``docs/audit-events.md``)."""

    PUBLIC = "public"
    SENSITIVE = "sensitive"
    SECRET = "secret"  # noqa: S105  (a classification, not a password)


class Schema(StrEnum):
    """The ASIM schema an event type is normalized to."""

    AUTHENTICATION = "Authentication"
    NETWORK_SESSION = "NetworkSession"
    AUDIT_EVENT = "AuditEvent"


class Severity(StrEnum):
    INFORMATIONAL = "Informational"
    LOW = "Low"
    MEDIUM = "Medium"
    HIGH = "High"


@dataclass(frozen=True, slots=True)
class EventType:
    """One event type: its schema, default severity and declared detail keys.

    ``details`` maps each detail key the type may carry to its classification;
    any other key is refused when an event is built.  ``enforced`` says whether
    delivery must succeed before the action proceeds (fail closed) or is best
    effort.  The record is immutable, ``details`` included.
    """

    name: str
    schema: Schema
    description: str
    severity: Severity = Severity.INFORMATIONAL
    details: Mapping[str, Classification] = field(default_factory=dict, hash=False)
    enforced: bool = True

    def __post_init__(self) -> None:
        # a read-only copy: the caller's dict can change nothing afterwards
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))


AUTH, NET, AUD = Schema.AUTHENTICATION, Schema.NETWORK_SESSION, Schema.AUDIT_EVENT
PUB, SEN, SEC = Classification.PUBLIC, Classification.SENSITIVE, Classification.SECRET

EVENT_TYPES: tuple[EventType, ...] = (
    # --- people signing in ---------------------------------------------------
    EventType(
        "user.login",
        AUTH,
        "A person signed in to the API or CLI (result says if it worked)",
        details={"method": PUB, "mfa": PUB, "password": SEC, "totp_code": SEC},
    ),
    EventType(
        "user.mfa_failed",
        AUTH,
        "A wrong, expired or replayed second factor",
        severity=Severity.MEDIUM,
        details={"method": PUB, "totp_code": SEC, "failures": PUB},
    ),
    EventType(
        "user.locked_out",
        AUTH,
        "Too many failures: the account is locked for a while",
        severity=Severity.HIGH,
        details={"failures": PUB, "window_s": PUB, "locked_until": PUB},
    ),
    EventType("user.logout", AUTH, "A bearer token or SSH certificate was given up"),
    # HTTP sign-in and credentials (closing bypass 7 and the sign-in findings)
    EventType(
        "user.login_flood",
        AUTH,
        "Failed sign-ins from one source beyond the per-minute burst, counted in one event",
        severity=Severity.MEDIUM,
        details={"count": PUB, "window_start": PUB, "window_s": PUB, "last": PUB, "source": PUB},
    ),
    EventType(
        "user.reauth_failed",
        AUTH,
        "A wrong current password when changing it (counts towards lockout)",
        severity=Severity.MEDIUM,
        details={"failures": PUB, "password": SEC},
    ),
    EventType(
        "user.step_up",
        AUTH,
        "A person confirmed a sensitive console action with a fresh TOTP code (step-up)",
        details={"method": PUB, "totp_code": SEC},
    ),
    EventType(
        "user.tokens_revoked",
        AUTH,
        "Every token of a person was revoked (password or TOTP reset, or an admin)",
        details={"reason": PUB, "tokens": PUB, "cert_serials": PUB},
    ),
    EventType(
        "ssh.login",
        AUTH,
        "An engineer authenticated (or failed to) at the SSH front door",
        details={
            "method": PUB,
            "key_fingerprint": PUB,
            "totp_code": SEC,
            "cert_serial": PUB,
            # a flood from one address: the rest of its minute summed in one event
            "count": PUB,
            "window_s": PUB,
        },
    ),
    EventType(
        "ssh.cert_issued",
        AUTH,
        "A short-lived SSH user certificate was issued after MFA",
        details={"cert_serial": PUB, "valid_until": PUB, "key_fingerprint": PUB},
    ),
    # one permission table for every route: certificate refusals are events too
    EventType(
        "ssh.cert_refused",
        AUTH,
        "An SSH certificate was refused (no MFA sign-in, role, key or grant)",
        severity=Severity.MEDIUM,
        details={"reason": PUB},
    ),
    EventType(
        "token.issued",
        AUTH,
        "An API token for automation was created",
        details={"token_id": PUB, "scopes": PUB, "expires": PUB, "token": SEC},
    ),
    EventType("token.revoked", AUTH, "An API token was revoked", details={"token_id": PUB}),
    # --- requests, approvals, grants ---------------------------------------------
    EventType(
        "request.created",
        AUD,
        "An engineer asked for access to instruments",
        details={
            "instruments": PUB,
            "ports": PUB,
            "file_transfer": PUB,
            "reason": SEN,
            "ticket": PUB,
            "work_plan": SEN,
            "start": PUB,
            "duration_s": PUB,
        },
    ),
    EventType(
        "request.approved",
        AUD,
        "An approver approved a request (one approval)",
        details={"comment": SEN, "approvals": PUB, "approvals_required": PUB},
    ),
    EventType("request.denied", AUD, "An approver denied a request", details={"comment": SEN}),
    EventType("request.expired", AUD, "A pending request expired without a decision"),
    EventType("request.cancelled", AUD, "The requester withdrew a pending request"),
    EventType(
        "request.refused",
        AUD,
        "A request or decision was refused (permission, policy, input)",
        severity=Severity.MEDIUM,
        details={"reason": PUB},
    ),
    EventType(
        "grant.created",
        AUD,
        "A time-boxed grant was issued",
        details={
            "instruments": PUB,
            "ports": PUB,
            "file_transfer": PUB,
            "starts": PUB,
            "ends": PUB,
            "work_plan": SEN,
            "ticket": PUB,
        },
    ),
    EventType("grant.activated", AUD, "A grant's window opened"),
    EventType(
        "grant.revoked",
        AUD,
        "A grant was revoked before its end",
        severity=Severity.LOW,
        details={"comment": SEN},
    ),
    EventType("grant.expired", AUD, "A grant's window closed"),
    EventType(
        "emergency.started",
        AUD,
        "Emergency access without prior approval (must be reviewed)",
        severity=Severity.HIGH,
        details={"reason": SEN, "ends": PUB, "instruments": PUB},
    ),
    EventType(
        "emergency.reviewed",
        AUD,
        "A hospital approver reviewed an emergency access",
        details={"verdict": PUB, "comment": SEN},
    ),
    EventType(
        "alert.raised",
        AUD,
        "Something a person must look at now",
        severity=Severity.HIGH,
        details={"alert": PUB, "reason": SEN},
    ),
    # approvers told by mail (broker.console.notify): never the message body or a secret
    EventType(
        "notification.sent",
        AUD,
        "A notification (request, emergency, decision, grant about to end, alert) was delivered"
        " by mail or webhook",
        details={"about": PUB, "recipients": PUB, "attempts": PUB},
    ),
    EventType(
        "notification.failed",
        AUD,
        "A notification could not be delivered after its retries so far"
        " (it stays in the outbox and is tried again)",
        severity=Severity.MEDIUM,
        details={"about": PUB, "recipients": PUB, "attempts": PUB, "reason": PUB},
    ),
    # --- sessions, forwards, files -----------------------------------------------
    EventType(
        "session.started",
        NET,
        "A recorded session to an instrument started",
        details={"kind": PUB, "command": SEN, "recording": PUB, "term": PUB},
    ),
    EventType(
        "session.ended",
        NET,
        "A session ended (result details give the reason)",
        # replica, ended_by: a session of a replica that died, ended by a survivor
        details={
            "kind": PUB,
            "exit_status": PUB,
            "recording": PUB,
            "replica": PUB,
            "ended_by": PUB,
        },
    ),
    EventType(
        "session.terminated",
        NET,
        "A session was ended by hoshu or an approver",
        severity=Severity.MEDIUM,
        details={"kind": PUB, "by": PUB, "recording": PUB},
    ),
    EventType(
        "session.refused",
        NET,
        "A session or channel was refused",
        severity=Severity.MEDIUM,
        details={"kind": PUB, "command": SEN, "reason": PUB},
    ),
    EventType(
        "session.warning",
        NET,
        "The engineer was warned that the grant ends soon",
        details={"remaining_s": PUB},
    ),
    EventType(
        "session.command",
        NET,
        "A command run in a session (exec or detected in a shell)",
        details={
            "command": SEN,
            "source": PUB,
            "prompt": SEN,
            "cwd": SEN,
            "offset": PUB,
            "truncated": PUB,
        },
    ),
    EventType(
        "session.command_denied",
        NET,
        "A shell command line matched a deny rule of the hospital and was not sent",
        severity=Severity.HIGH,
        details={"command": SEN, "pattern": PUB, "reason": PUB, "offset": PUB},
    ),
    EventType(
        "session.command_held",
        NET,
        "A shell command line matched a hold rule and waits for a hospital approver",
        severity=Severity.MEDIUM,
        details={"command": SEN, "pattern": PUB, "reason": PUB, "hold": PUB, "timeout_s": PUB},
    ),
    EventType(
        "session.command_released",
        NET,
        "A held command was allowed or refused by an approver, or its wait timed out",
        severity=Severity.MEDIUM,
        details={"command": SEN, "hold": PUB, "decision": PUB, "by": PUB},
    ),
    EventType(
        "forward.opened",
        NET,
        "A port forward to an instrument port was opened",
        details={"capture": PUB},
    ),
    EventType("forward.closed", NET, "A port forward closed (bytes and duration in columns)"),
    EventType("forward.refused", NET, "A port forward was refused", severity=Severity.MEDIUM),
    EventType(
        "file.transferred",
        NET,
        "A file moved through the broker (name, direction, size, hash)",
        details={"tool": PUB, "scan": PUB, "operation": PUB, "to": PUB, "via": PUB},
    ),
    EventType(
        "file.refused",
        NET,
        "A file transfer or change was refused (not granted, scan, spool limit, access ended)",
        severity=Severity.MEDIUM,
        details={
            "tool": PUB,
            "scan": PUB,
            "operation": PUB,
            "command": SEN,
            "reason": PUB,
            "via": PUB,
        },
    ),
    # file transfer: changes that move no file (remove, rename, symlink, setstat, mkdir, rmdir)
    EventType(
        "file.changed",
        NET,
        "A file or directory on the instrument was changed (operation says how)",
        details={"tool": PUB, "operation": PUB, "from_path": SEN, "link_target": SEN, "attrs": PUB},
    ),
    # --- gateways and instruments ------------------------------------------------
    EventType(
        "gateway.token_issued",
        AUD,
        "An enrolment token for a gateway was issued",
        details={"expires": PUB, "token": SEC},
    ),
    EventType(
        "gateway.enrolled",
        AUD,
        "A gateway enrolled its key with the broker",
        details={"key_fingerprint": PUB, "version": PUB},
    ),
    EventType(
        "gateway.enrollment_refused",
        AUD,
        "An enrolment was refused (reused, expired, forged)",
        severity=Severity.MEDIUM,
        details={"token": SEC},
    ),
    EventType(
        "gateway.enrollment_flood",
        AUD,
        "Refused enrolments with no valid token from one source beyond the per-minute burst, "
        "counted in one event",
        severity=Severity.MEDIUM,
        details={"count": PUB, "window_start": PUB, "window_s": PUB, "last": PUB, "source": PUB},
    ),
    EventType(
        "gateway.connected",
        NET,
        "A gateway's outbound tunnel came up",
        details={"key_fingerprint": PUB, "version": PUB, "mode": PUB, "clock_offset_s": PUB},
    ),
    EventType(
        "gateway.disconnected", NET, "A gateway's tunnel went down", details={"connected_s": PUB}
    ),
    EventType(
        "gateway.refused",
        NET,
        "A gateway connection was refused (unknown or revoked key, or a second tunnel "
        "of the gateway on one replica)",
        severity=Severity.MEDIUM,
        details={"key_fingerprint": PUB},
    ),
    EventType(
        "replica.peer_refused",
        NET,
        "A link between broker replicas was refused: the peer's key is not the one "
        "pinned for it in the replica table, or no key is pinned",
        severity=Severity.HIGH,
        details={"replica": PUB, "key_fingerprint": PUB},
    ),
    EventType(
        "gateway.paused",
        AUD,
        "The hospital pulled the gateway's kill switch",
        severity=Severity.MEDIUM,
        details={"by": SEN, "channels_closed": PUB},
    ),
    EventType(
        "gateway.resumed",
        AUD,
        "The hospital released the gateway's kill switch",
        details={"by": SEN, "paused_s": PUB},
    ),
    EventType(
        "gateway.channel_opened",
        NET,
        "The gateway opened a connection to a listed instrument",
        details={"channel": PUB},
    ),
    EventType(
        "gateway.channel_refused",
        NET,
        "The gateway refused a connection (not on its allowlist)",
        severity=Severity.MEDIUM,
        details={"channel": PUB},
    ),
    EventType("gateway.channel_closed", NET, "A gateway channel closed", details={"channel": PUB}),
    EventType(
        "gateway.inventory",
        AUD,
        "A gateway reported its instruments and their reachability",
        details={"instruments": PUB},
    ),
    EventType(
        "instrument.key_changed",
        AUD,
        "An instrument's SSH host key (or an RDP instrument's TLS certificate) changed: "
        "sessions blocked",
        severity=Severity.HIGH,
        details={"old_fingerprint": PUB, "new_fingerprint": PUB, "kind": PUB},
    ),
    EventType(
        "instrument.key_pinned",
        AUD,
        "The first TLS certificate seen of an RDP instrument was pinned",
        details={"fingerprint": PUB, "kind": PUB},
    ),
    EventType(
        "instrument.key_accepted",
        AUD,
        "An approver accepted an instrument's new host key",
        details={"fingerprint": PUB},
    ),
    # --- administration ------------------------------------------------------------
    EventType(
        "admin.change",
        AUD,
        "An administrative change (users, roles, contracts, policies, "
        "instruments, credentials); Operation, ObjectType and Object say what",
        details={"changes": SEN, "secret": SEC},
    ),
    EventType(
        "admin.refused",
        AUD,
        "An administrative action was refused",
        severity=Severity.MEDIUM,
        details={"reason": PUB},
    ),
    # --- reports -----------------------------------------------------------------
    EventType(
        "report.generated",
        AUD,
        "A work report was generated for an ended grant",
        details={"verdict": PUB, "report_sha256": PUB},
    ),
    EventType(
        "report.signed",
        AUD,
        "An approver signed off a work report",
        details={"comment": SEN, "report_sha256": PUB},
    ),
    EventType(
        "report.unsigned",
        AUD,
        "A work report is still unsigned after the allowed days",
        severity=Severity.MEDIUM,
        details={"age_days": PUB},
    ),
    # --- the audit system itself -------------------------------------------------
    EventType(
        "audit.checkpoint",
        AUD,
        "A signed checkpoint of the hash-chained log",
        details={
            "seq": PUB,
            "hash": PUB,
            "signature": PUB,
            "key_id": PUB,
            "alg": PUB,
            "key_version": PUB,
        },
    ),
    EventType(
        "audit.verification_failed",
        AUD,
        "Verification of the log found tampering",
        severity=Severity.HIGH,
        details={"position": PUB, "reason": PUB},
    ),
    EventType(
        "audit.sink_lag",
        AUD,
        "A sink is behind: events wait in its outbox",
        severity=Severity.MEDIUM,
        details={"sink": PUB, "lag_events": PUB, "lag_s": PUB, "last_error": PUB},
    ),
    EventType(
        "audit.retention_deleted",
        AUD,
        "Data past its retention period was deleted",
        details={"kind": PUB, "count": PUB, "before": PUB, "first_seq": PUB, "last_seq": PUB},
    ),
    EventType(
        "audit.verified",
        AUD,
        "The log was verified end to end and found intact",
        details={"count": PUB, "checkpoints": PUB, "last_hash": PUB},
    ),
    EventType(
        "audit.sink_recovered",
        AUD,
        "A lagging or failing sink caught up again",
        details={"sink": PUB, "lag_events": PUB},
    ),
    EventType(
        "audit.outbox_corrupt",
        AUD,
        "A sink's outbox cursor is unreadable: the sink is stopped "
        "until an operator resets it (nothing is dropped)",
        severity=Severity.HIGH,
        details={"sink": PUB, "reason": PUB},
    ),
    EventType(
        "audit.exported",
        AUD,
        "An auditor exported audit events",
        details={"format": PUB, "count": PUB, "filters": PUB},
    ),
    EventType(
        "recording.viewed",
        AUD,
        "Someone read or replayed a session recording",
        details={"recording": PUB},
    ),
    EventType(
        "recording.refused",
        AUD,
        "Access to a session recording was refused",
        severity=Severity.MEDIUM,
        details={"reason": PUB},
    ),
    EventType(
        "review.generated",
        AUD,
        "A periodic log review report was generated",
        details={"period": PUB, "findings": PUB, "report_sha256": PUB},
    ),
)


def _by_name(types: tuple[EventType, ...]) -> Mapping[str, EventType]:
    by_name: dict[str, EventType] = {}
    for t in types:
        if t.name in by_name:
            raise ValueError(f"event type {t.name!r} is defined twice")
        by_name[t.name] = t
    return MappingProxyType(by_name)


CATALOG: Mapping[str, EventType] = _by_name(EVENT_TYPES)
"""Every event type by name, in definition order; read-only."""


def event_type(name: str) -> EventType:
    """The catalog's record for ``name``; :class:`UnknownEventType` if there is none."""
    t = CATALOG.get(name)
    if t is None:
        raise UnknownEventType(f"event type {name!r} is not in the audit catalog")
    return t
