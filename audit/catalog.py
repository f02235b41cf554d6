"""The catalog: every hoshu audit event type, defined once.

``docs/audit-events.md`` lists the same types; a test keeps the two equal.
Add a type here before emitting it anywhere.
"""

from __future__ import annotations

from audit.events import Classification as C
from audit.events import Schema, Severity, define

AUTH, NET, AUD = Schema.AUTHENTICATION, Schema.NETWORK_SESSION, Schema.AUDIT_EVENT
PUB, SEN, SEC = C.PUBLIC, C.SENSITIVE, C.SECRET

# --- people signing in -------------------------------------------------------
define("user.login", AUTH, "A person signed in to the API or CLI (result says if it worked)",
       details={"method": PUB, "mfa": PUB, "password": SEC, "totp_code": SEC})
define("user.mfa_failed", AUTH, "A wrong, expired or replayed second factor",
       severity=Severity.MEDIUM, details={"method": PUB, "totp_code": SEC, "failures": PUB})
define("user.locked_out", AUTH, "Too many failures: the account is locked for a while",
       severity=Severity.HIGH, details={"failures": PUB, "window_s": PUB, "locked_until": PUB})
define("user.logout", AUTH, "A bearer token or SSH certificate was given up")
# HTTP sign-in and credentials (closing bypass 7 and the sign-in findings)
define("user.login_flood", AUTH,
       "Failed sign-ins from one source beyond the per-minute burst, counted in one event",
       severity=Severity.MEDIUM,
       details={"count": PUB, "window_start": PUB, "window_s": PUB, "last": PUB,
                "source": PUB})
define("user.reauth_failed", AUTH,
       "A wrong current password when changing it (counts towards lockout)",
       severity=Severity.MEDIUM, details={"failures": PUB, "password": SEC})
define("user.tokens_revoked", AUTH,
       "Every token of a person was revoked (password or TOTP reset, or an admin)",
       details={"reason": PUB, "tokens": PUB, "cert_serials": PUB})
define("ssh.login", AUTH, "An engineer authenticated (or failed to) at the SSH front door",
       details={"method": PUB, "key_fingerprint": PUB, "totp_code": SEC, "cert_serial": PUB,
                # a flood from one address: the rest of its minute summed in one event
                "count": PUB, "window_s": PUB})
define("ssh.cert_issued", AUTH, "A short-lived SSH user certificate was issued after MFA",
       details={"cert_serial": PUB, "valid_until": PUB, "key_fingerprint": PUB})
# one permission table for every route: certificate refusals are events too
define("ssh.cert_refused", AUTH, "An SSH certificate was refused (no MFA sign-in, role, key "
       "or grant)", severity=Severity.MEDIUM, details={"reason": PUB})
define("token.issued", AUTH, "An API token for automation was created",
       details={"token_id": PUB, "scopes": PUB, "expires": PUB, "token": SEC})
define("token.revoked", AUTH, "An API token was revoked", details={"token_id": PUB})

# --- requests, approvals, grants ---------------------------------------------
define("request.created", AUD, "An engineer asked for access to instruments",
       details={"instruments": PUB, "ports": PUB, "file_transfer": PUB, "reason": SEN,
                "ticket": PUB, "work_plan": SEN, "start": PUB, "duration_s": PUB})
define("request.approved", AUD, "An approver approved a request (one approval)",
       details={"comment": SEN, "approvals": PUB, "approvals_required": PUB})
define("request.denied", AUD, "An approver denied a request", details={"comment": SEN})
define("request.expired", AUD, "A pending request expired without a decision")
define("request.cancelled", AUD, "The requester withdrew a pending request")
define("request.refused", AUD, "A request or decision was refused (permission, policy, input)",
       severity=Severity.MEDIUM, details={"reason": PUB})
define("grant.created", AUD, "A time-boxed grant was issued",
       details={"instruments": PUB, "ports": PUB, "file_transfer": PUB, "starts": PUB,
                "ends": PUB, "work_plan": SEN, "ticket": PUB})
define("grant.activated", AUD, "A grant's window opened")
define("grant.revoked", AUD, "A grant was revoked before its end", severity=Severity.LOW,
       details={"comment": SEN})
define("grant.expired", AUD, "A grant's window closed")
define("emergency.started", AUD, "Emergency access without prior approval (must be reviewed)",
       severity=Severity.HIGH, details={"reason": SEN, "ends": PUB, "instruments": PUB})
define("emergency.reviewed", AUD, "A hospital approver reviewed an emergency access",
       details={"verdict": PUB, "comment": SEN})
define("alert.raised", AUD, "Something a person must look at now",
       severity=Severity.HIGH, details={"alert": PUB, "reason": SEN})

# --- sessions, forwards, files -----------------------------------------------
define("session.started", NET, "A recorded session to an instrument started",
       details={"kind": PUB, "command": SEN, "recording": PUB, "term": PUB})
define("session.ended", NET, "A session ended (result details give the reason)",
       details={"kind": PUB, "exit_status": PUB, "recording": PUB})
define("session.terminated", NET, "A session was ended by hoshu or an approver",
       severity=Severity.MEDIUM, details={"kind": PUB, "by": PUB, "recording": PUB})
define("session.refused", NET, "A session or channel was refused", severity=Severity.MEDIUM,
       details={"kind": PUB, "command": SEN})
define("session.warning", NET, "The engineer was warned that the grant ends soon",
       details={"remaining_s": PUB})
define("session.command", NET, "A command run in a session (exec or detected in a shell)",
       details={"command": SEN})
define("forward.opened", NET, "A port forward to an instrument port was opened",
       details={"capture": PUB})
define("forward.closed", NET, "A port forward closed (bytes and duration in columns)")
define("forward.refused", NET, "A port forward was refused", severity=Severity.MEDIUM)
define("file.transferred", NET, "A file moved through the broker (name, direction, size, hash)",
       details={"tool": PUB, "scan": PUB, "operation": PUB})
define("file.refused", NET, "A file transfer or change was refused (not granted, scan, spool "
       "limit, access ended)", severity=Severity.MEDIUM,
       details={"tool": PUB, "scan": PUB, "operation": PUB, "command": SEN})
# file transfer: changes that move no file (remove, rename, symlink, setstat, mkdir, rmdir)
define("file.changed", NET, "A file or directory on the instrument was changed (operation "
       "says how)", details={"tool": PUB, "operation": PUB, "from_path": SEN,
                             "link_target": SEN, "attrs": PUB})

# --- gateways and instruments ------------------------------------------------
define("gateway.token_issued", AUD, "An enrolment token for a gateway was issued",
       details={"expires": PUB, "token": SEC})
define("gateway.enrolled", AUD, "A gateway enrolled its key with the broker",
       details={"key_fingerprint": PUB, "version": PUB})
define("gateway.enrollment_refused", AUD, "An enrolment was refused (reused, expired, forged)",
       severity=Severity.MEDIUM, details={"token": SEC})
define("gateway.enrollment_flood", AUD,
       "Refused enrolments with no valid token from one source beyond the per-minute burst, "
       "counted in one event", severity=Severity.MEDIUM,
       details={"count": PUB, "window_start": PUB, "window_s": PUB, "last": PUB,
                "source": PUB})
define("gateway.connected", NET, "A gateway's outbound tunnel came up",
       details={"key_fingerprint": PUB, "version": PUB, "mode": PUB, "clock_offset_s": PUB})
define("gateway.disconnected", NET, "A gateway's tunnel went down",
       details={"connected_s": PUB})
define("gateway.refused", NET, "A gateway connection was refused (unknown or revoked key)",
       severity=Severity.MEDIUM, details={"key_fingerprint": PUB})
define("gateway.paused", AUD, "The hospital pulled the gateway's kill switch",
       severity=Severity.MEDIUM, details={"by": SEN, "channels_closed": PUB})
define("gateway.resumed", AUD, "The hospital released the gateway's kill switch",
       details={"by": SEN, "paused_s": PUB})
define("gateway.channel_opened", NET, "The gateway opened a connection to a listed instrument",
       details={"channel": PUB})
define("gateway.channel_refused", NET, "The gateway refused a connection (not on its allowlist)",
       severity=Severity.MEDIUM, details={"channel": PUB})
define("gateway.channel_closed", NET, "A gateway channel closed", details={"channel": PUB})
define("gateway.inventory", AUD, "A gateway reported its instruments and their reachability",
       details={"instruments": PUB})
define("instrument.key_changed", AUD, "An instrument's SSH host key changed: sessions blocked",
       severity=Severity.HIGH, details={"old_fingerprint": PUB, "new_fingerprint": PUB})
define("instrument.key_accepted", AUD, "An approver accepted an instrument's new host key",
       details={"fingerprint": PUB})

# --- administration ------------------------------------------------------------
define("admin.change", AUD, "An administrative change (users, roles, contracts, policies, "
       "instruments, credentials); Operation, ObjectType and Object say what",
       details={"changes": SEN, "secret": SEC})
define("admin.refused", AUD, "An administrative action was refused", severity=Severity.MEDIUM,
       details={"reason": PUB})

# --- reports -----------------------------------------------------------------
define("report.generated", AUD, "A work report was generated for an ended grant",
       details={"verdict": PUB, "report_sha256": PUB})
define("report.signed", AUD, "An approver signed off a work report",
       details={"comment": SEN, "report_sha256": PUB})
define("report.unsigned", AUD, "A work report is still unsigned after the allowed days",
       severity=Severity.MEDIUM, details={"age_days": PUB})

# --- the audit system itself -------------------------------------------------
define("audit.checkpoint", AUD, "A signed checkpoint of the hash-chained log",
       details={"seq": PUB, "hash": PUB, "signature": PUB, "key_id": PUB})
define("audit.verification_failed", AUD, "Verification of the log found tampering",
       severity=Severity.HIGH, details={"position": PUB, "reason": PUB})
define("audit.sink_lag", AUD, "A sink is behind: events wait in its outbox",
       severity=Severity.MEDIUM, details={"sink": PUB, "lag_events": PUB, "lag_s": PUB,
                                          "last_error": PUB})
define("audit.retention_deleted", AUD, "Data past its retention period was deleted",
       details={"kind": PUB, "count": PUB, "before": PUB, "first_seq": PUB, "last_seq": PUB})
define("audit.verified", AUD, "The log was verified end to end and found intact",
       details={"count": PUB, "checkpoints": PUB, "last_hash": PUB})
define("audit.sink_recovered", AUD, "A lagging or failing sink caught up again",
       details={"sink": PUB, "lag_events": PUB})
define("audit.outbox_corrupt", AUD, "A sink's outbox cursor is unreadable: the sink is stopped "
       "until an operator resets it (nothing is dropped)", severity=Severity.HIGH,
       details={"sink": PUB, "reason": PUB})
define("audit.exported", AUD, "An auditor exported audit events",
       details={"format": PUB, "count": PUB, "filters": PUB})
define("recording.viewed", AUD, "Someone read or replayed a session recording",
       details={"recording": PUB})
define("recording.refused", AUD, "Access to a session recording was refused",
       severity=Severity.MEDIUM, details={"reason": PUB})
define("review.generated", AUD, "A periodic log review report was generated",
       details={"period": PUB, "findings": PUB, "report_sha256": PUB})
