"""Request dependencies: the services, the caller, and the permission check.

``require(action)`` resolves the bearer token to a caller and checks
:data:`broker.access.permissions.PERMISSIONS`; it runs before the body is
validated, so a caller without the right gets 403 whatever they send.  Every
router uses it, including those built outside :mod:`broker.api.routes` (audit,
live sessions, SSH certificates): they pass their own ``authenticate`` only in
tests, and the ``emitter`` their refusals are written to.  A refusal raises
:class:`~broker.access.errors.PermissionDenied`; :mod:`broker.api.errors`
turns it into 403 and the ``*.refused`` event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from audit.emitter import Emitter
from broker.access.errors import Unauthenticated
from broker.access.permissions import PERMISSIONS, Principal, authorize
from broker.access.services import Services

Authenticate = Callable[[Request], Principal]


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("sign in first: no bearer token")
    return token.strip()


def authenticate_bearer(request: Request) -> Principal:
    """Bearer token -> :class:`~broker.access.ports.Actor` through the auth service."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise Unauthenticated("authentication is not configured")
    return services.auth.authenticate(bearer(request), client_ip(request))


def require(
    action: str, *, authenticate: Authenticate | None = None, emitter: Emitter | None = None
) -> Callable[[Request], Any]:
    """A dependency that authenticates the caller and checks ``action`` in the table.

    ``emitter`` receives the refusal event when the app has no control-plane
    services (the audit router mounted on its own); otherwise the services'
    emitter does.
    """
    if action not in PERMISSIONS:
        raise KeyError(f"action {action!r} is not in the permission table")
    who = authenticate or authenticate_bearer

    def dependency(request: Request) -> Principal:
        request.state.action = action
        if emitter is not None:
            request.state.refusal_emitter = emitter
        actor = who(request)
        request.state.actor = actor
        authorize(actor, action)
        return actor

    dependency.__name__ = f"require_{action.replace('.', '_')}"
    return dependency


def refusal_context(request: Request, **columns: Any) -> None:
    """Columns the refusal event of this request should carry (e.g. ``HospitalId``)."""
    ctx: dict[str, Any] = getattr(request.state, "refusal_columns", {})
    ctx.update({k: v for k, v in columns.items() if v is not None})
    request.state.refusal_columns = ctx


def allowed(action: str) -> object:
    """``Depends`` marker for a route: ``actor: Actor = allowed("orgs.list")``."""
    return Depends(require(action))
