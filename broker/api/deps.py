"""Request dependencies: the services, the caller, and the permission check.

``require(action)`` resolves the bearer token to an :class:`Actor` and checks
:data:`broker.access.permissions.PERMISSIONS`; it runs before the body is
validated, so a caller without the right gets 403 whatever they send.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from broker.access.errors import Unauthenticated
from broker.access.permissions import PERMISSIONS, authorize
from broker.access.ports import Actor
from broker.access.services import Services


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


def require(action: str) -> Callable[..., Actor]:
    if action not in PERMISSIONS:
        raise KeyError(f"action {action!r} is not in the permission table")

    def dependency(request: Request, services: ServicesDep) -> Actor:
        request.state.action = action
        actor = services.auth.authenticate(bearer(request), client_ip(request))
        request.state.actor = actor
        authorize(actor.roles, actor.scopes, action)
        return actor

    dependency.__name__ = f"require_{action.replace('.', '_')}"
    return dependency


def current_actor(request: Request, services: ServicesDep) -> Actor:
    """Only authenticate (for routers that check their own rules, e.g. audit queries)."""
    actor = services.auth.authenticate(bearer(request), client_ip(request))
    request.state.actor = actor
    return actor


def allowed(action: str) -> object:
    """``Depends`` marker for a route: ``actor: Actor = allowed("orgs.list")``."""
    return Depends(require(action))
