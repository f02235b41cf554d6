"""The console's account gate: step-up before sensitive actions, a pending password change.

:func:`gate` runs inside :func:`broker.console.web.page`, after the permission table
and the CSRF/Origin check, for every console request, cookie or Bearer alike:

* **Account state.**  While the account is locked the session ends (its token is
  revoked, the sign-in page says why).  When an admin set the password, every page
  but the account's own (:data:`WHILE_PASSWORD_CHANGE`) sends the person to the
  password page first.
* **Step-up.**  A POST whose action the permission table gives the ``decisions`` or
  ``admin`` scope (approve, deny, revoke, terminate, accept a host key, sign a
  report, every admin change; :func:`needs_step_up`) proceeds only when the
  session's token stepped up in the last five minutes
  (:mod:`broker.access.stepup`, kept on the token's row, so every replica agrees).
  Otherwise the action is not run and :class:`StepUpNeeded` shows a form asking for
  a TOTP code that sends the same fields again with ``stepup_totp``; a good code
  (each time step once) marks the token and the action proceeds in that same
  request.  A wrong or replayed code is ``user.mfa_failed`` and counts towards
  the lockout; the lockout it causes ends the session.
* **Secrets are never sent back.**  The step-up form carries the ordinary fields as
  hidden inputs, but never a secret one (:data:`SECRET_FIELDS`: passwords, a
  webhook's key, a Teams URL, codes): those travel as one value sealed with the
  control plane's secret box (:data:`SEALED`), bound to the session's token, the
  action and the path, for :data:`SEALED_TTL_S` seconds.  :func:`gate` opens it
  back into the form before anything else; one that does not open, is another
  session's or action's, or is too old is :class:`PermissionDenied`
  (``stepup_form_expired``: a refusal event, nothing done, the person fills the form
  in again).

The rule is derived from the table, not listed per route, so a console route added
later is covered the moment it asks :func:`~broker.console.web.page` for its action.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from fastapi import Request

from broker.access import stepup
from broker.access.errors import AccessError, PermissionDenied, Unauthenticated
from broker.access.model import User
from broker.access.permissions import PERMISSIONS
from broker.access.ports import Actor
from broker.access.services import Services

STEP_UP_SCOPES = frozenset({"decisions", "admin"})
FIELD = "stepup_totp"  # the form field that carries the step-up code
SEALED = "stepup_sealed"  # the form field that carries the secret fields, sealed
SEALED_TTL_S = 300
# fields whose value is never written into a page: passwords, keys, bearer URLs, codes
SECRET_FIELDS = frozenset(
    {"password", "current", "new", "new2", "webhook_secret", "teams_url", "totp", "code"}
)
# what a person whose password an admin set may still open
WHILE_PASSWORD_CHANGE = frozenset({"me.password", "me.show", "auth.logout", "totp.enroll"})


class StepUpNeeded(Exception):
    """The action needs a fresh TOTP code: show the step-up form (nothing was done)."""

    def __init__(
        self, action: str, fields: Mapping[str, str], error: str | None, sealed: str = ""
    ) -> None:
        super().__init__(action)
        self.action = action
        # what the form may show again: never a secret field (those are in ``sealed``)
        self.fields = {
            k: v for k, v in fields.items() if k not in SECRET_FIELDS and k not in (FIELD, SEALED)
        }
        if sealed:
            self.fields[SEALED] = sealed
        self.error = error  # a message key, or None on the first ask


class PasswordChangeNeeded(Exception):
    """An admin set this person's password: the password page comes first."""


def needs_step_up(action: str, method: str) -> bool:
    """A state change whose permission asks the ``decisions`` or ``admin`` scope."""
    perm = PERMISSIONS.get(action)
    return method == "POST" and (perm is None or perm.scope in STEP_UP_SCOPES)


def _binding(token: str, action: str, path: str) -> str:
    return hashlib.sha256(f"{token}\n{action}\n{path}".encode()).hexdigest()


def seal_secrets(
    services: Services, token: str, action: str, path: str, form: Mapping[str, str]
) -> str:
    """The form's secret fields sealed for this token, action and path ('' when none)."""
    secret = {k: v for k, v in form.items() if k in SECRET_FIELDS and v}
    if not secret:
        return ""
    until = services.ctx.now().timestamp() + SEALED_TTL_S
    body = {"b": _binding(token, action, path), "u": until, "f": secret}
    return services.ctx.secrets.seal(json.dumps(body, separators=(",", ":")))


def _unseal(services: Services, token: str, action: str, path: str, sealed: str) -> dict[str, str]:
    """The secret fields ``sealed`` carries; :class:`PermissionDenied` unless it opens,
    is this token's, action's and path's, and is not too old."""
    expired = PermissionDenied(
        "this confirmation form has expired or is not this session's: fill in the form again",
        code="stepup_form_expired",
    )
    try:
        body = json.loads(services.ctx.secrets.open(sealed))
    except (AccessError, ValueError) as exc:
        raise expired from exc
    fields = body.get("f") if isinstance(body, dict) else None
    if (
        not isinstance(fields, dict)
        or body.get("b") != _binding(token, action, path)
        or not isinstance(body.get("u"), int | float)
        or services.ctx.now().timestamp() > body["u"]
    ):
        raise expired
    return {str(k): str(v) for k, v in fields.items() if k in SECRET_FIELDS}


def gate(request: Request, actor: Actor, token: str, action: str, form: dict[str, str]) -> None:
    """Raise unless ``actor`` (holding ``token``) may go on to ``action`` now.

    A sealed set of secret fields (:data:`SEALED`, from the step-up form) is opened back
    into ``form`` first, in place: the route then reads the form as it was first sent."""
    services: Services = request.app.state.services
    ctx = services.ctx
    path = request.url.path
    sealed = form.pop(SEALED, "")
    if sealed and request.method == "POST":
        form.update(_unseal(services, token, action, path, sealed))
    now = ctx.now()
    with ctx.uow() as tx:
        user = tx.get(User, actor.user_id)
    if user is not None and user.locked_until is not None and user.locked_until > now:
        services.auth.logout(actor, token)
        raise Unauthenticated("the account is locked for a while", code="locked_out")
    if (
        user is not None
        and user.password_change_required
        and action not in WHILE_PASSWORD_CHANGE
        and "enroll" not in actor.scopes
    ):
        raise PasswordChangeNeeded(action)
    if not needs_step_up(action, request.method) or stepup.is_fresh(ctx, token):
        return
    code = form.get(FIELD, "").strip()
    if not code:
        raise StepUpNeeded(action, form, None, seal_secrets(services, token, action, path, form))
    check = stepup.step_up(ctx, services.auth, actor, token, code, action)
    if check.ok:
        return
    if check.locked:
        services.auth.logout(actor, token)
        raise Unauthenticated("too many failed codes: the account is locked", code="locked_out")
    sealed = seal_secrets(services, token, action, path, form)
    raise StepUpNeeded(action, form, "stepup.wrong", sealed)
