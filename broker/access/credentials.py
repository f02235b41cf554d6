"""Revoking everything a person signed in with: bearer tokens, API tokens, SSH certificates.

Called inside the transaction that changes the credential (a new password, a
TOTP reset) or by an admin, so the change and the revocation commit together
or not at all.  What was issued under the old credential stops working at the
next request; SSH certificates land on the serial deny-list that the front
door checks at every certificate sign-in.  One ``user.tokens_revoked`` says
what was revoked and why (never the token text).
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.access import certs
from broker.access.model import Token, User
from broker.access.ports import Actor, Context, Tx


@dataclass(frozen=True, slots=True)
class Revoked:
    tokens: int
    cert_serials: tuple[int, ...]


def revoke_all(
    ctx: Context, tx: Tx, actor: Actor | None, user: User, reason: str, *, keep_token_hash: str = ""
) -> Revoked:
    """Revoke every live token and SSH certificate of ``user`` (but the token the
    person is using to change their own password: ``keep_token_hash``); one event."""
    now = ctx.now()
    count = 0
    for tok in tx.find(Token, user_id=user.id, revoked_at=None):
        if tok.expires_at <= now or (keep_token_hash and tok.token_hash == keep_token_hash):
            continue
        tok.revoked_at = now
        tx.save(tok)
        count += 1
    serials = tuple(certs.revoke_cert_serials(tx, user.id, now, reason))
    ctx.emit(
        "user.tokens_revoked",
        actor,
        ObjectType="user",
        Object=user.name,
        EventResultDetails=reason,
        details={"reason": reason, "tokens": count, "cert_serials": [str(s) for s in serials]},
    )
    return Revoked(count, serials)
