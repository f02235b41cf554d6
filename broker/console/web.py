"""The console's transport rules: session cookie, CSRF, security headers, rendering.

Session: the console does not keep its own sessions.  Signing in calls the same
:meth:`~broker.access.auth.AuthService.login` as ``POST /v1/auth/login`` and keeps
the bearer token it returns in an HttpOnly, SameSite=Strict cookie
(``__Host-hoshu_session``, Secure).  The token row is the server-side session:
it expires (``access_token_ttl_s``), signing out or a new password revokes it,
and an inactive or expired account or a refused source address ends it
(:meth:`~broker.access.auth.AuthService.authenticate` checks each request).
Only when the broker's public URL is plain HTTP on a loopback address (the demo,
the tests) is the cookie sent without Secure, under the name ``hoshu_session``.

Every console route asks :func:`page` for its action in the permission table
(:data:`broker.access.permissions.PERMISSIONS`); deny by default.  :func:`page` then
asks :func:`broker.console.stepup.gate`: a locked account's session ends, a password
an admin set must be changed first, and a POST whose action needs the ``decisions``
or ``admin`` scope needs a TOTP code from the last five minutes (step-up).  A request
carrying ``Authorization: Bearer`` instead of the cookie is authenticated the
same way and needs no CSRF token (a header is not ambient authority).

CSRF: every POST made with the session cookie carries ``csrf``, a value derived
from the session token (SHA-256 under a fixed label), so it is bound to that
session, dies with it, and is the same on every replica; a POST whose
``Origin`` is not the console's own is refused too.  A refusal raises
:class:`~broker.access.errors.PermissionDenied` (code ``csrf_failed``), which
the API's one error path turns into 403 and the action's ``*.refused`` event;
nothing changes.

Headers: every console response carries a Content-Security-Policy with no
inline script (``script-src 'self'``) and ``frame-ancestors 'none'``,
``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin`` (so the
browser still sends its Origin on our own forms), and pages are
``Cache-Control: no-store``.  Templates autoescape every value.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from broker.access.errors import InvalidInput, PermissionDenied, Unauthenticated
from broker.access.permissions import PERMISSIONS, authorize, role_allows, scope_allows
from broker.access.ports import Actor
from broker.access.services import Services
from broker.console import stepup
from broker.console.i18n import LANG_COOKIE, LANGS, Messages, negotiate

PREFIX = "/console"
SECURE_COOKIE = "__Host-hoshu_session"
LOOPBACK_COOKIE = "hoshu_session"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
MAX_FIELD = 4000  # characters of one form field; more is refused, nothing changes
# fields the API allows longer than MAX_FIELD (RequestIn.work_plan, KeyIn.public_key; the
# step-up form's sealed secret fields, broker.console.stepup)
LONG_FIELDS = {"work_plan": 20000, "public_key": 16384, "stepup_sealed": 16000}
_CSRF_LABEL = b"hoshu console csrf v1\x00"

_env = Environment(
    loader=PackageLoader("broker.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def may(session: Session | None, action: str) -> bool:
    """The permission table allows the signed-in caller ``action`` (for navigation:
    a link is shown only where the page behind it would let the caller in)."""
    if session is None:
        return False
    actor = session.actor
    return scope_allows(actor.scopes, action, actor.token_kind) and role_allows(
        actor.roles, action, actor.org_kind
    )


_env.globals["may"] = may


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def secure_cookies(request: Request) -> bool:
    """Secure cookies unless the broker's public URL is plain HTTP on loopback."""
    settings = getattr(request.app.state, "settings", None)
    url = getattr(settings, "public_api_url", "") or ""
    if not url and settings is not None:
        url = f"http://{settings.api_host}:{settings.api_port}"
    parts = urlsplit(url)
    if parts.scheme != "http":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def cookie_name(request: Request) -> str:
    return SECURE_COOKIE if secure_cookies(request) else LOOPBACK_COOKIE


def csrf_for(token: str) -> str:
    return hashlib.sha256(_CSRF_LABEL + token.encode("utf-8")).hexdigest()


def language(request: Request) -> str:
    return negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


def harden(response: Response, *, store: bool = False) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if not store:
        response.headers["Cache-Control"] = "no-store"
    return response


def render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page in the caller's language; ``values`` are escaped by the template."""
    lang = language(request)
    session: Session | None = getattr(request.state, "console", None)
    values.setdefault("notice", None)
    html = _env.get_template(template).render(
        t=Messages(lang),
        lang=lang,
        langs=LANGS,
        path=request.url.path,
        here=_here(request),
        session=session,
        csrf=csrf_for(session.token) if session else "",
        **values,
    )
    return harden(HTMLResponse(html, status_code=status))  # type: ignore[return-value]


MAX_RETURN_QUERY = 512  # a longer query string is not carried through a language switch


def _here(request: Request) -> str:
    """The page to come back to after a language switch: its path, and the query of a
    GET (a desktop's ``?port=``, a search's filters), so the same page opens again."""
    query = request.url.query
    if request.method == "GET" and query and len(query) <= MAX_RETURN_QUERY:
        return f"{request.url.path}?{query}"
    return request.url.path


def redirect(to: str) -> RedirectResponse:
    response = RedirectResponse(to, status_code=303)
    harden(response)
    return response


def safe_next(target: str | None) -> str:
    """A local console path to return to; anything else goes to the console's start."""
    if (
        not target
        or not target.startswith(PREFIX + "/")
        or "//" in target
        or "\\" in target
        or any(ord(c) < 0x21 for c in target)
    ):
        return PREFIX + "/"
    return target


RAW_BODY = "application/octet-stream"
CSRF_HEADER = "x-hoshu-csrf"


def raw_body(request: Request) -> bool:
    """A POST whose body is a file (a desktop drive's upload), not a form: the route
    streams it, and its CSRF token comes in the :data:`CSRF_HEADER` header."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return request.method == "POST" and kind == RAW_BODY


async def read_form(request: Request) -> dict[str, str]:
    """A POST's url-encoded fields (the body is size-limited by the API's middleware);
    a field over :data:`MAX_FIELD` characters or a repeated field is refused.  A raw
    body (:func:`raw_body`) is left to its route."""
    if request.method != "POST" or raw_body(request):
        return {}
    body = await request.body()
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("the form could not be read") from exc
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form or len(value) > LONG_FIELDS.get(key, MAX_FIELD):
            raise InvalidInput("a form field is repeated or too long", code="form_too_long")
        form[key] = value
    return form


FormDep = Annotated[dict[str, str], Depends(read_form)]


@dataclass(frozen=True, slots=True)
class Session:
    """The signed-in caller of one console request."""

    actor: Actor
    token: str
    via_cookie: bool
    form: Mapping[str, str]


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def _origin_ok(request: Request) -> bool:
    """The form came from the console's own origin: the one this request reached, or
    the broker's public URL (behind a TLS-terminating ingress the app sees plain HTTP
    while the browser's Origin is the public https:// one)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # the CSRF token still decides
    settings = getattr(request.app.state, "settings", None)
    public = _origin_of(getattr(settings, "public_api_url", "") or "")
    own = f"{request.url.scheme}://{request.url.netloc}"
    return origin in {own, public} - {""}


def check_post(request: Request, token: str | None) -> None:
    """Origin (and, with a session cookie, the CSRF token) of a POST; raise when wrong."""
    if request.method != "POST":
        return
    if not _origin_ok(request):
        raise PermissionDenied("this form was sent from another site", code="csrf_failed")
    if token is not None:
        if raw_body(request):
            sent = request.headers.get(CSRF_HEADER, "")
        else:
            sent = getattr(request.state, "console_form", {}).get("csrf", "")
        if not hmac.compare_digest(sent.encode(), csrf_for(token).encode()):
            raise PermissionDenied(
                "the form's security token is missing or wrong", code="csrf_failed"
            )


def page(action: str) -> Callable[..., Session]:
    """A dependency: the signed-in caller, allowed ``action`` by the permission table.

    Deny by default: no session → :class:`Unauthenticated` (the console shows the
    sign-in page); the table refuses → :class:`PermissionDenied`; a POST with a
    wrong Origin or CSRF token → :class:`PermissionDenied` ``csrf_failed``.  The
    caller and action are left on ``request.state`` for the refusal event."""
    if action not in PERMISSIONS:
        raise KeyError(f"action {action!r} is not in the permission table")

    def dependency(request: Request, form: FormDep) -> Session:
        request.state.action = action
        request.state.console_form = form
        token = request.cookies.get(cookie_name(request))
        via_cookie = bool(token)
        if not token:
            scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
            token = bearer.strip() if scheme.lower() == "bearer" else ""
        if not token:
            raise Unauthenticated("sign in first", code="signed_out")
        actor = services_of(request).auth.authenticate(token, client_ip(request))
        request.state.actor = actor
        authorize(actor, action)
        check_post(request, token if via_cookie else None)
        session = Session(actor, token, via_cookie, form)
        request.state.console = session
        stepup.gate(request, actor, token, action, form)  # step-up, locked, password change
        return session

    dependency.__name__ = f"console_{action.replace('.', '_')}"
    return dependency
