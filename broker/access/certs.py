"""SSH user certificates after issue: which serials may still sign in.

A certificate from ``POST /v1/ssh/certificate`` counts as both factors at the
SSH front door, so it must not outlive what it stands for.  Every issued
serial is recorded (:func:`record_cert`); the front door asks
:func:`cert_refusal` at each certificate sign-in.  Denied by default: a serial
that was never recorded, was revoked, belongs to someone else or is past its
end, and any account that is locked, deactivated or expired.
:func:`revoke_cert_serials` revokes a user's live certificates; sign-out,
revoking a user's tokens and a lockout call it inside their own transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from broker.access.model import SshCert, User
from broker.access.ports import Context, Tx

MAX_CERT_LIFETIME = timedelta(hours=8)  # a user certificate lasts at most this long


def record_cert(
    ctx: Context, user_id: str, serial: int, issued_at: datetime, valid_until: datetime
) -> None:
    """Remember an issued certificate; only recorded serials ever sign in."""
    with ctx.uow() as tx:
        tx.add(SshCert(ctx.new_id(), user_id, serial, issued_at, valid_until))


def revoke_cert_serials(tx: Tx, user_id: str, now: datetime, reason: str) -> list[int]:
    """Revoke every live certificate of ``user_id``; returns their serials."""
    revoked: list[int] = []
    for cert in tx.find(SshCert, user_id=user_id, revoked_at=None):
        if cert.valid_until <= now:
            continue  # over anyway
        cert.revoked_at = now
        cert.revoked_reason = reason
        tx.save(cert)
        revoked.append(cert.serial)
    return revoked


def cert_refusal(tx: Tx, user_id: str, serial: int, now: datetime) -> str | None:
    """None when certificate ``serial`` of ``user_id`` may sign in now, else the reason.

    The reason is shown to the engineer and written to the audit log."""
    user = tx.get(User, user_id)
    if user is None or not user.active or (user.expires_at is not None and user.expires_at <= now):
        return "account inactive or expired"
    if user.locked_until is not None and user.locked_until > now:
        return f"account locked until {user.locked_until:%H:%M} UTC"
    certs = [c for c in tx.find(SshCert, serial=serial) if c.user_id == user_id]
    if not certs:
        return "certificate unknown to this broker"
    if any(c.revoked_at is not None for c in certs):
        return "certificate revoked (signed out or credentials revoked)"
    if all(c.valid_until <= now for c in certs):
        return "certificate expired"
    return None
