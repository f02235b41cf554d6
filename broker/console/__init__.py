"""The web console: pages served by the broker for hospital approvers (first slice).

Server-rendered HTML (Jinja2 templates, autoescaped), one style sheet of our own,
no script and nothing from a CDN: hospital networks are closed.  Japanese and
English (:mod:`broker.console.i18n`).  Sign-in is the API's (password + TOTP →
the same bearer token, kept in an HttpOnly cookie); every page and form asks the
same permission table as the API and calls the same services, so an action is
the same audit event whichever way it came (:mod:`broker.console.web`).

``router`` holds the routes (:mod:`broker.console.routes`; live sessions:
:mod:`broker.console.live`;
the gateway page: :mod:`broker.console.gateway`);
:func:`install` makes refused or failed console actions pages instead of JSON,
after the API's own error handler has recorded them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from broker.access.errors import AccessError
from broker.console import (
    account,
    admin,
    approver,
    desktop,
    engineer,
    gateway,
    holds,
    live,
    notify_page,
    routes,
)
from broker.console.routes import error_page
from broker.console.stepup import PasswordChangeNeeded, StepUpNeeded
from broker.console.web import PREFIX

router = APIRouter()
router.include_router(routes.router)
router.include_router(live.router)
router.include_router(gateway.router)
router.include_router(engineer.router)
router.include_router(admin.router)
router.include_router(account.router)
router.include_router(desktop.router)
router.include_router(approver.router)
router.include_router(holds.router)
router.include_router(notify_page.router)

Handler = Callable[[Request, Exception], Awaitable[Response]]

__all__ = ["install", "router"]


def install(app: FastAPI, api_handler: Handler) -> None:
    """Route the console's domain errors through ``api_handler`` (the API's: status and
    ``*.refused`` event in one place), then answer console paths with a page."""

    async def handler(request: Request, exc: Exception) -> Response:
        response = await api_handler(request, exc)
        if not request.url.path.startswith(PREFIX + "/") or not isinstance(exc, AccessError):
            return response
        # a page may answer its own refusals (the password form shows why, in place)
        page = getattr(request.state, "error_page", None) or error_page
        return page(request, response.status_code, exc.code, exc.message)

    app.add_exception_handler(AccessError, handler)
    app.add_exception_handler(StepUpNeeded, account.step_up_page)
    app.add_exception_handler(PasswordChangeNeeded, account.password_first)
