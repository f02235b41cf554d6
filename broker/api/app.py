"""The control-plane API: ``create_app(settings, ...)`` builds one FastAPI app.

Nothing global: the app holds its :class:`Services` in ``app.state.services``.
Other parts add their routers with ``extra_routers`` (for example the audit
query routes); they may use :func:`broker.api.deps.require` for permissions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from fastapi import APIRouter, FastAPI

from audit.emitter import Emitter
from broker.access.ports import utc_now
from broker.access.services import Services
from broker.api import errors
from broker.api.limits import BodyLimit, ForwardedFor
from broker.api.routes import auth, estate, gateways, notifications, people, requests
from broker.api.routes import health as health_routes
from broker.console import install as install_console
from broker.console import router as console_router
from broker.console.desktop import DRIVE_UPLOAD_MAX, DRIVE_UPLOAD_PATH
from broker.settings import BrokerSettings

ROUTERS: tuple[APIRouter, ...] = (
    health_routes.router,
    auth.router,
    people.router,
    estate.router,
    gateways.router,
    requests.router,
    notifications.router,
    console_router,
)


def create_app(
    settings: BrokerSettings,
    *,
    services: Services | None = None,
    emitter: Emitter | None = None,
    clock: Callable[[], datetime] = utc_now,
    extra_routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """Build the API.  Without ``services`` the control plane is opened from
    ``settings`` (database, key files, the hash-chained audit log or ``emitter``)."""
    opened = None
    if services is None:
        from broker.services import ControlPlane

        opened = ControlPlane.open(settings, emitter=emitter, clock=clock)
        services = opened.services
    app = FastAPI(
        title="hoshu control plane",
        version="1",
        description="Requests, approvals, time-boxed grants, tenants and roles.",
    )
    app.state.services = services
    app.state.settings = settings
    app.state.control_plane = opened
    # /readyz asks these; whoever opened the database adds its probe (runtime: rt.readiness)
    readiness = health_routes.readiness_of(app)
    if opened is not None:
        readiness.add("database", health_routes.database_probe(opened.store.engine))
    errors.install(app)
    install_console(app, errors.access_error)  # console pages show refusals as pages
    for router in (*ROUTERS, *extra_routers):
        app.include_router(router)

    @app.get("/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        timeout_s=float(settings.body_timeout_s),
        streamed={DRIVE_UPLOAD_PATH: DRIVE_UPLOAD_MAX},  # a file for a desktop's drive
    )
    app.add_middleware(ForwardedFor, trusted=settings.trusted_proxies)  # outermost
    return app
