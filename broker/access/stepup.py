"""Step-up: a sensitive action needs a TOTP code confirmed a short while ago, per token.

The time of the last fresh second factor is kept on the bearer token's own row
(``Token.stepped_up_at``), so it holds on every broker replica and ends with the
token.  A full password+TOTP sign-in (a ``*`` session token) counts as a step-up
at the moment it was issued; an API token never does.  A code is checked by
:meth:`~broker.access.auth.AuthService.check_totp`, the front door's check: each
time step is accepted once (a replayed code is refused), and a wrong code writes
``user.mfa_failed`` and counts towards the lockout.  A good one writes
``user.step_up`` with the action it was asked for.

Which actions need it is the console's rule (:mod:`broker.console.stepup`);
this module only keeps and checks the time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from broker.access.auth import AuthService, TotpCheck, token_hash
from broker.access.model import Token, User
from broker.access.ports import Actor, Context

STEP_UP_S = 300  # a step-up is fresh for five minutes


def _token(ctx: Context, text: str) -> Token | None:
    with ctx.uow() as tx:
        tok = tx.one(Token, token_hash=token_hash(text))
    return tok if tok is not None and tok.revoked_at is None else None


def stepped_up_at(tok: Token) -> datetime | None:
    """When the token's holder last gave a fresh TOTP code under it."""
    if tok.stepped_up_at is not None:
        return tok.stepped_up_at
    if tok.kind == "session" and "*" in tok.scopes:
        return tok.created_at  # issued by a password+TOTP sign-in or a TOTP enrolment
    return None


def is_fresh(ctx: Context, text: str, *, window_s: int = STEP_UP_S) -> bool:
    """The token ``text`` stepped up within the last ``window_s`` seconds."""
    tok = _token(ctx, text)
    at = stepped_up_at(tok) if tok is not None else None
    now = ctx.now()
    return at is not None and now - timedelta(seconds=window_s) < at <= now


def step_up(
    ctx: Context, auth: AuthService, actor: Actor, text: str, code: str, action: str
) -> TotpCheck:
    """Check ``code`` for the holder of token ``text``; on success mark the token."""
    tok = _token(ctx, text)
    if tok is None or tok.user_id != actor.user_id:
        return TotpCheck(False, reason="no_token")
    now = ctx.now()
    check = auth.check_totp(actor.user_id, code[:32], now, actor.src_ip)
    if not check.ok:
        return check
    with ctx.uow() as tx:
        row = tx.one(Token, token_hash=token_hash(text))
        if row is None or row.revoked_at is not None:
            return TotpCheck(False, reason="no_token")
        row.stepped_up_at = now
        tx.save(row)
        ctx.emit("user.step_up", actor, Operation=action, details={"method": "totp"})
    return check


def password_change_required(ctx: Context, user_id: str) -> bool:
    """An admin set this person's password: they must choose their own first."""
    with ctx.uow() as tx:
        user = tx.get(User, user_id)
    return user is not None and user.password_change_required
