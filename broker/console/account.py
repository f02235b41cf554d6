"""The console's account pages: TOTP enrolment with a QR code, password change, step-up.

* **Enrolment.**  A person without TOTP who signs in with their password gets the
  API's enrolment-only token (it opens only ``totp.enroll``, ``me.show`` and
  sign-out) as the session cookie and lands on ``/console/account/totp``: a QR code
  (an SVG drawn on the server from the ``otpauth://`` URI, inline, no script) and
  the same secret as text for typing in.  The secret is the one
  :meth:`~broker.access.auth.AuthService.totp_begin` sealed for the account; it is
  shown again on a reload rather than replaced, is never in a URL or a log, and
  the page is ``no-store`` like every console page.  A first good code calls
  :meth:`~broker.access.auth.AuthService.totp_confirm` (``admin.change``
  ``totp_enrolled``, as through the API); only then is the session a full one: the
  enrolment token is given up and the full token becomes the cookie.
* **Password.**  The current password and the new one twice;
  :meth:`~broker.access.auth.AuthService.change_password`, the API's, with its
  policy, its events (``user.reauth_failed`` and the lockout count for a wrong
  current password, ``admin.change`` ``password_changed``) and its revocation of
  every other token and SSH certificate of the account.  When an admin set the
  password, every other page sends the person here first
  (:mod:`broker.console.stepup`).
* **Step-up.**  :func:`step_up_page` shows the form :class:`StepUpNeeded` asks for.
"""

from __future__ import annotations

from typing import Annotated, Any

import qrcode
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from markupsafe import Markup

from broker.access import totp
from broker.access.errors import AccessError, Conflict
from broker.access.model import User
from broker.console.routes import error_page
from broker.console.stepup import FIELD, PasswordChangeNeeded, StepUpNeeded
from broker.console.web import (
    PREFIX,
    Session,
    cookie_name,
    page,
    redirect,
    render,
    secure_cookies,
    services_of,
)

router = APIRouter(prefix=PREFIX, tags=["console"])

ShowSession = Annotated[Session, Depends(page("me.show"))]
EnrolSession = Annotated[Session, Depends(page("totp.enroll"))]
PasswordSession = Annotated[Session, Depends(page("me.password"))]

NOTICES = frozenset({"password_changed", "totp_enrolled"})
# the password page's messages for the API's refusals (by error code)
PASSWORD_ERRORS = {
    "weak_password": "password.weak",
    "forbidden": "password.wrong_current",
    "locked_out": "login.locked_out",
}


# --- the QR code -----------------------------------------------------------------------


def qr_svg(text: str) -> Markup:
    """``text`` as a QR code: an SVG of dark squares on white, numbers only (nothing of
    ``text`` is in the markup but its picture), to be put inline in the page."""
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
    qr.add_data(text)
    qr.make(fit=True)
    matrix: list[list[bool]] = qr.get_matrix()
    size = len(matrix)
    path = "".join(
        f"M{x},{y}h1v1h-1z" for y, row in enumerate(matrix) for x, dark in enumerate(row) if dark
    )
    return Markup(  # noqa: S704  (integers and fixed text only)
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" '
        f'width="{size * 6}" height="{size * 6}" shape-rendering="crispEdges" '
        f'role="img" aria-labelledby="qr-title" id="totp-qr">'
        f'<title id="qr-title">QR</title>'
        f'<rect width="{size}" height="{size}" fill="#fff"/>'
        f'<path d="{path}" fill="#000"/></svg>'
    )


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _pending_secret(request: Request, session: Session) -> str:
    """The secret being enrolled: the one already sealed for the account (a reload shows
    the same), else a new one from :meth:`~broker.access.auth.AuthService.totp_begin`."""
    services = services_of(request)
    with services.ctx.uow() as tx:
        user = tx.get(User, session.actor.user_id)
    if user is None or user.totp_enrolled:
        raise Conflict("TOTP is already enrolled; an admin must reset it")
    if not user.totp_secret_enc:
        services.auth.totp_begin(session.actor)
        with services.ctx.uow() as tx:
            user = tx.get(User, session.actor.user_id)
        assert user is not None
    return services.ctx.secrets.open(user.totp_secret_enc)


def _enrol_page(request: Request, session: Session, *, error: str | None, status: int) -> Response:
    secret = _pending_secret(request, session)
    uri = totp.provisioning_uri(secret, session.actor.username)
    return render(
        request,
        "account_totp.html",
        status=status,
        qr=qr_svg(uri),
        secret=_grouped(secret),
        issuer=totp.ISSUER,
        account=session.actor.username,
        error=error,
    )


def set_session_cookie(request: Request, response: Response, token: str, ttl_s: int) -> None:
    response.set_cookie(
        cookie_name(request),
        token,
        max_age=max(1, ttl_s),
        path="/",
        secure=secure_cookies(request),
        httponly=True,
        samesite="strict",
    )


# --- pages ------------------------------------------------------------------------------


@router.get("/account")
def account(request: Request, session: ShowSession) -> Response:
    """Who is signed in, whether TOTP is enrolled, and the way to the password page."""
    services = services_of(request)
    user = services.people.show_user(session.actor, session.actor.user_id)
    done = request.query_params.get("done")
    return render(
        request,
        "account.html",
        user=user,
        notice=done if done in NOTICES else None,
    )


@router.get("/account/totp")
def totp_page(request: Request, session: EnrolSession) -> Response:
    return _enrol_page(request, session, error=None, status=200)


@router.post("/account/totp")
def totp_confirm(request: Request, session: EnrolSession) -> Response:
    """The first code finishes enrolment (the API's ``POST /v1/auth/totp/confirm``)."""
    services = services_of(request)
    code = session.form.get("code", "").strip()[:12]
    try:
        issued = services.auth.totp_confirm(session.actor, code)
    except AccessError as exc:
        if exc.code != "invalid_totp":
            raise
        return _enrol_page(request, session, error="totp.wrong_code", status=422)
    # the enrolment-only token is given up; the full one is the session from now on
    services.auth.logout(session.actor, session.token)
    response = redirect(f"{PREFIX}/account?done=totp_enrolled")
    ttl = int((issued.expires_at - services.ctx.now()).total_seconds())
    set_session_cookie(request, response, issued.token, ttl)
    return response


def _password_page(
    request: Request, *, error: str | None, detail: str = "", status: int = 200
) -> Response:
    must = request.query_params.get("m") == "must_change"
    return render(
        request, "account_password.html", status=status, error=error, detail=detail, must=must
    )


@router.get("/account/password")
def password_page(request: Request, session: PasswordSession) -> Response:
    return _password_page(request, error=None)


@router.post("/account/password")
def change_password(request: Request, session: PasswordSession) -> Response:
    """As ``POST /v1/me/password``: a refusal is the API's (its status, its events) and
    shows this page again saying why; nothing changes."""
    form = session.form
    new = form.get("new", "")
    if not form.get("current") or not new:
        return _password_page(request, error="password.missing", status=422)
    if new != form.get("new2", ""):
        return _password_page(request, error="password.mismatch", status=422)

    def refused(request: Request, status: int, code: str, detail: str = "") -> Response:
        key = PASSWORD_ERRORS.get(code, "password.failed")
        if code == "locked_out":
            return error_page(request, 401, code, detail)
        shown = detail if code == "weak_password" else ""
        return _password_page(request, error=key, detail=shown, status=status)

    request.state.error_page = refused  # the console's error handler asks it
    services_of(request).auth.change_password(
        session.actor, form.get("current", ""), new, session.token
    )
    return redirect(f"{PREFIX}/account?done=password_changed")


# --- the step-up form and the password-change redirect (exception handlers) ------------


async def step_up_page(request: Request, exc: Exception) -> Response:
    """The form for a fresh TOTP code; it sends the action's own fields again."""
    assert isinstance(exc, StepUpNeeded)
    fields: list[tuple[str, Any]] = sorted(exc.fields.items())
    return render(
        request,
        "account_stepup.html",
        status=403,
        target=request.url.path,
        fields=fields,
        field_name=FIELD,
        error=exc.error,
    )


async def password_first(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PasswordChangeNeeded)
    return redirect(f"{PREFIX}/account/password?m=must_change")
