"""The console's pages: sign-in and sign-out, the approver's inbox, grants.

Routes are thin: each asks :func:`broker.console.web.page` for its action in the
permission table, calls the same services as the API (so the same checks and
the same audit events), and renders a template or redirects back with a
notice (post/redirect/get).  Refused or failed actions raise domain errors;
:func:`broker.console.install` shows them as a page.
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from broker.access.errors import AccessError, InvalidInput, NotFound
from broker.access.model import AccessRequest, Decision, Grant, GrantStatus, User
from broker.access.permissions import role_allows
from broker.access.services import Services
from broker.console import i18n
from broker.console.web import (
    PREFIX,
    FormDep,
    Session,
    check_post,
    client_ip,
    cookie_name,
    harden,
    language,
    page,
    redirect,
    render,
    safe_next,
    secure_cookies,
    services_of,
)

router = APIRouter(prefix=PREFIX, tags=["console"])

STATIC = {"console.css": "text/css; charset=utf-8", "live.js": "text/javascript; charset=utf-8"}
# notices a redirect may ask a page to show (?done=...): nothing else is shown
NOTICES = frozenset(
    {"approved", "approval_recorded", "denied", "revoked", "signed_out", "terminated"}
)
# why the sign-in page is shown (?m=...): only these say more than the page itself
LOGIN_ERRORS = {
    "locked_out": "login.locked_for",
    "source_throttled": "login.throttled",
    "token_expired": "login.expired",
    "unauthenticated": "login.session_ended",  # revoked: signed out elsewhere, new password
}


def lock_minutes(request: Request) -> int:
    """How long a lockout lasts at most, for the sign-in page to say."""
    return max(1, services_of(request).ctx.config.lockout_s // 60)


InboxSession = Annotated[Session, Depends(page("console.inbox"))]
GrantsSession = Annotated[Session, Depends(page("console.grants"))]


def zone_of(services: Services, session: Session) -> ZoneInfo:
    """The time zone of the caller's organisation (its policy's), Asia/Tokyo by default."""
    try:
        policy = services.estate.show_policy(session.actor, session.actor.org_id)
    except AccessError:
        return i18n.zone(None)
    return i18n.zone(policy.timezone)


def _notice(request: Request) -> str | None:
    done = request.query_params.get("done")
    return done if done in NOTICES else None


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The console's own style sheet and script (no CDN: everything is served by the broker)."""
    if name not in STATIC:
        raise NotFound("no such file")
    data = resources.files("broker.console").joinpath("static", name).read_bytes()
    response = Response(
        data, media_type=STATIC[name], headers={"Cache-Control": "public, max-age=3600"}
    )
    return harden(response, store=True)


# where a signed-in person starts: the first of these pages the permission table allows
START_PAGES = (
    ("console.inbox", "/inbox"),
    ("console.engineer", "/my/requests"),
    ("console.grants", "/grants"),
    ("console.admin", "/admin/people"),
    ("console.audit", "/audit"),
    ("notifications.show", "/admin/notifications"),  # a vendor's admin
)


@router.get("/")
def home(request: Request) -> Response:
    """The console's start: the first page the caller may open (approvers: the inbox;
    engineers: their requests; admins: people; auditors: the event search; a vendor's
    admin: the notifications); the
    signed-out go to the sign-in page (through the inbox, which sends them there)."""
    token = request.cookies.get(cookie_name(request)) or ""
    try:
        actor = services_of(request).auth.authenticate(token, client_ip(request))
    except AccessError:
        return redirect(f"{PREFIX}/inbox")
    if "enroll" in actor.scopes:  # signed in with the password, TOTP not set up yet
        return redirect(f"{PREFIX}/account/totp")
    for action, where in START_PAGES:
        if role_allows(actor.roles, action, actor.org_kind):
            return redirect(PREFIX + where)
    return redirect(f"{PREFIX}/inbox")


@router.get("/lang/{lang}")
def set_language(lang: str, request: Request, next: str | None = None) -> Response:
    """Switch the language (remembered in a cookie for a year) and go back."""
    response = redirect(safe_next(next))
    if lang in i18n.LANGS:
        response.set_cookie(
            i18n.LANG_COOKIE,
            lang,
            max_age=365 * 86400,
            path="/",
            secure=secure_cookies(request),
            httponly=True,
            samesite="strict",
        )
    return response


@router.get("/login")
def login_page(request: Request) -> Response:
    code = request.query_params.get("m", "")
    error = LOGIN_ERRORS.get(code)
    notice = "signed_out" if code == "signed_out_ok" else None
    return render(
        request,
        "login.html",
        error=error,
        notice=notice,
        username="",
        lock_minutes=lock_minutes(request),
    )


@router.post("/login")
def login(request: Request, form: FormDep) -> Response:
    """Password + TOTP, as ``POST /v1/auth/login``: the token becomes the session cookie.

    A refusal shows the sign-in page again with the API's reason (locked, throttled,
    or one "invalid" for every wrong part); ``user.login`` events are the auth
    service's.  A person without TOTP enrolled gets the API's enrolment-only token as
    the session and goes to the enrolment page (:mod:`broker.console.account`)."""
    request.state.action = "console.login"
    check_post(request, None)
    services = services_of(request)
    username = form.get("username", "")[:200]
    try:
        issued = services.auth.login(
            username,
            form.get("password", ""),
            form.get("totp", "").strip() or None,
            client_ip(request),
        )
    except AccessError as exc:
        key = {"locked_out": "login.locked_for", "source_throttled": "login.throttled"}.get(
            exc.code, "login.invalid"
        )
        return render(
            request,
            "login.html",
            status=401,
            error=key,
            notice=None,
            username=username,
            lock_minutes=lock_minutes(request),
        )
    # without TOTP yet: the enrolment-only session opens the enrolment page, nothing else
    start = "/account/totp" if issued.totp_enrolment_required else "/"
    response = redirect(PREFIX + start)
    ttl = max(1, int((issued.expires_at - services.ctx.now()).total_seconds()))
    response.set_cookie(
        cookie_name(request),
        issued.token,
        max_age=ttl,
        path="/",
        secure=secure_cookies(request),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout")
def logout(request: Request, session: Annotated[Session, Depends(page("auth.logout"))]) -> Response:
    """Sign out: the session token is revoked (with its SSH certificates), the cookie cleared."""
    services_of(request).auth.logout(session.actor, session.token)
    response = redirect(f"{PREFIX}/login?m=signed_out_ok")
    response.delete_cookie(
        cookie_name(request),
        path="/",
        secure=secure_cookies(request),
        httponly=True,
        samesite="strict",
    )
    return response


# --- the approver's inbox ------------------------------------------------------------


def _window(r: AccessRequest, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "start": i18n.local_time(r.start_at, tz) if r.start_at else None,
        "hours": r.duration_s // 3600,
        "minutes": (r.duration_s % 3600) // 60,
    }


@router.get("/inbox")
def inbox(request: Request, session: InboxSession) -> Response:
    """Pending requests of the approver's own hospital (the request service's visibility),
    each with who asks, for what, when, why, and the approvals so far."""
    services = services_of(request)
    actor = session.actor
    services.grants.sweep()
    tz = zone_of(services, session)
    pending = services.requests.list_requests(actor, "pending")
    # the decisions on the requests the service let this caller see, in one query
    with services.ctx.uow() as tx:
        found = (
            tx.find(Decision, request_id=[r.id for r in pending], order_by="at") if pending else []
        )
        # each account is one named person: show the name with the login
        ids = sorted({r.requester_id for r in pending} | {d.approver_id for d in found})
        people = {
            u.id: f"{u.full_name} ({u.name})" if u.full_name else u.name
            for u in (tx.find(User, id=ids) if ids else [])
        }
    decisions: dict[str, list[Decision]] = {}
    for d in found:
        decisions.setdefault(d.request_id, []).append(d)
    vendors: dict[str, str] = {}
    for r in pending:
        if r.vendor_id not in vendors:
            org = services.people.org_of(r.vendor_id)
            vendors[r.vendor_id] = org.name if org else ""
    items = []
    for r in pending:
        mine = decisions.get(r.id, [])
        approvals = [d for d in mine if d.verdict == "approve"]
        items.append(
            {
                "r": r,
                "engineer": people.get(r.requester_id, ""),
                "vendor": vendors.get(r.vendor_id, ""),
                "window": _window(r, tz),
                "created": i18n.local_time(r.created_at, tz),
                "expires": i18n.local_time(r.expires_at, tz),
                "approvals": [
                    {
                        "by": people.get(d.approver_id, ""),
                        "at": i18n.local_time(d.at, tz),
                        "comment": d.comment,
                    }
                    for d in approvals
                ],
                "mine": any(d.approver_id == actor.user_id for d in mine),
                "own": r.requester_id == actor.user_id,
            }
        )
    return render(
        request,
        "inbox.html",
        items=items,
        notice=_notice(request),
        tz=str(tz.key),
        now=i18n.local_time(services.ctx.now(), tz),
    )


def _comment(form: dict[str, str]) -> str:
    comment = form.get("comment", "").strip()
    if len(comment) > 2000:
        raise InvalidInput("the comment is too long (2000 characters at most)")
    return comment


@router.post("/requests/{request_id}/approve")
def approve(
    request_id: str,
    request: Request,
    session: Annotated[Session, Depends(page("requests.approve"))],
) -> Response:
    """Approve, as ``POST /v1/requests/{id}/approve``; with two approvers needed the
    first approval is recorded and the request stays in the inbox."""
    view = services_of(request).requests.approve(
        session.actor, request_id, _comment(dict(session.form))
    )
    done = "approved" if view.grant is not None else "approval_recorded"
    return redirect(f"{PREFIX}/inbox?done={done}")


@router.post("/requests/{request_id}/deny")
def deny(
    request_id: str, request: Request, session: Annotated[Session, Depends(page("requests.deny"))]
) -> Response:
    services_of(request).requests.deny(session.actor, request_id, _comment(dict(session.form)))
    return redirect(f"{PREFIX}/inbox?done=denied")


# --- grants ------------------------------------------------------------------------


def _grant_row(g: Grant, people: dict[str, str], tz: ZoneInfo) -> dict[str, Any]:
    return {
        "g": g,
        "engineer": people.get(g.user_id, ""),
        "starts": i18n.local_time(g.starts_at, tz),
        "ends": i18n.local_time(g.ends_at, tz),
        "closed": i18n.local_time(g.closed_at, tz),
        "closed_by": people.get(g.closed_by or "", ""),
    }


@router.get("/grants")
def grants(request: Request, session: GrantsSession) -> Response:
    """Grants of the approver's hospital: active, upcoming, and the last ended ones."""
    services = services_of(request)
    services.grants.sweep()
    tz = zone_of(services, session)
    now: datetime = services.ctx.now()
    found = services.grants.list_grants(session.actor)
    people = services.people.names(
        {g.user_id for g in found} | {g.closed_by for g in found if g.closed_by}
    )
    active = [g for g in found if g.status == GrantStatus.ACTIVE]
    upcoming = [g for g in found if g.status == GrantStatus.APPROVED and g.starts_at > now]
    ended = [g for g in found if g.status not in (GrantStatus.ACTIVE, GrantStatus.APPROVED)]
    ended = sorted(ended, key=lambda g: g.closed_at or g.ends_at, reverse=True)[:50]
    return render(
        request,
        "grants.html",
        notice=_notice(request),
        tz=str(tz.key),
        active=[_grant_row(g, people, tz) for g in reversed(active)],
        upcoming=[_grant_row(g, people, tz) for g in upcoming],
        ended=[_grant_row(g, people, tz) for g in ended],
    )


@router.post("/grants/{grant_id}/revoke")
def revoke(
    grant_id: str, request: Request, session: Annotated[Session, Depends(page("grants.revoke"))]
) -> Response:
    """Revoke, as ``POST /v1/grants/{id}/revoke``: live sessions under it end."""
    services_of(request).grants.revoke(session.actor, grant_id, _comment(dict(session.form)))
    return redirect(f"{PREFIX}/grants?done=revoked")


def error_page(request: Request, status: int, code: str, detail: str = "") -> Response:
    """The page for a refused or failed console action (its event is already written)."""
    if status == 401:
        response = redirect(f"{PREFIX}/login?m={code if code in LOGIN_ERRORS else 'signed_out'}")
        response.delete_cookie(
            cookie_name(request),
            path="/",
            secure=secure_cookies(request),
            httponly=True,
            samesite="strict",
        )
        return response
    key = {
        403: "error.forbidden",
        404: "error.not_found",
        409: "error.conflict",
        410: "error.conflict",
        413: "error.too_large",
        422: "error.invalid",
        503: "error.unavailable",
    }.get(status, "error.generic")
    if code == "csrf_failed":
        key = "error.csrf"
    elif code == "policy_violation":
        key = "error.policy"
    return render(
        request, "error.html", status=status, error=key, detail=detail, lang_now=language(request)
    )
